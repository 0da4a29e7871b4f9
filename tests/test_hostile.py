"""Hostile servers (issue 6): smtplug against smtplug.testing.ScriptedServer.

Each test scripts a server that misbehaves (injected or malformed replies,
endless or slow replies, 421 anywhere, resets) and checks three things: the
exception smtplug raises, what it sent and did *not* send (the server's
byte-exact capture), and, where credentials are involved, that no secret
reaches a log line, the ``debug=True`` transcript or an exception's text.
"""

from __future__ import annotations

import base64
import email
import io
import itertools
import logging
import re
import threading
import time
import tracemalloc
from collections.abc import Iterator
from email.message import EmailMessage, Message

import pytest

import smtplug
from apis import both_apis
from scripted import send_to
from smtplug import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    DeliveryUnknownError,
    ProtocolError,
    ResponseError,
    TLSError,
)
from smtplug.protocol.data import normalise_line_endings
from smtplug.testing import CLOSE, RESET, STALL, Answer, ScriptedServer, Session
from tlsfixtures import server_context, tls_ca, write_files

pytestmark = both_apis

USER = "alice"
PASSWORD = "Tr0ub4dor&3-s3cret"
TOKEN = "ya29.s3cretBearerToken-0123456789"


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "hostile"
    msg.set_content("hello\n")
    return msg


def send(server: ScriptedServer, msg: object = None, **options):
    return send_to([server], message() if msg is None else msg, **options)


def send_two(first: ScriptedServer, second: ScriptedServer, **options):
    """Send with ``servers=[first, second]`` (ports in tandem, as Tcllib)."""
    return send_to([first, second], message(), **options)


def only_failure(info: pytest.ExceptionInfo[ConnectError]) -> smtplug.SMTPError:
    assert len(info.value.failures) == 1
    return info.value.failures[0].error


def delivered(session: Session) -> bool:
    return any(t.complete for t in session.transactions)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    certs = tls_ca()
    directory = tmp_path_factory.mktemp("hostile-tls")
    return write_files(certs, directory).cafile, server_context(certs.server, directory)


# --- secrets -----------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


