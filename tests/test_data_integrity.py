"""What SMTP cannot carry as text is refused, never mangled or smuggled through.

NUL octets, lines over 998 octets, and 8-bit octets for a server without
8BITMIME: refused before any connection for a message held in memory; for a
stream, the transaction is abandoned before the end of the message is sent,
so nothing is delivered.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

import smtplug
from smtplug import InvalidInputError
from smtplug.protocol.data import MAX_LINE, LineCheck

HEAD = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: text\r\n\r\n"


def send(server, message, **options):
    return smtplug.sendmessage(
        message, servers="127.0.0.1", ports=server.port, usetls=False, timeout=10, **options
    )


# --- LineCheck -------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r"])
def test_line_of_998_passes_and_999_fails(ending):
    LineCheck().feed(b"x" * MAX_LINE + ending + b"y" * MAX_LINE)
    with pytest.raises(InvalidInputError, match="longer than 998"):
        LineCheck().feed(b"x" * (MAX_LINE + 1) + ending)


@pytest.mark.parametrize("split", [1, 2, 97, 500, 997, 998, 999, 1500])
def test_line_length_is_carried_across_chunks(split):
    text = b"short\r\n" + b"x" * (MAX_LINE + 1) + b"\r\nend\r\n"
    check = LineCheck()
    with pytest.raises(InvalidInputError):
        for start in range(0, len(text), split):
            check.feed(text[start : start + split])
    fine = b"short\r\n" + b"x" * MAX_LINE + b"\r\nend\r\n"
    check = LineCheck()
    for start in range(0, len(fine), split):
        check.feed(fine[start : start + split])


def test_nul_and_eight_bit():
    with pytest.raises(InvalidInputError, match="NUL"):
        LineCheck().feed(b"a\0b")
    LineCheck().feed("héllo".encode())
    with pytest.raises(InvalidInputError, match="8BITMIME"):
        LineCheck(eight_bit=False).feed("héllo".encode())


# --- before any connection, for messages in memory ---------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        HEAD + b"x" * (MAX_LINE + 1) + b"\r\n",
        HEAD + b"ok\r\n" + b"y" * 5000,
        b"X-Long: " + b"z" * 1000 + b"\r\n" + HEAD,
        HEAD + b"a NUL \0 here\r\n",
    ],
    ids=["long-body-line", "long-last-line", "long-header-line", "nul"],
)
@pytest.mark.parametrize("kind", ["bytes", "str"])
def test_refused_before_connecting(smtp_server, message, kind):
    data = message.decode() if kind == "str" else message
    with pytest.raises(InvalidInputError):
        send(smtp_server, data)
    assert smtp_server.sessions == []


def test_eight_bit_message_to_a_server_without_8bitmime(make_server):
    server = make_server(without_ehlo=["8BITMIME"])
    with pytest.raises(InvalidInputError, match="8BITMIME"):
        send(server, HEAD + "Grüße\r\n".encode())
    assert server.sessions[-1].commands[0].startswith("EHLO")
    assert not any(c.startswith("MAIL") for c in server.sessions[-1].commands)
    assert send(server, HEAD + b"plain ASCII\r\n").accepted
    assert "BODY=8BITMIME" not in server.sessions[-1].commands[1]


# --- streams: abandoned before their end is sent ---------------------------------------------


@pytest.mark.parametrize(
    "pieces",
    [
        [HEAD, b"fine\r\n", b"x" * 600, b"x" * 600, b"\r\n"],
        [HEAD, b"fine\r\n", b"NUL\0\r\n"],
    ],
    ids=["long-line", "nul"],
)
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_stream_abandoned_nothing_delivered(make_server, pieces, chunking):
    server = make_server(chunking=chunking, extra_ehlo=["PIPELINING"])
    with pytest.raises(InvalidInputError):
        send(server, iter(pieces))
    server.wait_idle()
    assert server.messages == []
    assert all(t.data_reply is None for s in server.sessions for t in s.transactions)


def test_eight_bit_stream_to_a_server_without_8bitmime(make_server):
    server = make_server(without_ehlo=["8BITMIME"])
    with pytest.raises(InvalidInputError, match="8BITMIME"):
        send(server, iter([HEAD, "Grüße\r\n".encode()]))
    server.wait_idle()
    assert server.messages == []


@given(
    text=st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b"\r\n"]), max_size=60).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
def test_line_check_agrees_with_a_plain_reference(text, cuts):
    """Fed in any chunks, LineCheck refuses exactly when some line is too long."""
    limit = 5
    lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    too_long = max(map(len, lines)) > limit
    check = LineCheck(max_line=limit)
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    try:
        for start, end in itertools.pairwise(bounds):
            check.feed(text[start:end])
    except InvalidInputError:
        assert too_long
    else:
        assert not too_long
