"""Tests for smtplug.protocol.capabilities: reading EHLO and HELO replies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtplug.protocol.capabilities import Capabilities
from smtplug.protocol.replies import Reply, ReplyParser

POSTFIX = (
    b"250-mail.example.org\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-VRFY\r\n"
    b"250-ETRN\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-AUTH=PLAIN LOGIN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 CHUNKING\r\n"
)


def reply_from(wire: bytes) -> Reply:
    parser = ReplyParser()
    parser.feed(wire)
    reply = parser.next_reply()
    assert reply is not None
    return reply


def ehlo(*lines: str) -> Capabilities:
    return Capabilities.from_ehlo(Reply(250, lines))


def test_postfix_ehlo() -> None:
    caps = Capabilities.from_ehlo(reply_from(POSTFIX))
    assert caps.domain == "mail.example.org"
    assert caps.esmtp
    assert set(caps.keywords) == {
        "PIPELINING",
        "SIZE",
        "VRFY",
        "ETRN",
        "STARTTLS",
        "AUTH",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
        "CHUNKING",
    }
    assert caps.size_limit == 10240000
    assert caps.auth_mechanisms == ("PLAIN", "LOGIN")
    assert caps.starttls
    assert caps.has("pipelining") and caps.has("Pipelining") and caps.has("PIPELINING")
    assert caps.has("8bitmime")
    assert not caps.has("XQUE")
    assert caps.params("SIZE") == ("10240000",)
    assert caps.params("size") == ("10240000",)
    assert caps.params("PIPELINING") == ()
    assert caps.params("NOPE") == ()


def test_domain_is_first_word_of_greeting() -> None:
    caps = ehlo("mx.example.org Hello client.example.com [192.0.2.7]", "PIPELINING")
    assert caps.domain == "mx.example.org"


def test_empty_first_line_gives_empty_domain() -> None:
    assert ehlo("").domain == ""
    assert ehlo("   ").domain == ""
    assert Capabilities.from_ehlo(Reply(250, ())).domain == ""


def test_keywords_upper_cased_and_params_split_on_whitespace() -> None:
    caps = ehlo("mx", "size  1000\t", "x-Custom a  b\tc")
    assert dict(caps.keywords) == {"SIZE": ("1000",), "X-CUSTOM": ("a", "b", "c")}


def test_xque_keyword() -> None:
    caps = ehlo("mx", "XQUE", "SIZE")
    assert caps.has("XQUE")
    assert caps.has("xque")


def test_old_tls_keyword_counts_as_starttls() -> None:
    assert ehlo("mx", "TLS").starttls
    assert ehlo("mx", "STARTTLS").starttls
    assert not ehlo("mx", "PIPELINING").starttls
    assert not ehlo("mx", "TLSX").starttls


def test_old_auth_equals_form_alone() -> None:
    caps = ehlo("mx", "AUTH=LOGIN PLAIN")
    assert caps.has("AUTH")
    assert caps.auth_mechanisms == ("LOGIN", "PLAIN")


def test_auth_mechanisms_union_deduped_upper_cased() -> None:
    caps = ehlo("mx", "AUTH cram-md5 PLAIN", "auth=login plain", "AUTH XOAUTH2")
    assert caps.auth_mechanisms == ("CRAM-MD5", "PLAIN", "LOGIN", "XOAUTH2")


def test_no_auth() -> None:
    assert ehlo("mx", "SIZE 1").auth_mechanisms == ()
    assert ehlo("mx", "AUTH").auth_mechanisms == ()
    assert ehlo("mx", "AUTH=").auth_mechanisms == ()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("SIZE 0", 0),
        ("SIZE 35882577", 35882577),
        ("SIZE", None),
        ("SIZE -1", None),
        ("SIZE 12x", None),
        ("SIZE 1e6", None),
        ("SIZE \u0661\u0662", None),  # non-ASCII digits
        ("SIZE " + "9" * 5000, None),  # must not trip int()'s digit limit
    ],
)
def test_size_limit(line: str, expected: int | None) -> None:
    assert ehlo("mx", line).size_limit == expected


def test_size_absent() -> None:
    assert ehlo("mx", "PIPELINING").size_limit is None


@pytest.mark.parametrize(
    "line",
    [
        "-PIPELINING",
        "PIPE_LINING",
        "PIPE.LINING",
        "ÜBER",
        "\\x00BAD",
        "SIZE=10",
        "!",
    ],
)
def test_malformed_keyword_lines_skipped(line: str) -> None:
    caps = ehlo("mx", "PIPELINING", line, "8BITMIME")
    assert set(caps.keywords) == {"PIPELINING", "8BITMIME"}


def test_blank_keyword_lines_skipped() -> None:
    caps = ehlo("mx", "", "   ", "DSN")
    assert set(caps.keywords) == {"DSN"}


def test_duplicate_keyword_first_wins() -> None:
    assert ehlo("mx", "SIZE 100", "SIZE 200").size_limit == 100


def test_from_helo() -> None:
    caps = Capabilities.from_helo(Reply(250, ("mx.example.org greets you",)))
    assert caps.domain == "mx.example.org"
    assert not caps.esmtp
    assert dict(caps.keywords) == {}
    assert not caps.starttls
    assert caps.size_limit is None
    assert caps.auth_mechanisms == ()


def test_helo_ignores_extra_lines() -> None:
    caps = Capabilities.from_helo(Reply(250, ("mx", "STARTTLS")))
    assert not caps.starttls
    assert not caps.esmtp


def test_negative_reply_refused() -> None:
    with pytest.raises(ValueError):
        Capabilities.from_ehlo(Reply(502, ("no",)))
    with pytest.raises(ValueError):
        Capabilities.from_helo(Reply(421, ("bye",)))


def test_immutable_and_hashable() -> None:
    caps = ehlo("mx", "SIZE 1", "DSN")
    with pytest.raises(TypeError):
        caps.keywords["NEW"] = ()  # type: ignore[index]
    with pytest.raises(AttributeError):
        caps.domain = "other"  # type: ignore[misc]
    assert hash(caps) == hash(ehlo("mx", "SIZE 1", "DSN"))
    assert caps == ehlo("mx", "DSN", "SIZE 1")
    assert caps != ehlo("mx", "SIZE 2", "DSN")


def test_constructor_copies_and_upper_cases_a_dict() -> None:
    source: dict[str, tuple[str, ...]] = {"size": ("5",)}
    caps = Capabilities("mx", source)
    source["DSN"] = ()
    assert dict(caps.keywords) == {"SIZE": ("5",)}
    assert caps.size_limit == 5


@given(st.lists(st.text(max_size=30), max_size=10))
def test_any_text_lines_never_fail(lines: list[str]) -> None:
    caps = Capabilities.from_ehlo(Reply(250, ("mx", *lines)))
    for keyword in caps.keywords:
        assert keyword == keyword.upper()
        assert keyword.isascii()
    caps.size_limit  # noqa: B018
    caps.auth_mechanisms  # noqa: B018


def test_from_ehlo_takes_a_reply_built_with_a_list_of_lines() -> None:
    # Reply does not convert its fields; the memo of EHLO answers must cope.
    reply = Reply(250, ["mx.example", "PIPELINING", "SIZE 1000"])  # type: ignore[arg-type]
    capabilities = Capabilities.from_ehlo(reply)
    assert capabilities.domain == "mx.example"
    assert capabilities.has("PIPELINING") and capabilities.size_limit == 1000