SECRETS = [
    PASSWORD,
    _b64(PASSWORD),  # LOGIN's answer
    _b64(f"\0{USER}\0{PASSWORD}"),  # PLAIN's answer
    _b64(f"{USER}\0{USER}\0{PASSWORD}"),
    base64.b64encode(PASSWORD.encode()).decode().rstrip("="),
    TOKEN,
    _b64(f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01"),  # XOAUTH2's answer
]


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the failures a ConnectError names."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack += [item.__cause__, item.__context__]
        if isinstance(item, ConnectError):
            stack += [failure.error for failure in item.failures]


@pytest.fixture
def watch(caplog, capsys):
    """``watch(exc)``: every log line, the transcript and the exception text."""
    caplog.set_level(logging.DEBUG, logger="smtplug")

    def text(exc: BaseException | None = None) -> str:
        captured = capsys.readouterr()
        parts = [record.getMessage() for record in caplog.records]
        parts += [captured.out, captured.err]
        for item in chain(exc):
            parts += [str(item), repr(item), str(getattr(item, "diagnostic", ""))]
        return "\n".join(parts)

    return text


def assert_no_secret(text: str) -> None:
    assert text  # something was logged: the check is not vacuous
    for secret in SECRETS:
        assert secret not in text


# --- response injection after STARTTLS ----------------------------------------------------


@pytest.mark.parametrize(
    "injected",
    [
        b"250-injected\r\n250 AUTH PLAIN\r\n",
        b"250 2.0.0 injected\r\n",
        b"250 inj",  # a fragment without CRLF
        b"2",
    ],
    ids=["lines", "line", "fragment", "one-octet"],
)
def test_injection_after_starttls_is_an_attack(tls, watch, injected):
    cafile, context = tls
    with ScriptedServer(
        tls_context=context,
        starttls_inject=injected,
        capabilities=["STARTTLS", "AUTH PLAIN LOGIN"],
    ) as server:
        with pytest.raises(ConnectError) as info:
            # Even a policy that accepts anything does not downgrade an attack.
            send(
                server,
                usetls=True,
                cafile=cafile,
                tlspolicy=lambda code, diagnostic: "insecure",
                username=USER,
                password=PASSWORD,
                debug=True,
            )
        server.wait_idle()
    error = only_failure(info)
    assert isinstance(error, TLSError) and error.attack
    assert server.connections == 1  # no plain-text retry
    session = server.sessions[0]
    assert session.sent.endswith(b"220 2.0.0 Ready to start TLS\r\n" + injected)
    # Nothing after STARTTLS: no handshake, no EHLO, no AUTH, no MAIL, no QUIT.
    assert session.received == b"EHLO localhost\r\nSTARTTLS\r\n"
    assert_no_secret(watch(info.value))


def test_malformed_injection_after_starttls_aborts_too(tls):
    cafile, context = tls
    with ScriptedServer(tls_context=context, starttls_inject=b"\r\n") as server:
        with pytest.raises(ConnectError) as info:
            send(server, usetls=True, cafile=cafile, tlspolicy=lambda code, diagnostic: "insecure")
        server.wait_idle()
    # An empty line is no reply at all: a protocol error, and no downgrade either.
    error = only_failure(info)
    assert isinstance(error, ProtocolError) or (isinstance(error, TLSError) and error.attack)
    assert server.connections == 1
    assert server.sessions[0].received == b"EHLO localhost\r\nSTARTTLS\r\n"


def test_injection_fails_over_to_the_next_server(tls):
    cafile, context = tls
    with (
        ScriptedServer(tls_context=context, starttls_inject=b"250 x\r\n") as bad,
        ScriptedServer(tls_context=context) as good,
    ):
        result = send_two(bad, good, usetls=True, cafile=cafile)
        good.wait_idle()
    assert result.accepted and result.port == good.port and result.tls is not None
    assert bad.sessions[0].verbs == ["EHLO", "STARTTLS"]
    assert good.sessions[0].verbs[:3] == ["EHLO", "STARTTLS", "EHLO"]


# --- SMTP smuggling: every end-of-data look-alike, every input type, DATA and BDAT ----------


SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\r",
    b"\r\n.\r\n",
]
HEAD = (
    b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: smuggling\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <smuggle@example.com>\r\n\r\n"
)
KINDS = ["bytes", "str", "message", "emailmessage", "bytesio", "file", "chunks"]


def smuggling_body(evil: bytes) -> bytes:
    return (
        b".a line starting with a dot\r\nhello"
        + evil
        + b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
        + b"smuggled\r\n..two dots"
        + evil
        + b"."  # the last line is a lone dot without a line ending
    )


def awkward_chunks(data: bytes) -> Iterator[bytes]:
    """Cut before and after every CR, LF and dot (and add an empty chunk)."""
    yield b""
    yield from (piece for piece in re.split(rb"([\r\n.])", data) if piece)


def as_input(kind: str, data: bytes, tmp_path):
    if kind == "bytes":
        return data
    if kind == "str":
        return data.decode()
    if kind == "message":
        parsed = email.message_from_bytes(data)
        assert type(parsed) is Message
        return parsed
    if kind == "emailmessage":
        head, _, body = data.partition(b"\r\n\r\n")
        msg = EmailMessage()
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            msg[name] = value
        msg.set_content(body.decode())
        return msg
    if kind == "bytesio":
        return io.BytesIO(data)
    if kind == "file":
        path = tmp_path / "message.eml"
        path.write_bytes(data)
        return path.open("rb")
    assert kind == "chunks"
    return awkward_chunks(data)


def expected_body(body: bytes) -> bytes:
    normal = normalise_line_endings(body)
    return normal if normal.endswith(b"\r\n") else normal + b"\r\n"


def no_bare_cr_or_lf(data: bytes) -> bool:
    crlf = data.count(b"\r\n")
    return data.count(b"\r") == crlf and data.count(b"\n") == crlf


