"""Tests for smtplug.protocol.commands: exact bytes and injection-proof validation."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtplug.errors import InvalidInputError, ProtocolError
from smtplug.protocol import commands

CONTROLS = [chr(c) for c in (*range(0x20), 0x7F)]


# --- exact bytes -------------------------------------------------------------


def test_simple_commands() -> None:
    assert commands.data() == b"DATA\r\n"
    assert commands.rset() == b"RSET\r\n"
    assert commands.quit() == b"QUIT\r\n"
    assert commands.noop() == b"NOOP\r\n"
    assert commands.starttls() == b"STARTTLS\r\n"
    assert commands.qued() == b"QUED\r\n"


def test_ehlo_helo() -> None:
    assert commands.ehlo("client.example.org") == b"EHLO client.example.org\r\n"
    assert commands.helo("client.example.org") == b"HELO client.example.org\r\n"
    assert commands.ehlo("[192.0.2.1]") == b"EHLO [192.0.2.1]\r\n"


def test_mail() -> None:
    assert commands.mail("a@b.example") == b"MAIL FROM:<a@b.example>\r\n"
    assert (
        commands.mail("a@b.example", ["SIZE=1000", "BODY=8BITMIME"])
        == b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME\r\n"
    )
    assert commands.mail("a@b", ("SMTPUTF8",)) == b"MAIL FROM:<a@b> SMTPUTF8\r\n"


def test_null_reverse_path() -> None:
    assert commands.mail("") == b"MAIL FROM:<>\r\n"
    assert commands.mail("", ["SIZE=5"]) == b"MAIL FROM:<> SIZE=5\r\n"


def test_rcpt() -> None:
    assert commands.rcpt("x@y.example") == b"RCPT TO:<x@y.example>\r\n"
    assert commands.rcpt("postmaster") == b"RCPT TO:<postmaster>\r\n"
    assert (
        commands.rcpt("x@y", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;x+40y"])
        == b"RCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y\r\n"
    )


def test_rcpt_refuses_empty() -> None:
    with pytest.raises(InvalidInputError):
        commands.rcpt("")


def test_quoted_local_part_with_space() -> None:
    assert commands.rcpt('"john doe"@example.org') == b'RCPT TO:<"john doe"@example.org>\r\n'
    assert commands.rcpt('"a\\" b"@x') == b'RCPT TO:<"a\\" b"@x>\r\n'


@pytest.mark.parametrize(
    "address",
    [
        "john doe@example.org",
        "john@exa mple.org",
        " a@b",
        "a@b ",
        '"john doe"@exa mple.org',
        '"unterminated@x',
        '"esc\\"@x',
        'a"b c"@x',
        "a@b\u00a0",  # non-ASCII whitespace, with smtputf8 below too
        "<a@b>",
        "a<b@c",
        "a@b>",
        "a@b>\r\nRCPT TO:<evil@x",
    ],
)
def test_bad_addresses(address: str) -> None:
    for encoder in (commands.mail, commands.rcpt):
        with pytest.raises(InvalidInputError):
            encoder(address, smtputf8=True)
    with pytest.raises(InvalidInputError):
        commands.check_address(address, smtputf8=True)


def test_check_address_returns_unchanged() -> None:
    assert commands.check_address("a@b") == "a@b"
    assert commands.check_address("", allow_empty=True) == ""
    with pytest.raises(InvalidInputError):
        commands.check_address("")


def test_check_address_refuses_non_string() -> None:
    with pytest.raises(InvalidInputError):
        commands.check_address(b"a@b")  # type: ignore[arg-type]


# --- non-ASCII / SMTPUTF8 ----------------------------------------------------


def test_non_ascii_needs_smtputf8() -> None:
    for encoder in (commands.mail, commands.rcpt):
        with pytest.raises(InvalidInputError, match="SMTPUTF8"):
            encoder("jürgen@example.org")
    with pytest.raises(InvalidInputError, match="SMTPUTF8"):
        commands.check_address("a@bücher.example")


def test_non_ascii_with_smtputf8_is_utf8() -> None:
    assert (
        commands.mail("jürgen@example.org", ["SMTPUTF8"], smtputf8=True)
        == "MAIL FROM:<jürgen@example.org> SMTPUTF8\r\n".encode()
    )
    assert commands.rcpt("用户@例子.广告", smtputf8=True) == "RCPT TO:<用户@例子.广告>\r\n".encode()


def test_lone_surrogate_refused() -> None:
    with pytest.raises(InvalidInputError):
        commands.rcpt("a\udcffb@x", smtputf8=True)


def test_non_ascii_ehlo_and_params_refused() -> None:
    with pytest.raises(InvalidInputError):
        commands.ehlo("bücher.example")
    with pytest.raises(InvalidInputError):
        commands.mail("a@b", ["X=ü"], smtputf8=True)
    with pytest.raises(InvalidInputError):
        commands.command("VRFY", "jürgen")


# --- control characters in every position ---------------------------------

POSITIONS: list[tuple[str, Callable[[str], bytes]]] = [
    ("ehlo", lambda s: commands.ehlo(f"a{s}b")),
    ("helo", lambda s: commands.helo(f"a{s}b")),
    ("mail address", lambda s: commands.mail(f"a{s}@b")),
    ("mail address utf8", lambda s: commands.mail(f"ü{s}@b", smtputf8=True)),
    ("mail address end", lambda s: commands.mail(f"a@b{s}")),
    ("mail param", lambda s: commands.mail("a@b", [f"SIZE=1{s}"])),
    ("mail param keyword", lambda s: commands.mail("a@b", [f"X{s}Y"])),
    ("mail second param", lambda s: commands.mail("a@b", ["SIZE=1", f"{s}"])),
    ("rcpt address", lambda s: commands.rcpt(f"{s}a@b")),
    ("rcpt quoted", lambda s: commands.rcpt(f'"a{s}b"@c')),
    ("rcpt param", lambda s: commands.rcpt("a@b", [f"NOTIFY=NEVER{s}"])),
    ("command verb", lambda s: commands.command(f"VR{s}FY")),
    ("command arg", lambda s: commands.command("VRFY", f"x{s}")),
    ("command second arg", lambda s: commands.command("AUTH", "PLAIN", f"{s}AAAA")),
    ("check_address", lambda s: commands.check_address(f"a{s}@b").encode()),
]


@pytest.mark.parametrize("control", CONTROLS, ids=[f"{ord(c):#04x}" for c in CONTROLS])
@pytest.mark.parametrize(("name", "encode"), POSITIONS, ids=[p[0] for p in POSITIONS])
def test_control_characters_refused(
    control: str, name: str, encode: Callable[[str], bytes]
) -> None:
    with pytest.raises(InvalidInputError) as info:
        encode(control)
    # the message never carries the raw control character
    assert control not in str(info.value)


@pytest.mark.parametrize(("name", "encode"), POSITIONS, ids=[p[0] for p in POSITIONS])
def test_positions_accept_plain_text(name: str, encode: Callable[[str], bytes]) -> None:
    encode("x")  # the same call without a control character succeeds


# --- the 512-octet line limit ----------------------------------------------


def test_mail_line_limit() -> None:
    # "MAIL FROM:<a@b>" (15) + " X=" (3) + value + CRLF (2) = 512
    value = "v" * (512 - 20)
    line = commands.mail("a@b", [f"X={value}"])
    assert len(line) == 512
    with pytest.raises(InvalidInputError, match="512"):
        commands.mail("a@b", [f"X={value}v"])


def test_address_limit_is_rfc_5321s_path() -> None:
    # A path holds 256 octets with "<" and ">": 254 for the address.
    address = "a" * 64 + "@" + "b" * (254 - 65)
    assert len(commands.mail(address)) == 11 + 254 + 1 + 2
    assert len(commands.rcpt(address)) == 9 + 254 + 1 + 2
    for encoder in (commands.mail, commands.rcpt):
        with pytest.raises(InvalidInputError, match="254 octets"):
            encoder(address + "b")


def test_limit_counts_octets_not_characters() -> None:
    address = "ü" * 120 + "@x"  # 242 octets, 122 characters
    assert len(commands.rcpt(address, smtputf8=True)) == 242 + 12
    with pytest.raises(InvalidInputError, match="254 octets"):
        commands.rcpt("ü" * 127 + "@x", smtputf8=True)  # 256 octets, 129 characters


def test_limit_includes_params() -> None:
    params = [f"X{i}=" + "v" * 40 for i in range(12)]
    with pytest.raises(InvalidInputError):
        commands.mail("a@b", params)
    assert commands.mail("a@b", params[:10])


def test_ehlo_and_command_limit() -> None:
    assert len(commands.ehlo("h" * 505)) == 512
    with pytest.raises(InvalidInputError):
        commands.ehlo("h" * 506)
    with pytest.raises(InvalidInputError):
        commands.command("AUTH", "PLAIN", "A" * 600)


# --- ESMTP parameters -------------------------------------------------------


@pytest.mark.parametrize(
    "param",
    ["SIZE=1000", "BODY=8BITMIME", "SMTPUTF8", "X-FOO", "RET=HDRS", "ENVID=a+2Bb", "A=!~<>"],
)
def test_good_params(param: str) -> None:
    assert commands.mail("a@b", [param]) == f"MAIL FROM:<a@b> {param}\r\n".encode()


@pytest.mark.parametrize(
    "param",
    ["", "=x", "-X", "SIZE=", "SIZE=1=2", "SIZE =1", "SIZE= 1", "A B", "X_Y=1", "A=b c", "KÖ=1"],
)
def test_bad_params(param: str) -> None:
    with pytest.raises(InvalidInputError):
        commands.mail("a@b", [param])
    with pytest.raises(InvalidInputError):
        commands.rcpt("a@b", [param])


def test_params_as_string_refused() -> None:
    with pytest.raises(InvalidInputError):
        commands.mail("a@b", "SIZE=1")


@pytest.mark.parametrize("params", [None, 0, False, b"SIZE=1", {"SIZE": "1"}.keys()])
def test_params_not_a_sequence_refused(params: object) -> None:
    # Not even with a plain address, which takes the short way to its bytes.
    for encode in (commands.mail, commands.rcpt):
        with pytest.raises(InvalidInputError, match="sequence of strings"):
            encode("a@example.org", params)  # type: ignore[arg-type]


# --- ehlo / helo / generic command ------------------------------------------


@pytest.mark.parametrize("domain", ["", "a b", " a", "a\u00a0b"])
def test_bad_ehlo_domain(domain: str) -> None:
    with pytest.raises(InvalidInputError):
        commands.ehlo(domain)
    with pytest.raises(InvalidInputError):
        commands.helo(domain)


def test_generic_command() -> None:
    assert commands.command("NOOP") == b"NOOP\r\n"
    assert commands.command("AUTH", "PLAIN", "AGEAYg==") == b"AUTH PLAIN AGEAYg==\r\n"
    assert commands.command("BDAT", "100", "LAST") == b"BDAT 100 LAST\r\n"
    assert commands.command("auth", "=") == b"auth =\r\n"


@pytest.mark.parametrize("verb", ["", "MAIL FROM:", "VR-FY", "VRFY ", "ÄUTH", "X_Y"])
def test_generic_command_bad_verb(verb: str) -> None:
    with pytest.raises(InvalidInputError):
        commands.command(verb)


@pytest.mark.parametrize("arg", ["", "a b", " a"])
def test_generic_command_bad_arg(arg: str) -> None:
    with pytest.raises(InvalidInputError):
        commands.command("VRFY", arg)


# --- property: whatever the input, one line or an InvalidInputError ---------


@given(st.text(max_size=40), st.lists(st.text(max_size=12), max_size=3), st.booleans())
def test_any_input_yields_a_single_safe_line(address: str, params: list[str], utf8: bool) -> None:
    try:
        line = commands.mail(address, params, smtputf8=utf8)
    except InvalidInputError:
        return
    assert line.endswith(b"\r\n")
    body = line[:-2]
    assert b"\r" not in body and b"\n" not in body and b"\x00" not in body
    assert len(line) <= 512
    assert line.startswith(b"MAIL FROM:<" + address.encode() + b">")


# -- AUTH (RFC 4954) ---------------------------------------------------------------


def test_auth_encoders() -> None:
    assert commands.auth("PLAIN", b"\0alice\0pw") == b"AUTH PLAIN AGFsaWNlAHB3\r\n"
    assert commands.auth("LOGIN") == b"AUTH LOGIN\r\n"
    assert commands.auth("EXTERNAL", b"") == b"AUTH EXTERNAL =\r\n"
    assert commands.sasl_response(b"x") == b"eA==\r\n"
    assert commands.sasl_response(b"") == b"\r\n"
    assert commands.sasl_cancel() == b"*\r\n"


def test_auth_line_holds_512_octets_a_response_line_12288() -> None:
    # RFC 4954 section 4: an initial response that would make the AUTH line longer
    # than a command line may be is not sent on it, but after the empty 334.
    token = b"t" * 3000  # an OAuth token: longer than a command line may be
    with pytest.raises(InvalidInputError, match="512"):
        commands.auth("XOAUTH2", token)
    assert len(commands.sasl_response(token)) == 4002
    with pytest.raises(InvalidInputError, match="12288"):
        commands.sasl_response(b"t" * 10000)


@pytest.mark.parametrize("mechanism", ["PLAIN", "XOAUTH2", "EXTERNAL", "OAUTHBEARER", "X" * 20])
@pytest.mark.parametrize("size", range(480, 510))
def test_initial_response_fits_exactly_512_octets(mechanism: str, size: int) -> None:
    initial = b"s" * (size - len(mechanism))
    expected = b"AUTH %s %s\r\n" % (mechanism.encode(), base64.b64encode(initial) or b"=")
    fits = commands.initial_response_fits(mechanism, initial)
    assert fits == (len(expected) <= 512)
    if fits:
        assert commands.auth(mechanism, initial) == expected
    else:
        with pytest.raises(InvalidInputError):
            commands.auth(mechanism, initial)


def test_initial_response_fits_boundary() -> None:
    # "AUTH EXTERNAL " is 14 octets: 496 of base64 (372 bytes) make 512 with CRLF.
    assert len(commands.auth("EXTERNAL", b"z" * 372)) == 512
    assert commands.initial_response_fits("EXTERNAL", b"z" * 372)
    assert not commands.initial_response_fits("EXTERNAL", b"z" * 373)
    assert commands.initial_response_fits("EXTERNAL", b"")


def test_overlong_sasl_lines_do_not_show_the_secret() -> None:
    secret = b"hunter2-" * 2000
    for encode in (lambda: commands.auth("PLAIN", secret), lambda: commands.sasl_response(secret)):
        with pytest.raises(InvalidInputError) as info:
            encode()
        assert base64.b64encode(secret)[:8].decode() not in str(info.value)


@pytest.mark.parametrize("name", ["plain", "PL AIN", "X\r\nRCPT", "A" * 21, ""])
def test_auth_refuses_bad_mechanism_names(name: str) -> None:
    with pytest.raises(InvalidInputError):
        commands.auth(name)


def test_decode_challenge_is_strict() -> None:
    assert commands.decode_challenge("VXNlcm5hbWU6") == b"Username:"
    assert commands.decode_challenge("") == b""
    for bad in ("not base64!", "VXNlcm5hbWU", "VXNl\x00cm5h"):
        with pytest.raises(ProtocolError):
            commands.decode_challenge(bad)
