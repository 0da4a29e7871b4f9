"""Non-ASCII addresses (RFC 6531 SMTPUTF8, RFC 6532 UTF-8 headers).

An address that is not ASCII goes as UTF-8 on the wire, with SMTPUTF8 on
MAIL, to a server that offers it; to any other server the transaction fails
before MAIL with a clear error, and nothing is sent.
"""

from __future__ import annotations

from email.message import EmailMessage

import pytest

import smtplug
from smtplug import InvalidInputError
from smtplug.envelope import prepare

HEAD = "From: a@example.com\r\nSubject: t\r\n\r\nbody\r\n"


def send(server, message, **options):
    return smtplug.sendmessage(
        message, servers="127.0.0.1", ports=server.port, usetls=False, timeout=10, **options
    )


def prepared(message, **options):
    options.setdefault("originator", None)
    options.setdefault("recipients", None)
    return prepare(message, header=options.pop("header", ()), login=lambda: "me",
                   hostname="client.example", **options)  # fmt: skip


def test_a_utf8_recipient_goes_as_utf8_with_smtputf8(smtp_server) -> None:
    result = send(smtp_server, HEAD, recipients="jöran@exämple.org")
    assert result == [] and result.accepted
    mail, rcpt = smtp_server.commands[1:3]
    assert mail.startswith("MAIL FROM:<a@example.com> ")
    assert "SMTPUTF8" in mail.split()
    assert rcpt == "RCPT TO:<jöran@exämple.org>"
    assert "RCPT TO:<jöran@exämple.org>\r\n".encode() in smtp_server.sessions[0].wire


def test_a_utf8_originator_and_header_fields(smtp_server) -> None:
    msg = EmailMessage()
    msg["Subject"] = "Grüße"
    msg.set_content("hallo")
    send(
        smtp_server,
        msg,
        originator="δοκιμή@παράδειγμα.δοκιμή",
        header=[("To", "Jö <jöran@example.org>")],
    )
    commands = smtp_server.commands
    assert commands[1].startswith("MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή>")
    assert "SMTPUTF8" in commands[1].split()
    content = smtp_server.last.data_wire
    # An address is never put in an encoded word (RFC 2047 forbids it): the
    # field is written in UTF-8 (RFC 6532).
    assert "To: Jö <jöran@example.org>\r\n".encode() in content
    assert "From: δοκιμή@παράδειγμα.δοκιμή\r\n".encode() in content
    assert b"=?utf-8?" not in content.split(b"Subject")[0]


@pytest.mark.parametrize(
    "options",
    [
        {"recipients": "jöran@example.org"},
        {"recipients": "alice@exämple.org"},
        {"originator": "jöran@example.org", "recipients": "b@example.org"},
    ],
)
def test_without_smtputf8_nothing_is_sent(make_server, options) -> None:
    server = make_server(without_ehlo=["SMTPUTF8"])
    with pytest.raises(InvalidInputError, match="SMTPUTF8") as caught:
        send(server, HEAD, **options)
    assert "not ASCII" in caught.value.diagnostic
    server.wait_idle()
    verbs = [command.split()[0].upper() for command in server.commands]
    assert "MAIL" not in verbs and "RCPT" not in verbs and "DATA" not in verbs
    assert server.messages == []


def test_an_ascii_message_declares_no_smtputf8(smtp_server) -> None:
    send(smtp_server, HEAD, recipients="b@example.org")
    assert "SMTPUTF8" not in smtp_server.commands[1]


def test_a_utf8_header_declares_smtputf8_where_offered(make_server) -> None:
    message = "From: a@example.com\r\nTo: b@example.org\r\nSubject: Grüße\r\n\r\nhi\r\n"
    offered = make_server()
    send(offered, message)
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(offered.commands[1].split())
    # Without SMTPUTF8 an 8BITMIME server still takes it (ASCII addresses).
    plain = make_server(without_ehlo=["SMTPUTF8"])
    assert send(plain, message).accepted
    assert "SMTPUTF8" not in plain.commands[1]


def test_prepare_marks_what_needs_smtputf8() -> None:
    assert not prepared(HEAD, recipients="b@example.org").smtputf8
    assert prepared(HEAD, recipients="jöran@example.org").smtputf8
    assert prepared(HEAD + "", recipients="b@example.org", originator="jö@x.example").smtputf8
    # A non-ASCII display name alone is an encoded word: ASCII, no SMTPUTF8.
    plain = prepared(HEAD, recipients="b@example.org", header=[("Reply-To", "Jö <j@x.example>")])
    assert not plain.smtputf8 and plain.header.isascii()
    utf8 = prepared(HEAD, recipients="b@example.org", header=[("Reply-To", "jö@x.example")])
    assert utf8.smtputf8 and "Reply-To: jö@x.example\r\n".encode() in utf8.header


@pytest.mark.parametrize(
    "address",
    [
        "jö ran@example.org",  # whitespace outside quotes
        "jö\u00a0ran@example.org",  # non-ASCII whitespace
        "jö@exa mple.org",
        "jö@",
        "\udcff@example.org",  # a lone surrogate is no Unicode text
    ],
)
def test_malformed_utf8_addresses_fail_before_connecting(address) -> None:
    with pytest.raises(InvalidInputError):
        smtplug.sendmessage(HEAD, recipients=address, servers="192.0.2.1", ports=1)