def send_smuggled(source: object, capabilities: list[str] | None = None) -> Session:
    """Send ``source`` (closed afterwards) and return the server's record of it."""
    with ScriptedServer(capabilities=capabilities) as server:
        try:
            result = send(server, source)
        finally:
            if hasattr(source, "close"):
                source.close()
        server.wait_idle()
    assert result.accepted
    return server.sessions[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("evil", SMUGGLING, ids=[repr(e)[2:-1] for e in SMUGGLING])
def test_no_smuggling_over_data(tmp_path, evil, kind):
    body = smuggling_body(evil)
    session = send_smuggled(as_input(kind, HEAD + body, tmp_path))
    # Exactly one end of data: the smuggled MAIL/RCPT/DATA are message text.
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    data = session.transactions[0].data
    assert data.endswith(b"\r\n.\r\n") and data.count(b"\r\n.\r\n") == 1
    assert no_bare_cr_or_lf(data)
    lines = data[:-3].split(b"\r\n")
    assert all(line.startswith(b"..") for line in lines if line.startswith(b"."))
    assert b"\r\n..a line starting with a dot\r\n" in data
    assert b"\r\n...two dots\r\n" in data and data.endswith(b"\r\n..\r\n.\r\n")
    # Un-stuffed, it is the message with CRLF line endings, nothing lost or added.
    assert session.transactions[0].content.endswith(b"\r\n\r\n" + expected_body(body))
    assert session.received.count(b"MAIL FROM:") == 2  # the real one and the text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("evil", SMUGGLING, ids=[repr(e)[2:-1] for e in SMUGGLING])
def test_no_smuggling_over_bdat(tmp_path, evil, kind):
    body = smuggling_body(evil)
    session = send_smuggled(as_input(kind, HEAD + body, tmp_path), ["8BITMIME", "CHUNKING"])
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "BDAT", "QUIT"]
    assert session.commands[3].args == f"{len(session.transactions[0].bdat)} LAST"
    payload = session.transactions[0].bdat
    assert no_bare_cr_or_lf(payload)
    if kind in ("message", "emailmessage"):
        # The email package writes its own header block; the body is exact.
        assert payload.endswith(b"\r\n\r\n" + expected_body(body))
    else:
        # Exactly the CRLF-normalised message: no dot-stuffing, no terminator.
        assert payload == expected_body(HEAD + body)


# --- endless, oversized and slow replies --------------------------------------------------


def endless_lines() -> Iterator[bytes]:
    while True:
        yield b"250-x\r\n"


def endless_line() -> Iterator[bytes]:
    yield b"250 "
    while True:
        yield b"x" * 1000


@pytest.mark.parametrize("endless", [endless_lines, endless_line], ids=["lines", "one-line"])
def test_endless_reply_to_ehlo(endless):
    with ScriptedServer({"EHLO": lambda c: endless()}) as server:
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(ConnectError) as info:
                send(server)
            elapsed = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        server.wait_idle()
    assert isinstance(only_failure(info), ProtocolError)
    assert elapsed < 5 and peak < 16 * 2**20
    assert server.sessions[0].received == b"EHLO localhost\r\n"  # no HELO, no QUIT


@pytest.mark.parametrize("endless", [endless_lines, endless_line], ids=["lines", "one-line"])
def test_endless_reply_to_mail(endless):
    with ScriptedServer({"MAIL": lambda c: endless()}) as server:
        with pytest.raises(ProtocolError):
            send(server)
        server.wait_idle()
    assert server.sessions[0].verbs == ["EHLO", "MAIL"]


@pytest.mark.parametrize("stage", ["MAIL", "."])
def test_reply_dripped_slower_than_the_deadline(stage):
    # Each octet comes 0.1 s after the last (well within any single read's
    # wait), but the whole reply would take 4 s: the 0.5 s deadline wins.
    slow = Answer(b"250 2.0.0 " + b"s" * 30 + b"\r\n", drip=(1, 0.1))
    with ScriptedServer({stage: slow}) as server:
        started = time.monotonic()
        with pytest.raises((ConnectionLostError, DeliveryUnknownError)) as info:
            send(server, timeout=0.5, maxsecs=0.5)
        elapsed = time.monotonic() - started
        server.wait_idle()
    assert 0.5 <= elapsed < 2.5
    if stage == "MAIL":
        assert type(info.value) is ConnectionLostError and info.value.timed_out
        assert server.sessions[0].verbs == ["EHLO", "MAIL"]
    else:
        # After the final ".", a timeout leaves the delivery unknown.
        assert isinstance(info.value, DeliveryUnknownError)
        cause = info.value.__cause__
        assert isinstance(cause, ConnectionLostError) and cause.timed_out
        assert server.sessions[0].verbs == ["EHLO", "MAIL", "RCPT", "DATA", "."]


