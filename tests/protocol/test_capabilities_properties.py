"""Property tests for the EHLO capability parser, fed through the reply parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtplug.errors import ProtocolError
from smtplug.protocol.capabilities import Capabilities
from smtplug.protocol.replies import Reply, ReplyParser


def replies_from(wire: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.feed(wire)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


def ehlo_wire(lines: list[bytes]) -> bytes:
    """A 250 reply: a greeting line, then one line per extension."""
    body = [b"mx.example.org greets you", *lines]
    return b"".join(
        b"250" + (b" " if i == len(body) - 1 else b"-") + line + b"\r\n"
        for i, line in enumerate(body)
    )


_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@given(st.lists(_LINE, max_size=12))
def test_any_ehlo_bytes_never_crash(lines: list[bytes]) -> None:
    (reply,) = replies_from(ehlo_wire(lines))
    caps = Capabilities.from_ehlo(reply)
    assert caps.domain == "mx.example.org"
    for keyword, params in caps.keywords.items():
        assert keyword.isascii() and keyword == keyword.upper()
        assert all(param and not any(c.isspace() for c in param) for param in params)
    limit = caps.size_limit
    assert limit is None or 0 <= limit < 10**20
    assert all(m == m.upper() for m in caps.auth_mechanisms)
    assert len(set(caps.auth_mechanisms)) == len(caps.auth_mechanisms)


@given(st.binary(max_size=300))
def test_arbitrary_server_bytes_give_protocol_error_or_capabilities(wire: bytes) -> None:
    try:
        replies = replies_from(wire)
    except ProtocolError:
        return
    for reply in replies:
        if reply.is_positive:
            Capabilities.from_ehlo(reply)
            Capabilities.from_helo(reply)
        else:
            with pytest.raises(ValueError):
                Capabilities.from_ehlo(reply)


_KEYWORD = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,11}", fullmatch=True).filter(
    lambda k: k.upper() not in ("AUTH", "TLS") and not k.upper().startswith("AUTH=")
)
_PARAM = st.from_regex(r"[!-~]{1,10}", fullmatch=True)


def _cases(draw: st.DrawFn, keyword: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in keyword)


@st.composite
def extensions(draw: st.DrawFn) -> tuple[list[str], dict[str, tuple[str, ...]], list[str]]:
    """(EHLO lines in random case, the keywords expected, the AUTH mechanisms)."""
    lines: list[str] = []
    expected: dict[str, tuple[str, ...]] = {}
    mechanisms: list[str] = []
    for _ in range(draw(st.integers(0, 10))):
        if draw(st.integers(0, 4)) == 0:
            found = draw(st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), max_size=3))
            spelt = draw(st.sampled_from(["AUTH", "auth", "Auth"]))
            if found and draw(st.booleans()):  # the old form: AUTH=PLAIN LOGIN
                lines.append(f"{spelt}={' '.join(found)}")
            else:
                lines.append(" ".join([spelt, *found]))
            for mechanism in found:
                if mechanism.upper() not in mechanisms:
                    mechanisms.append(mechanism.upper())
            expected["AUTH"] = tuple(dict.fromkeys((*expected.get("AUTH", ()), *found)))
            continue
        keyword = draw(_KEYWORD)
        params = tuple(draw(st.lists(_PARAM, max_size=3)))
        lines.append(" ".join([_cases(draw, keyword), *params]))
        expected.setdefault(keyword.upper(), params)  # the first one wins
    return lines, expected, mechanisms


@given(extensions(), st.sampled_from([" ", "  ", "\t"]))
def test_keywords_match_a_reference_and_are_case_insensitive(
    case: tuple[list[str], dict[str, tuple[str, ...]], list[str]], gap: str
) -> None:
    lines, expected, mechanisms = case
    wire = ehlo_wire([line.replace(" ", gap).encode() for line in lines])
    (reply,) = replies_from(wire)
    caps = Capabilities.from_ehlo(reply)
    assert dict(caps.keywords) == expected
    assert list(caps.auth_mechanisms) == mechanisms
    for keyword, params in expected.items():
        for spelling in (keyword, keyword.lower(), keyword.swapcase(), keyword.title()):
            assert caps.has(spelling)
            assert caps.params(spelling) == params


@given(st.text(max_size=30))
def test_size_limit_is_a_bounded_decimal_or_none(param: str) -> None:
    caps = Capabilities("mx", {"SIZE": (param,)})
    plain = param.isascii() and param.isdigit() and 1 <= len(param) <= 20
    assert caps.size_limit == (int(param) if plain else None)


@given(st.integers(0, 10**25))
def test_size_limit_parsed_through_the_wire(size: int) -> None:
    (reply,) = replies_from(ehlo_wire([b"SIZE " + str(size).encode()]))
    caps = Capabilities.from_ehlo(reply)
    assert caps.size_limit == (size if size < 10**20 else None)


@pytest.mark.parametrize("size", ["+25", "-1", "1_000", "1e6", "\u0662\u0665\u0660", "0x10", " "])
def test_size_limit_refuses_what_int_would_accept(size: str) -> None:
    assert Capabilities("mx", {"SIZE": (size,)}).size_limit is None
