"""The envelope's fast paths give exactly what the strict paths give.

smtplug.envelope parses an address list with the standard library's RFC 5322
parser (about 50 us an address here). Most address lists are plain
(``a@example.org, Name <b@example.org>``); those are read by one regex
instead. These tests pin that the shortcut never changes a result: on any
text, it either declines (and the strict parser decides) or returns what the
strict parser returns, and it never accepts what the strict parser refuses.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from smtplug import envelope

HOST = "client.example.net"

_ATOM = st.text("ab9!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=4)
_DOT_ATOM = st.lists(_ATOM, min_size=1, max_size=3).map(".".join)
_ADDR = st.builds(lambda local, domain: f"{local}@{domain}", _DOT_ATOM, _DOT_ATOM)
_SPACE = st.text(" \t", max_size=2)
_PHRASE = st.lists(_ATOM, min_size=1, max_size=3).map(" ".join)
_ITEM = st.one_of(
    st.builds(lambda a, s1, s2: f"{s1}{a}{s2}", _ADDR, _SPACE, _SPACE),
    st.builds(lambda p, a, s1, s2: f"{s1}{p} <{a}>{s2}", _PHRASE, _ADDR, _SPACE, _SPACE),
    st.builds(lambda p, a: f"{p}<{a}>", _PHRASE, _ADDR),
    st.builds(lambda a: f"<{a}>", _ADDR),
)
_PLAIN_LISTS = st.lists(_ITEM, min_size=1, max_size=4).map(",".join)
# Near misses: the characters that make a list not plain, put anywhere.
_NEAR = st.text('ab.@<>,"()\\[]:; \t=?é\u2028', max_size=24)


def strict(value: str) -> tuple[str, ...] | None:
    try:
        return envelope._strict_addresses(value, HOST)
    except envelope._AddressError:
        return None


def assert_same(value: str) -> None:
    fast = envelope._plain_addresses(value)
    if fast is not None:
        assert fast == strict(value), value


@given(_PLAIN_LISTS)
@example("a@b")
@example("Alice <alice@example.org>, bob@example.org")
@example("a=?b@c")
@example("=?utf-8?q?a?=@example.org")
def test_plain_lists_read_as_the_strict_parser_reads_them(value: str) -> None:
    assert_same(value)


@given(_PLAIN_LISTS)
def test_plain_lists_take_the_fast_path(value: str) -> None:
    # Not vacuous: what the generator writes is plain (unless it wrote "=?").
    if "=?" not in value:
        assert envelope._plain_addresses(value) is not None


@given(st.one_of(_NEAR, st.text(max_size=30), _PLAIN_LISTS.map(lambda v: v + ",")))
@example("a@b,,c@d")
@example("a@b.")
@example(".a@b")
@example("a..b@c")
@example("a@b (comment)")
@example("a. b <a@b>")
@example("")
def test_anything_else_is_declined_or_read_the_same(value: str) -> None:
    assert_same(value)


def test_parse_addresses_unchanged_on_plain_and_other_lists() -> None:
    assert envelope.parse_addresses("x", "Al <a@b.example>, c@d", hostname=HOST) == [
        "a@b.example",
        "c@d",
    ]
    assert envelope.parse_addresses("x", "alice", hostname=HOST) == [f"alice@{HOST}"]
    assert envelope.parse_addresses("x", '"a b"@c', hostname=HOST) == ['"a b"@c']


# --- the header block: one regex pass, the line-by-line split as the reference ----------

_NAME = st.sampled_from(["To", "cc", "Subject", "X-a", "From", "bcc", "Dcc", "résumé"])
_LINE_END = st.sampled_from(["\r\n", "\n", "\r", ""])
_VALUE = st.text(" \tab:é,<>@\r\n", max_size=12)
_FIELD_TEXT = st.builds(
    lambda name, space, value, end, folds: (
        f"{name}{space}:{value}" + "".join(f"{fold}" for fold in folds) + end
    ),
    _NAME,
    st.sampled_from(["", " ", "\t"]),
    _VALUE,
    _LINE_END,
    st.lists(
        st.builds(
            lambda w, v, e: f"\r\n{w}{v}{e}", st.sampled_from([" ", "\t"]), _VALUE, _LINE_END
        ),
        max_size=2,
    ),
)
_HEADS = st.one_of(
    st.lists(_FIELD_TEXT, max_size=5).map(lambda fields: "".join(fields).encode()),
    st.binary(max_size=40),
    st.text("ab: \t\r\nX-", max_size=40).map(str.encode),
)


def split_both(head: bytes) -> tuple[object, object]:
    def attempt(split: object) -> object:
        try:
            return split(head)  # type: ignore[operator]
        except Exception as exc:  # the same error, worded the same
            return (type(exc), str(exc))

    return attempt(envelope._split_header), attempt(envelope._split_header_lines)


@given(_HEADS)
@example(b"To: a@b\r\nSubject: x\r\n")
@example(b"To: a@b\r\n  c@d\r\nSubject: x")
@example(b"To: a@b\rSubject: x\r\n")
@example(b" folded first\r\n")
@example(b"To: a\r\n\r\n")
@example(b"")
def test_header_split_in_one_pass_matches_the_line_split(head: bytes) -> None:
    fast, reference = split_both(head)
    assert fast == reference