# --- malformed replies ---------------------------------------------------------------------


def test_ehlo_answered_220_fails():
    with ScriptedServer({"EHLO": b"220 2.0.0 hello there\r\n"}) as server:
        with pytest.raises(ConnectError) as info:
            send(server)
        server.wait_idle()
    error = only_failure(info)
    assert isinstance(error, ResponseError) and error.code == 220
    assert server.sessions[0].verbs == ["EHLO"]  # no HELO (only after a 5xx), no MAIL


MALFORMED = {
    "plus": b"+25 ok\r\n",
    "arabic-indic": "\u0662\u0665\u0660 ok\r\n".encode(),  # ٢٥٠
    "fullwidth": "\uff12\uff15\uff10 ok\r\n".encode(),
    "four-digits": b"2500 ok\r\n",
    "two-digits": b"25 ok\r\n",
    "600": b"600 ok\r\n",
    "199": b"199 ok\r\n",
    "no-separator": b"250ok\r\n",
    "leading-space": b" 250 ok\r\n",
    "mismatched-multiline": b"250-a\r\n251 b\r\n",
    "mismatched-final": b"250-ok\r\n550 no\r\n",
}


@pytest.mark.parametrize("reply", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_reply_to_mail(reply):
    with ScriptedServer({"MAIL": reply}) as server:
        with pytest.raises(ProtocolError):
            send(server)
        server.wait_idle()
    assert server.sessions[0].verbs == ["EHLO", "MAIL"]  # nothing after it


@pytest.mark.parametrize("reply", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_greeting(reply):
    with ScriptedServer(greeting=reply) as server:
        with pytest.raises(ConnectError) as info:
            send(server)
        server.wait_idle()
    assert isinstance(only_failure(info), ProtocolError)
    assert server.sessions[0].received == b""


def test_mismatched_codes_in_the_ehlo_reply():
    with ScriptedServer({"EHLO": b"250-scripted.test\r\n250-8BITMIME\r\n251 SIZE\r\n"}) as server:
        with pytest.raises(ConnectError) as info:
            send(server)
        server.wait_idle()
    assert isinstance(only_failure(info), ProtocolError)
    assert server.sessions[0].received == b"EHLO localhost\r\n"


# --- unsolicited bytes -----------------------------------------------------------------------


def test_unsolicited_reply_after_the_greeting():
    with ScriptedServer(greeting=b"220 hi\r\n250 2.0.0 unsolicited\r\n") as server:
        with pytest.raises(ConnectError) as info:
            send(server)
        server.wait_idle()
    assert isinstance(only_failure(info), ProtocolError)
    assert server.sessions[0].received == b""  # EHLO never paired with it


@pytest.mark.parametrize("extra", [b"250 2.1.5 OK\r\n", b"354 go", b"\r\n"])
def test_unsolicited_bytes_after_a_reply_are_never_paired(extra):
    with ScriptedServer({"MAIL": b"250 2.1.0 OK\r\n" + extra}) as server:
        with pytest.raises(ProtocolError):
            send(server)
        server.wait_idle()
    assert server.sessions[0].verbs == ["EHLO", "MAIL"]  # RCPT never sent


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_a_fake_final_reply_with_the_354_stops_the_message(pipelining):
    # A "250 queued" sent with the 354 must not be taken as the answer to the
    # final "." (and the message must not follow it).
    capabilities = ["8BITMIME", "PIPELINING"] if pipelining else ["8BITMIME"]
    script = {"DATA": b"354 go ahead\r\n250 2.0.0 queued as FAKE\r\n"}
    with ScriptedServer(script, capabilities=capabilities) as server:
        with pytest.raises(ProtocolError):
            send(server)
        server.wait_idle()
    session = server.sessions[0]
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "DATA"]
    assert session.received.endswith(b"DATA\r\n")  # not one octet of the message


# --- control characters in replies --------------------------------------------------------


def test_nul_and_ansi_escapes_in_reply_text_are_escaped(watch):
    nasty = b"550 5.7.1 bad\x00sender \x1b[2J\x1b]0;pwned\x07 \xc2\x9b31m \x9b\r\n"
    with ScriptedServer({"MAIL": nasty}) as server:
        with pytest.raises(ResponseError) as info:
            send(server, debug=True)
        server.wait_idle()
    error = info.value
    assert error.code == 550
    assert "\\x00" in error.diagnostic and "\\x1b[2J" in error.diagnostic
    text = watch(error)
    assert "\\x00" in text and "\\x1b" in text and "\\x07" in text and "\\x9b" in text
    for raw in ("\x00", "\x1b", "\x07", "\x9b"):
        assert raw not in text


# --- 421 anywhere ------------------------------------------------------------------------------

CLOSING = b"421 4.3.2 Service shutting down\r\n"

# stage -> (script of the first server, what it must have received, in verbs)
STAGES = {
    "greeting": ({}, []),
    "EHLO": ({"EHLO": CLOSING}, ["EHLO"]),
    "MAIL": ({"MAIL": CLOSING}, ["EHLO", "MAIL"]),
    "RCPT": ({"RCPT": CLOSING}, ["EHLO", "MAIL", "RCPT"]),
    "DATA": ({"DATA": CLOSING}, ["EHLO", "MAIL", "RCPT", "DATA"]),
}


@pytest.mark.parametrize("stage", STAGES)
def test_421_fails_over_without_rset(stage):
    script, verbs = STAGES[stage]
    greeting = CLOSING if stage == "greeting" else b"220 first ready\r\n"
    with ScriptedServer(script, greeting=greeting) as first, ScriptedServer() as second:
        result = send_two(first, second)
        first.wait_idle()
        second.wait_idle()
    assert result.accepted and result.port == second.port
    assert first.sessions[0].verbs == verbs  # no RSET, no QUIT after the 421
    assert not delivered(first.sessions[0])
    assert second.connections == 1 and delivered(second.sessions[0])


@pytest.mark.parametrize("stage", ["MAIL", "RCPT"])
def test_421_in_a_pipelined_flight_fails_over_without_rset(stage):
    capabilities = ["8BITMIME", "PIPELINING"]
    with (
        ScriptedServer({stage: CLOSING}, capabilities=capabilities) as first,
        ScriptedServer(capabilities=capabilities) as second,
    ):
        result = send_two(first, second)
        first.wait_idle()
    assert result.accepted and result.port == second.port
    session = first.sessions[0]
    assert "RSET" not in session.verbs and "QUIT" not in session.verbs
    assert not delivered(session)


def test_421_to_starttls_fails_over(tls):
    cafile, context = tls
    with (
        ScriptedServer({"STARTTLS": CLOSING}, tls_context=context) as first,
        ScriptedServer(tls_context=context) as second,
    ):
        result = send_two(first, second, usetls=True, cafile=cafile, tlspolicy="require")
        first.wait_idle()
    assert result.accepted and result.port == second.port and result.tls is not None
    assert first.sessions[0].verbs == ["EHLO", "STARTTLS"]


def test_421_to_auth_fails_over(watch):
    auth = ["8BITMIME", "AUTH PLAIN"]
    with (
        ScriptedServer({"AUTH": CLOSING}, capabilities=auth) as first,
        ScriptedServer({"AUTH": b"235 2.7.0 OK\r\n"}, capabilities=auth) as second,
    ):
        try:
            result = send_two(first, second, username=USER, password=PASSWORD, debug=True)
        except smtplug.SMTPError as exc:
            assert_no_secret(watch(exc))
            raise
        first.wait_idle()
    assert first.sessions[0].verbs == ["EHLO", "AUTH"]  # no RSET, no QUIT
    assert result.accepted and result.port == second.port


def test_421_to_auth_sends_nothing_more(watch):
    with ScriptedServer({"AUTH": CLOSING}, capabilities=["AUTH PLAIN"]) as server:
        with pytest.raises(smtplug.SMTPError) as info:
            send(server, username=USER, password=PASSWORD, debug=True)
        server.wait_idle()
    assert info.value.code == 421
    assert server.sessions[0].verbs == ["EHLO", "AUTH"]
    assert_no_secret(watch(info.value))


# How the end of the message goes: (capabilities, recipients, the first server's verbs
# when it is answered with CLOSE/STALL/421)
TRANSFERS = {
    "data": (["8BITMIME"], 1, ["EHLO", "MAIL", "RCPT", "DATA", "."]),
    "data-pipelining": (["8BITMIME", "PIPELINING"], 1, ["EHLO", "MAIL", "RCPT", "DATA", "."]),
    "bdat": (["8BITMIME", "CHUNKING"], 1, ["EHLO", "MAIL", "RCPT", "BDAT"]),
    "bdat-pipelining": (
        ["8BITMIME", "CHUNKING", "PIPELINING"],
        1,
        ["EHLO", "MAIL", "RCPT", "BDAT"],
    ),
    "bdat-pipelining-2-rcpts": (
        ["8BITMIME", "CHUNKING", "PIPELINING"],
        2,
        ["EHLO", "MAIL", "RCPT", "RCPT", "BDAT"],
    ),
}
TRANSFER_PARAMS = list(TRANSFERS)


def send_end(first: ScriptedServer, second: ScriptedServer, recipients: int, **options):
    to = [f"bob{i}@example.org" for i in range(recipients)]
    return smtplug.sendmessage(
        message(),
        recipients=to,
        servers=["127.0.0.1", "127.0.0.1"],
        ports=[first.port, second.port],
        usetls=False,
        timeout=5,
        client="localhost",
        **options,
    )


@pytest.mark.parametrize("transfer", TRANSFER_PARAMS)
def test_421_after_the_end_of_the_message_is_not_retried_elsewhere(transfer):
    capabilities, recipients, verbs = TRANSFERS[transfer]
    with (
        ScriptedServer({".": CLOSING}, capabilities=capabilities) as first,
        ScriptedServer(capabilities=capabilities) as second,
    ):
        with pytest.raises(ResponseError) as info:
            send_end(first, second, recipients)
        first.wait_idle()
    assert type(info.value) is ResponseError and info.value.code == 421
    session = first.sessions[0]
    assert session.verbs[: len(verbs)] == verbs and "RSET" not in session.verbs
    if "PIPELINING" not in capabilities:
        assert session.verbs == verbs  # not even QUIT after the 421
    assert second.connections == 0


def test_every_server_421_names_each():
    with (
        ScriptedServer(greeting=CLOSING) as first,
        ScriptedServer({"RCPT": CLOSING}) as second,
    ):
        with pytest.raises(ConnectError) as info:
            send_two(first, second)
        second.wait_idle()
    assert [f.port for f in info.value.failures] == [first.port, second.port]
    assert all(f.error.code == 421 for f in info.value.failures)
    assert second.sessions[0].verbs == ["EHLO", "MAIL", "RCPT"]


# --- connection lost after the end of the message ------------------------------------------


@pytest.mark.parametrize("how", [CLOSE, RESET, STALL], ids=["close", "reset", "stall"])
@pytest.mark.parametrize("transfer", TRANSFER_PARAMS)
def test_connection_lost_after_the_end_of_the_message(how, transfer):
    capabilities, recipients, verbs = TRANSFERS[transfer]
    with (
        ScriptedServer({".": how}, capabilities=capabilities) as first,
        ScriptedServer(capabilities=capabilities) as second,
    ):
        with pytest.raises(DeliveryUnknownError) as info:
            send_end(first, second, recipients, maxsecs=0.5)
        first.wait_idle()
    assert "may or may not" in info.value.diagnostic
    session = first.sessions[0]
    assert session.verbs == verbs and session.transactions[0].complete
    assert second.connections == 0  # never sent twice


# --- a broken connection is never reused -------------------------------------------------------


@pytest.mark.parametrize("stage", ["MAIL", "."])
def test_client_never_reuses_a_timed_out_connection(stage):
    script = {stage: lambda c: STALL if c.session.index == 0 else None}
    with (
        ScriptedServer(script) as server,
        smtplug.Client(
            servers="127.0.0.1",
            ports=server.port,
            usetls=False,
            client="localhost",
            timeout=0.5,
            maxsecs=0.5,
        ) as client,
    ):
        expected = DeliveryUnknownError if stage == "." else ConnectionLostError
        with pytest.raises(expected) as info:
            client.sendmessage(message())
        if stage == "MAIL":
            assert info.value.timed_out  # type: ignore[attr-defined]
        assert client.sendmessage(message()).accepted
    server.wait_idle()
    assert server.connections == 2
    first, second = server.sessions
    assert first.verbs[-1] == stage  # nothing sent on it after the timeout
    assert second.verbs == ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]


