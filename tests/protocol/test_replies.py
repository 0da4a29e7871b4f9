"""Tests for smtplug.protocol.replies: Reply and the incremental ReplyParser."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtplug.errors import ProtocolError
from smtplug.protocol import replies
from smtplug.protocol.replies import Reply, ReplyLimits, ReplyParser, enhanced_status


def parse_all(data: bytes, limits: ReplyLimits | None = None) -> list[Reply]:
    parser = ReplyParser(limits)
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


def parse_one(data: bytes) -> Reply:
    parser = ReplyParser()
    parser.feed(data)
    reply = parser.next_reply()
    assert reply is not None
    assert parser.next_reply() is None
    assert not parser.has_pending()
    return reply


# --- well-formed replies ---------------------------------------------------


def test_single_line() -> None:
    reply = parse_one(b"220 mail.example.org ESMTP ready\r\n")
    assert reply.code == 220
    assert reply.lines == ("mail.example.org ESMTP ready",)
    assert reply.text == "mail.example.org ESMTP ready"
    assert reply.diagnostic == "mail.example.org ESMTP ready"
    assert reply.args == ()
    assert reply.enhanced is None
    assert str(reply) == "220 mail.example.org ESMTP ready"


def test_multi_line() -> None:
    reply = parse_one(b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250 SIZE 1000 \r\n")
    assert reply.code == 250
    assert reply.lines == ("mx.example.org Hello", "PIPELINING", "SIZE 1000 ")
    assert reply.text == "mx.example.org Hello\nPIPELINING\nSIZE 1000 "
    assert reply.diagnostic == "mx.example.org Hello"
    assert reply.args == ("PIPELINING", "SIZE 1000")
    assert str(reply) == "250-mx.example.org Hello\n250-PIPELINING\n250 SIZE 1000 "


def test_empty_text_final_line() -> None:
    reply = parse_one(b"250\r\n")
    assert reply.code == 250
    assert reply.lines == ("",)
    assert reply.diagnostic == ""
    assert str(reply) == "250 "


def test_empty_text_continuation_line() -> None:
    reply = parse_one(b"250-\r\n250 ok\r\n")
    assert reply.lines == ("", "ok")


def test_bare_lf_accepted() -> None:
    assert parse_one(b"250-a\n250 b\n").lines == ("a", "b")


def test_mixed_line_endings() -> None:
    assert parse_one(b"250-a\n250 b\r\n").lines == ("a", "b")


def test_leading_spaces_and_tabs_kept_in_lines() -> None:
    reply = parse_one(b"250  \tx \r\n")
    assert reply.lines == (" \tx ",)
    assert reply.diagnostic == "x"


def test_several_replies_in_one_feed() -> None:
    replies = parse_all(b"250 a\r\n251 b\r\n354 go\r\n")
    assert [(r.code, r.lines) for r in replies] == [(250, ("a",)), (251, ("b",)), (354, ("go",))]


def test_utf8_text_decoded() -> None:
    assert parse_one("250 grüße ✓\r\n".encode()).lines == ("grüße ✓",)


def test_invalid_utf8_backslash_escaped() -> None:
    assert parse_one(b"250 a\xffb\r\n").lines == ("a\\xffb",)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"\x00", "\\x00"),
        (b"\x1b[31m", "\\x1b[31m"),
        (b"\x7f", "\\x7f"),
        (b"\x08", "\\x08"),
        (b"\r", "\\x0d"),
        (b"\x0b\x0c", "\\x0b\\x0c"),
        ("\u009b".encode(), "\\x9b"),  # C1 CSI
        (b"\t", "\t"),
    ],
)
def test_control_characters_escaped(raw: bytes, shown: str) -> None:
    reply = parse_one(b"250 a" + raw + b"b\r\n")
    assert reply.lines == (f"a{shown}b",)


def test_cr_cr_lf_keeps_an_escaped_cr() -> None:
    assert parse_one(b"250 a\r\r\n").lines == ("a\\x0d",)


# --- enhanced status codes -------------------------------------------------


@pytest.mark.parametrize(
    ("line", "enhanced"),
    [
        (b"250 2.1.0 Sender ok", "2.1.0"),
        (b"550 5.1.1 <x@y>: no such user", "5.1.1"),
        (b"451 4.7.1 try later", "4.7.1"),
        (b"250 2.0.0", "2.0.0"),
        (b"250 2.999.999 big", "2.999.999"),
        (b"250 2.0.0\tTAB", "2.0.0"),
        (b"250 5.1.1 x", None),  # class does not match the code
        (b"550 2.1.1 x", None),
        (b"354 3.0.0 go", None),  # class 3 is not an RFC 3463 class
        (b"250 2.1000.0 x", None),
        (b"250 2.1.0000 x", None),
        (b"250 2.1.0x", None),
        (b"250 2.1 x", None),
        (b"250 x 2.1.0", None),
        (b"250  2.1.0 leading space", None),
        ("250 2.\u0661.0 arabic digit".encode(), None),
    ],
)
def test_enhanced_status(line: bytes, enhanced: str | None) -> None:
    assert parse_one(line + b"\r\n").enhanced == enhanced


def test_enhanced_status_only_from_first_line() -> None:
    reply = parse_one(b"550-no code here\r\n550 5.1.1 second line\r\n")
    assert reply.enhanced is None
    reply = parse_one(b"550-5.1.1 first\r\n550 5.7.1 second\r\n")
    assert reply.enhanced == "5.1.1"


def test_enhanced_status_function() -> None:
    assert enhanced_status(250, "2.1.5 ok") == "2.1.5"
    assert enhanced_status(250, "5.1.5 ok") is None


# --- Reply value type ------------------------------------------------------


def test_reply_classification() -> None:
    assert Reply(250, ("ok",)).is_positive
    assert not Reply(250, ("ok",)).is_transient
    assert Reply(354, ("go",)).is_intermediate
    assert Reply(421, ("bye",)).is_transient
    assert Reply(554, ("no",)).is_permanent
    assert not Reply(554, ("no",)).is_positive


def test_reply_is_frozen_and_hashable() -> None:
    reply = Reply(250, ("ok",))
    with pytest.raises(AttributeError):
        reply.code = 251  # type: ignore[misc]
    assert hash(reply) == hash(Reply(250, ("ok",)))
    assert reply == Reply(250, ("ok",))


# --- malformed lines -------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"+25 x",
        "٢٥٠ arabic-indic digits".encode(),
        "\uff12\uff15\uff10 fullwidth digits".encode(),
        b"099 x",
        b"199 x",
        b"600 x",
        b"999 x",
        b"25",
        b"25 x",
        b"2500 x",
        b"250x",
        b"250_x",
        b"1xx x",
        b"2x0 x",
        b" 250 x",
        b"",
        b"hello",
        b"\x00\x00\x00",
    ],
)
def test_malformed_line(line: bytes) -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError):
        parser.feed(line + b"\r\n")
    assert parser.broken


@pytest.mark.parametrize("code", [200, 250, 299, 354, 421, 500, 599])
def test_code_range_accepted(code: int) -> None:
    assert parse_one(f"{code} x\r\n".encode()).code == code


def test_mismatched_codes_in_multi_line_reply() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"250-first\r\n251 second\r\n")
    assert "250" in str(info.value) and "251" in str(info.value)


def test_error_message_escapes_and_truncates() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"\x1b[2J" + b"A" * 500 + b"\r\n")
    message = str(info.value)
    assert "\x1b" not in message
    assert "\\x1b" in message
    assert len(message) < 250


def test_error_message_of_non_ascii_line_is_escaped() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"\xff\x00\x9b\r\n")
    message = str(info.value)
    assert message.isascii() and message.isprintable()


# --- limits ----------------------------------------------------------------


def test_line_length_limit_counts_crlf() -> None:
    limits = ReplyLimits(max_line_length=10)
    assert parse_all(b"250 abcd\r\n", limits)[0].lines == ("abcd",)  # 10 octets
    with pytest.raises(ProtocolError):
        parse_all(b"250 abcde\r\n", limits)


def test_line_length_limit_exact_boundary() -> None:
    line = b"250 " + b"x" * (2048 - 6) + b"\r\n"
    assert len(line) == 2048
    assert parse_one(line).lines == ("x" * 2042,)
    with pytest.raises(ProtocolError):
        parse_all(b"250 " + b"x" * (2048 - 5) + b"\r\n")


def test_line_length_limit_bare_lf_counts_lf() -> None:
    limits = ReplyLimits(max_line_length=10)
    assert parse_all(b"250 abcde\n", limits)[0].lines == ("abcde",)  # 10 octets
    with pytest.raises(ProtocolError):
        parse_all(b"250 abcdef\n", limits)


def test_huge_line_without_newline_raises_at_once() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"250 " + b"x" * 10_000_000)
    assert parser.broken


def test_long_line_without_newline_raises_as_soon_as_over_limit() -> None:
    parser = ReplyParser(ReplyLimits(max_line_length=100))
    parser.feed(b"250 ")
    for _ in range(95):
        parser.feed(b"x")  # 99 octets buffered: a 100th could be its LF
    with pytest.raises(ProtocolError):
        parser.feed(b"x")


def test_partial_line_under_limit_is_buffered() -> None:
    parser = ReplyParser(ReplyLimits(max_line_length=100))
    parser.feed(b"250 " + b"x" * 94 + b"\r")  # 99 octets
    assert parser.next_reply() is None
    parser.feed(b"\n")
    reply = parser.next_reply()
    assert reply is not None and reply.lines == ("x" * 94,)


def test_max_lines() -> None:
    limits = ReplyLimits(max_lines=3)
    assert len(parse_all(b"250-a\r\n250-b\r\n250 c\r\n", limits)[0].lines) == 3
    parser = ReplyParser(limits)
    with pytest.raises(ProtocolError):
        parser.feed(b"250-a\r\n250-b\r\n250-c\r\n250-d\r\n")


def test_max_lines_default_flood() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"250-x\r\n" * 300)


def test_max_lines_applies_per_reply() -> None:
    limits = ReplyLimits(max_lines=2)
    replies = parse_all(b"250-a\r\n250 b\r\n250-c\r\n250 d\r\n", limits)
    assert [r.lines for r in replies] == [("a", "b"), ("c", "d")]


def test_max_reply_size() -> None:
    limits = ReplyLimits(max_reply_size=27)
    # 3 lines of 9 octets each = 27
    assert parse_all(b"250-abc\r\n250-def\r\n250 ghi\r\n", limits)[0].lines == ("abc", "def", "ghi")
    with pytest.raises(ProtocolError):
        parse_all(b"250-abc\r\n250-def\r\n250 ghij\r\n", limits)


def test_max_reply_size_default() -> None:
    parser = ReplyParser()
    line = b"250-" + b"x" * 2000 + b"\r\n"
    with pytest.raises(ProtocolError):
        parser.feed(line * 40)  # 80 kB in 40 lines


def test_unusable_limits_refused() -> None:
    with pytest.raises(ValueError):
        ReplyLimits(max_line_length=4)
    with pytest.raises(ValueError):
        ReplyLimits(max_lines=0)


# --- incremental behaviour -------------------------------------------------

EHLO = (
    b"250-mx.example.org Hello [192.0.2.1]\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250 2.0.0 ok\r\n"
    b"220 next\n"
    b"550-5.1.1 no\r\n"
    b"550 5.1.1 really\r\n"
)


def test_byte_by_byte_equals_whole() -> None:
    whole = parse_all(EHLO)
    parser = ReplyParser()
    replies = []
    for i in range(len(EHLO)):
        parser.feed(EHLO[i : i + 1])
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    assert replies == whole
    assert len(whole) == 3
    assert not parser.has_pending()


def test_next_reply_none_until_complete() -> None:
    parser = ReplyParser()
    parser.feed(b"250-a\r\n250 b")
    assert parser.next_reply() is None
    parser.feed(b"\r")
    assert parser.next_reply() is None
    parser.feed(b"\n")
    assert parser.next_reply() == Reply(250, ("a", "b"))
    assert parser.next_reply() is None


def test_cr_lf_split_across_feeds_is_one_line_end() -> None:
    parser = ReplyParser()
    parser.feed(b"250 ok\r")
    parser.feed(b"\n")
    assert parser.next_reply() == Reply(250, ("ok",))


def test_empty_feed_is_harmless() -> None:
    parser = ReplyParser()
    parser.feed(b"")
    assert not parser.has_pending()
    assert parser.next_reply() is None


def test_has_pending() -> None:
    parser = ReplyParser()
    assert not parser.has_pending()
    parser.feed(b"2")
    assert parser.has_pending()  # a partial line
    parser.feed(b"50-a\r\n")
    assert parser.has_pending()  # a partial reply
    parser.feed(b"250 b\r\n")
    assert parser.has_pending()  # a complete reply not yet returned
    assert parser.next_reply() is not None
    assert not parser.has_pending()
    parser.feed(b"250 x\r\n250 y\r\n")
    assert parser.next_reply() is not None
    assert parser.has_pending()
    assert parser.next_reply() is not None
    assert not parser.has_pending()


def test_poisoned_after_error() -> None:
    parser = ReplyParser()
    assert not parser.broken
    with pytest.raises(ProtocolError):
        parser.feed(b"xyz\r\n")
    assert parser.broken
    with pytest.raises(ProtocolError):
        parser.feed(b"250 ok\r\n")
    with pytest.raises(ProtocolError):
        parser.next_reply()
    with pytest.raises(ProtocolError):
        parser.feed(b"")


def test_poisoned_even_when_error_follows_a_good_reply() -> None:
    # The good reply before the violation is still returned (a 250 to the
    # final "." followed by a broken reply to a pipelined QUIT), then the
    # parser raises for good.
    parser = ReplyParser()
    parser.feed(b"250 ok\r\n999 bad\r\n")
    assert parser.broken and parser.has_pending()
    assert parser.next_reply() == Reply(250, ("ok",))
    with pytest.raises(ProtocolError, match="malformed"):
        parser.next_reply()
    with pytest.raises(ProtocolError):
        parser.feed(b"250 ok\r\n")
    with pytest.raises(ProtocolError):
        parser.next_reply()


def test_accepts_bytearray_and_memoryview() -> None:
    parser = ReplyParser()
    parser.feed(bytearray(b"250 a\r\n"))
    parser.feed(memoryview(b"250 b\r\n"))
    assert parser.next_reply() == Reply(250, ("a",))
    assert parser.next_reply() == Reply(250, ("b",))


# --- properties --------------------------------------------------------------

SMALL = ReplyLimits(max_line_length=40, max_lines=5, max_reply_size=120)
_ESCAPED_OK = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f-\x9f]*\Z")


@given(st.lists(st.binary(max_size=60), max_size=8))
def test_arbitrary_bytes_only_protocol_error(chunks: list[bytes]) -> None:
    parser = ReplyParser(SMALL)
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (reply := parser.next_reply()) is not None:
                assert 200 <= reply.code <= 599
                assert 1 <= len(reply.lines) <= SMALL.max_lines
                for line in reply.lines:
                    assert _ESCAPED_OK.match(line)
                    # decoded text can only grow by escaping, never exceed 4x the octets
                    assert len(line) <= 4 * SMALL.max_line_length
    except ProtocolError:
        assert parser.broken


_LINE_BYTES = st.sampled_from(
    [b"\r", b"\n", b"-", b" ", b"2", b"5", b"0", b"4", b"a", b"\xff", b"\x00", b"\r\n"]
)


@given(st.lists(_LINE_BYTES, max_size=40).map(b"".join))
def test_near_valid_bytes_only_protocol_error(data: bytes) -> None:
    parser = ReplyParser(SMALL)
    try:
        parser.feed(data)
        while (reply := parser.next_reply()) is not None:
            assert len(reply.lines) <= SMALL.max_lines
    except ProtocolError:
        assert parser.broken


_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=30,
).filter(lambda t: not any(0x80 <= ord(c) <= 0x9F for c in t))


@st.composite
def wire_replies(draw: st.DrawFn) -> tuple[bytes, list[Reply]]:
    replies = draw(
        st.lists(
            st.tuples(st.integers(200, 599), st.lists(_TEXT, min_size=1, max_size=4)),
            min_size=1,
            max_size=4,
        )
    )
    wire = bytearray()
    expected = []
    for code, lines in replies:
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            ending = draw(st.sampled_from([b"\r\n", b"\n"]))
            wire += f"{code}{sep}{line}".encode() + ending
        expected.append(Reply(code, tuple(lines), enhanced_status(code, lines[0])))
    return bytes(wire), expected


@given(wire_replies(), st.lists(st.integers(0, 1000), max_size=10))
def test_valid_replies_round_trip_through_any_split(
    case: tuple[bytes, list[Reply]], cuts: list[int]
) -> None:
    wire, expected = case
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    parser = ReplyParser()
    got = []
    for piece in pieces:
        parser.feed(piece)
        while (reply := parser.next_reply()) is not None:
            got.append(reply)
    assert got == expected
    assert not parser.has_pending()
    # str() shows each reply as on the wire
    for reply in got:
        lines = [
            f"{reply.code}{'-' if i < len(reply.lines) - 1 else ' '}{t}"
            for i, t in enumerate(reply.lines)
        ]
        assert str(reply) == "\n".join(lines)


# --- the memo of lines and reads seen before changes nothing ----------------


def _outcome(chunks: list[bytes], limits: ReplyLimits | None) -> list[object]:
    """Everything a parser says about ``chunks``: replies, and where it broke."""
    parser = ReplyParser(limits)
    said: list[object] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (reply := parser.next_reply()) is not None:
                said.append(reply)
            said.append(parser.has_pending())
    except ProtocolError as exc:
        said.append(exc.diagnostic)
    return said


_REPLY_PIECES = st.sampled_from(
    [
        *(b"250 ok\r\n", b"250-a\r\n", b"250 b\n", b"354 go\r\n", b"550 5.1.1 no\r\n"),
        *(b"250", b"25", b"\r\n", b"-x\r\n", b" " * 50 + b"\r\n", b"\x00", b"\xff\r\n"),
    ]
)


@given(
    st.lists(st.lists(_REPLY_PIECES, max_size=6).map(b"".join), max_size=6),
    st.sampled_from([None, SMALL, ReplyLimits(max_reply_size=12)]),
    st.sampled_from([None, SMALL]),
)
def test_remembered_replies_change_nothing(
    chunks: list[bytes], limits: ReplyLimits | None, warm_with: ReplyLimits | None
) -> None:
    replies._KNOWN_LINES.clear()
    replies._KNOWN_BLOCKS.clear()
    fresh = _outcome(chunks, limits)
    _outcome(chunks, warm_with)  # remember what these limits allow
    assert _outcome(chunks, limits) == fresh  # now from the memo where it can be
    assert _outcome(chunks, limits) == fresh
