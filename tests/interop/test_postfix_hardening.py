"""Issue 6's behaviours against a real Postfix on loopback: SMTPUTF8,
smuggling look-alikes and 8-bit text.

Postfix (compatibility level 3.6) offers SMTPUTF8, 8BITMIME, PIPELINING and
CHUNKING on its plain port, and delivers every domain into one Maildir.
"""

from __future__ import annotations

import email
import email.policy

import pytest

import smtplug
from apis import both_apis

pytestmark = [pytest.mark.interop, both_apis]

# The nine end-of-data look-alikes of the December 2023 SMTP smuggling research.
SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r.\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\r\n",
    b"\r\n.\r\n",
]


def send(pf, message, **options):
    return smtplug.sendmessage(
        message, servers=[pf.host], ports=[pf.plain_port], usetls=False, timeout=30, **options
    )


def test_a_utf8_recipient_is_delivered(postfix_clean):
    pf = postfix_clean
    message = (
        "From: Jöran <jöran@exämple.test>\r\nTo: Zoë <zoë@exämple.test>\r\n"
        "Subject: Grüße\r\n\r\nHallo.\r\n"
    ).encode()
    result = send(pf, message)
    assert result == [] and result.accepted
    (raw,) = pf.wait_for_messages(1)
    got = email.message_from_bytes(raw, policy=email.policy.SMTPUTF8)
    assert got["X-Original-To"] == "zoë@exämple.test"
    assert got["Return-Path"] == "<jöran@exämple.test>"
    assert got["Subject"] == "Grüße"


def test_smuggling_look_alikes_arrive_as_text(postfix_clean):
    pf = postfix_clean
    body = b"".join(
        b"part %d" % i + evil + b"MAIL FROM:<evil@example.test>\r\n"
        for i, evil in enumerate(SMUGGLING)
    )
    message = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: smuggling\r\n\r\n" + body
    assert send(pf, message).accepted
    (raw,) = pf.wait_for_messages(1)
    # One message, all nine parts in it, every smuggled command as text.
    for i in range(len(SMUGGLING)):
        assert b"part %d" % i in raw
    assert raw.count(b"MAIL FROM:<evil@example.test>") == len(SMUGGLING)
    assert len(pf.messages()) == 1


def test_an_8bit_body_is_delivered_intact(postfix_clean):
    pf = postfix_clean
    message = "From: a@example.com\r\nTo: b@example.org\r\nSubject: 8bit\r\n\r\nGrüße\r\n"
    assert send(pf, message.encode()).accepted
    (raw,) = pf.wait_for_messages(1)
    assert "Grüße".encode() in raw