@pytest.mark.parametrize(
    "capabilities",
    [
        ["8BITMIME"],
        ["8BITMIME", "PIPELINING"],
        ["8BITMIME", "CHUNKING"],
        ["8BITMIME", "CHUNKING", "PIPELINING"],
    ],
    ids=["data", "data-pipelining", "bdat", "bdat-pipelining"],
)
def test_client_reconnects_when_the_server_closed_the_kept_session(capabilities):
    # The first connection is closed by the server right after its first message.
    script = {
        ".": lambda c: Answer(b"250 2.0.0 queued\r\n", then=CLOSE) if c.session.index == 0 else None
    }
    with (
        ScriptedServer(script, capabilities=capabilities) as server,
        smtplug.Client(
            servers="127.0.0.1", ports=server.port, usetls=False, client="localhost", timeout=5
        ) as client,
    ):
        assert client.sendmessage(message()).accepted
        server.wait_idle()  # the server has closed it
        assert client.sendmessage(message()).accepted
    server.wait_idle()
    assert server.connections == 2
    assert sum(t.complete for s in server.sessions for t in s.transactions) == 2


def endless_quit_reply() -> Iterator[bytes]:
    yield b"221-x\r\n"
    while True:
        yield b"221-x\r\n"


@pytest.mark.parametrize("arrival", ["separate", "together"])
@pytest.mark.parametrize("bad", ["malformed", "endless"])
@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_a_bad_reply_to_a_pipelined_quit_does_not_undo_a_delivery(arrival, bad, chunking):
    capabilities = ["8BITMIME", "PIPELINING"] + (["CHUNKING"] if chunking else [])

    def quit_reply() -> Iterator[bytes]:
        return iter([b"garbage\r\n"]) if bad == "malformed" else endless_quit_reply()

    if arrival == "separate":  # the answer to QUIT, in its own write
        script: dict = {"QUIT": lambda c: quit_reply()}
    else:  # right behind the 250 to the end of the message, in the same write
        script = {
            ".": lambda c: itertools.chain([b"250 2.0.0 queued\r\n"], quit_reply()),
            "QUIT": CLOSE,
        }
    with ScriptedServer(script, capabilities=capabilities) as server:
        result = send(server)
        server.wait_idle()
    session = server.sessions[0]
    assert session.received.endswith(b"QUIT\r\n") and session.transactions[0].complete
    assert result.accepted


