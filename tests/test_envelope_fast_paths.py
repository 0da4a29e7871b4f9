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
_NEAR = st.text("ab.@<>,\"()\\[]:; \t=?é\u2028", max_size=24)


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
