"""SASL against Postfix with Cyrus SASL (sasldb): every mechanism Tcllib has,
plus SCRAM, over STARTTLS on the submission port and over implicit TLS."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

import smtplug
from apis import both_apis
from smtplug import AuthenticationError

pytestmark = [pytest.mark.interop, both_apis]

MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = subject
    msg.set_content("sent after AUTH\n")
    return msg


def log_since(pf, offset: int, text: str) -> str:
    """What Postfix logged after ``offset``, once ``text`` is in it (postlogd writes late)."""
    return pf.wait_for_log(text, offset)


def options(pf, tlsimport: bool) -> dict[str, object]:
    return {
        "servers": [pf.host],
        "ports": [pf.smtps_port if tlsimport else pf.submission_port],
        "tlsimport": tlsimport,
        "tlspolicy": "require",
        "cafile": pf.ca,
        "username": pf.user,
        "timeout": 30,
    }


@pytest.mark.parametrize("tlsimport", [False, True], ids=["starttls", "implicit-tls"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_mechanism_with_the_right_password(postfix_clean, mechanism, tlsimport):
    pf = postfix_clean
    offset = pf.log_offset()
    subject = f"{mechanism} {'implicit' if tlsimport else 'starttls'}"
    result = smtplug.sendmessage(
        message(subject),
        password=pf.password,
        mechanisms=[mechanism],
        **options(pf, tlsimport),
    )
    assert result.accepted and result.tls is not None
    (raw,) = pf.wait_for_messages(1)
    got = email.message_from_bytes(raw, policy=email.policy.default)
    assert got["Subject"] == subject
    assert f"sasl_method={mechanism}," in log_since(pf, offset, "sasl_method=")


@pytest.mark.parametrize("tlsimport", [False, True], ids=["starttls", "implicit-tls"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_mechanism_with_a_wrong_password(postfix_clean, mechanism, tlsimport):
    pf = postfix_clean
    with pytest.raises(AuthenticationError) as info:
        smtplug.sendmessage(
            message("wrong"),
            password=pf.password + "-wrong",
            mechanisms=[mechanism],
            **options(pf, tlsimport),
        )
    assert info.value.code == 535
    assert mechanism in info.value.diagnostic
    assert pf.password not in str(info.value)
    assert pf.messages() == []


def test_negotiation_picks_the_strongest_postfix_offers(postfix_clean):
    pf = postfix_clean
    offset = pf.log_offset()
    result = smtplug.sendmessage(
        message("negotiated"), password=pf.password, **options(pf, tlsimport=False)
    )
    assert result.accepted
    pf.wait_for_messages(1)
    # Postfix/Cyrus offers no -PLUS variant: SCRAM-SHA-256 is the strongest.
    assert "sasl_method=SCRAM-SHA-256," in log_since(pf, offset, "sasl_method=")