@pytest.mark.parametrize("pipelining", [False, True], ids=["quit-alone", "quit-pipelined"])
def test_a_quit_never_answered_does_not_hold_up_the_caller(monkeypatch, pipelining):
    # The command wait is 300 s; the goodbye is awaited only QUIT_WAIT (made short
    # here). Were the command wait used, the thread would still be waiting at the join.
    monkeypatch.setattr(smtplug.session, "QUIT_WAIT", 0.2)
    capabilities = ["8BITMIME"] + (["PIPELINING"] if pipelining else [])
    results: list[smtplug.SendResult] = []
    with ScriptedServer({"QUIT": STALL}, capabilities=capabilities) as server:
        worker = threading.Thread(target=lambda: results.append(send(server, timeout=300)))
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), "sendmessage still waits for the reply to QUIT"
        server.wait_idle()
    assert results[0].accepted
    assert server.sessions[0].verbs == ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]


# --- credentials ------------------------------------------------------------------------------

LOGIN_PROMPTS = {"AUTH": b"334 VXNlcm5hbWU6\r\n", ("SASL", 1): b"334 UGFzc3dvcmQ6\r\n"}

AUTH_CASES = {
    "plain-ok": (["PLAIN"], {"AUTH": b"235 2.7.0 OK\r\n"}, None),
    "plain-535": (["PLAIN"], {"AUTH": b"535 5.7.8 Bad credentials\r\n"}, AuthenticationError),
    "login-ok": (["LOGIN"], {**LOGIN_PROMPTS, ("SASL", 2): b"235 2.7.0 OK\r\n"}, None),
    "login-535": (
        ["LOGIN"],
        {**LOGIN_PROMPTS, ("SASL", 2): b"535 5.7.8 Bad credentials\r\n"},
        AuthenticationError,
    ),
    "login-421": (["LOGIN"], {**LOGIN_PROMPTS, ("SASL", 2): CLOSING}, smtplug.SMTPError),
    "plain-then-drop": (["PLAIN"], {"AUTH": CLOSE}, smtplug.SMTPError),
}


