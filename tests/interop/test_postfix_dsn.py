"""DSN against the real Postfix: it offers DSN, and a NOTIFY=SUCCESS delivery
puts a delivery report (to the sender, delivered into the same Maildir)
beside the message, carrying the ENVID (xtext-decoded) and the ORCPT the
client sent."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

import smtplug
from apis import both_apis
from smtplug import DSN

pytestmark = [pytest.mark.interop, both_apis]


def test_a_success_notification_comes_back_with_envid_and_orcpt(postfix_clean):
    pf = postfix_clean
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "dsn please"
    msg.set_content("Tell me when it arrives.\n")
    result = smtplug.sendmessage(
        msg,
        servers=[pf.host],
        ports=[pf.plain_port],
        usetls=False,
        client="localhost",
        timeout=30,
        dsn=DSN(notify="SUCCESS", ret="HDRS", envid="smtplug+test=1", orcpt=True),
    )
    assert result.accepted
    raw = pf.wait_for_messages(2, timeout=30)
    parsed = [email.message_from_bytes(m, policy=email.policy.default) for m in raw]
    (report,) = [m for m in parsed if m.get_content_type() == "multipart/report"]
    assert report.get_param("report-type") == "delivery-status"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    # Postfix decoded the xtext smtplug sent (ENVID=smtplug+2Btest+3D1).
    assert "Original-Envelope-Id: smtplug+test=1" in text
    assert "Original-Recipient: rfc822;bob@example.org" in text
    assert "Action: delivered" in text
    assert report["To"] == "alice@example.com"
    (original,) = [m for m in parsed if m["Subject"] == "dsn please"]
    assert original["X-Original-To"] == "bob@example.org"