@pytest.mark.parametrize("case", AUTH_CASES)
def test_no_credential_in_logs_transcript_or_errors(watch, case):
    mechanisms, script, error = AUTH_CASES[case]
    with ScriptedServer(script, capabilities=["8BITMIME", "AUTH PLAIN LOGIN"]) as server:
        options = dict(username=USER, password=PASSWORD, mechanisms=mechanisms, debug=True)
        if error is None:
            assert send(server, **options).accepted
            exc = None
        else:
            with pytest.raises(error) as info:
                send(server, **options)
            exc = info.value
        server.wait_idle()
    # The secret did go over the (loopback, plain) wire: the check below means something.
    received = server.sessions[0].received.decode()
    assert _b64(PASSWORD) in received or _b64(f"\0{USER}\0{PASSWORD}") in received
    text = watch(exc)
    assert "AUTH" in text
    assert_no_secret(text)


OAUTH_ERROR = base64.b64encode(b'{"status":"401","schemes":"bearer"}')
OAUTH_CASES = {
    "xoauth2-ok": ("XOAUTH2", {"AUTH": b"235 2.7.0 OK\r\n"}, None),
    "xoauth2-refused": (
        "XOAUTH2",
        {"AUTH": b"334 " + OAUTH_ERROR + b"\r\n", "SASL": b"535 5.7.8 Bad token\r\n"},
        AuthenticationError,
    ),
    "oauthbearer-refused": (
        "OAUTHBEARER",
        {"AUTH": b"334 " + OAUTH_ERROR + b"\r\n", "SASL": b"535 5.7.8 Bad token\r\n"},
        AuthenticationError,
    ),
}


@pytest.mark.parametrize("case", OAUTH_CASES)
def test_no_token_in_logs_transcript_or_errors(watch, case):
    mechanism, script, error = OAUTH_CASES[case]
    capabilities = ["8BITMIME", "AUTH XOAUTH2 OAUTHBEARER"]
    with ScriptedServer(script, capabilities=capabilities) as server:
        options = dict(username=USER, oauth_token=TOKEN, mechanisms=[mechanism], debug=True)
        if error is None:
            assert send(server, **options).accepted
            exc = None
        else:
            with pytest.raises(error) as info:
                send(server, **options)
            exc = info.value
        server.wait_idle()
    wire = base64.b64decode(server.sessions[0].commands[1].args.split()[1])
    assert f"auth=Bearer {TOKEN}".encode() in wire  # it was sent: the check means something
    text = watch(exc)
    assert f"AUTH {mechanism}" in text
    assert_no_secret(text)


ENDLESS_CHALLENGES = {
    "PLAIN": b"334 \r\n",
    "LOGIN": b"334 UGFzc3dvcmQ6\r\n",
    "CRAM-MD5": b"334 PDEyMzQ1QHNjcmlwdGVkLnRlc3Q+\r\n",
}


@pytest.mark.parametrize("mechanism", ENDLESS_CHALLENGES)
def test_endless_challenges_are_cancelled(watch, mechanism):
    challenge = ENDLESS_CHALLENGES[mechanism]
    script = {"AUTH": challenge, "SASL": lambda c: challenge if c.args != "*" else None}
    with ScriptedServer(script, capabilities=["8BITMIME", f"AUTH {mechanism}"]) as server:
        with pytest.raises(AuthenticationError) as info:
            send(server, username=USER, password=PASSWORD, mechanisms=[mechanism], debug=True)
        server.wait_idle()
    commands = server.sessions[0].commands
    assert [c.verb for c in commands][:2] == ["EHLO", "AUTH"]
    assert len(commands) <= 5 and commands[-1].line == "*"  # cancelled, nothing after
    assert_no_secret(watch(info.value))
