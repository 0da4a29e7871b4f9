"""smtplug against a real Postfix on loopback: STARTTLS, implicit TLS, both backends.

The Postfix instance (tests/interop/postfix.sh) has a plain port offering
STARTTLS, a submission port where TLS is required, and an implicit-TLS port,
with a certificate from a throwaway CA, and delivers into one Maildir.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

import smtplug
from apis import both_apis
from smtplug import ConnectError, ResponseError, TLSError

pytestmark = [pytest.mark.interop, both_apis]

BACKENDS = ["stdlib", "pyopenssl"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = subject
    msg.set_content("First line.\n.A line starting with a dot.\nLast line.\n")
    return msg


def delivered(postfix, count=1):
    raw = postfix.wait_for_messages(count)
    return [email.message_from_bytes(m, policy=email.policy.default) for m in raw]


def test_starttls_on_the_plain_port(postfix_clean, backend):
    pf = postfix_clean
    result = smtplug.sendmessage(
        message(f"starttls {backend}"),
        servers=[pf.host],
        ports=[pf.plain_port],
        cafile=pf.ca,
        tls_backend=backend,
        timeout=30,
    )
    assert result == [] and result.accepted
    assert result.tls is not None and result.tls.verified and result.tls.backend == backend
    (got,) = delivered(pf)
    assert got["Subject"] == f"starttls {backend}"
    assert got["Return-Path"] == "<alice@example.com>"
    assert got["X-Original-To"] == "bob@example.org"
    body = got.get_content()
    assert ".A line starting with a dot." in body and "..A line" not in body


def test_starttls_by_host_name(postfix_clean, backend):
    pf = postfix_clean
    result = smtplug.sendmessage(
        message("by name"),
        servers=["localhost"],
        ports=[pf.plain_port],
        cafile=pf.ca,
        tls_backend=backend,
        timeout=30,
    )
    assert result.accepted and result.tls is not None


def test_submission_port_requires_tls(postfix_clean, backend):
    pf = postfix_clean
    common = dict(servers=[pf.host], ports=[pf.submission_port], cafile=pf.ca, timeout=30)
    # Without TLS, Postfix refuses the transaction.
    with pytest.raises(ResponseError) as info:
        smtplug.sendmessage(message("plain"), usetls=False, tls_backend=backend, **common)
    assert info.value.code == 530
    # With TLS the transaction starts; unauthenticated, the recipient is
    # refused (authentication comes with the SASL plugins).
    result = smtplug.sendmessage(message("tls"), tlspolicy="require", tls_backend=backend, **common)
    assert result.tls is not None and not result.accepted
    assert [(address, code) for address, code, _ in result] == [("bob@example.org", 554)]


def test_implicit_tls(postfix_clean, backend):
    pf = postfix_clean
    result = smtplug.sendmessage(
        message(f"implicit {backend}"),
        servers=[pf.host],
        ports=[pf.smtps_port],
        tlsimport=True,
        cafile=pf.ca,
        tls_backend=backend,
        timeout=30,
    )
    assert result.accepted and result.tls is not None and result.tls.verified
    (got,) = delivered(pf)
    assert got["Subject"] == f"implicit {backend}"


def test_client_certificate_is_trusted_by_postfix(postfix_clean, backend):
    pf = postfix_clean
    offset = pf.log_offset()
    result = smtplug.sendmessage(
        message("client cert"),
        servers=[pf.host],
        ports=[pf.smtps_port],
        tlsimport=True,
        cafile=pf.ca,
        client_cert=pf.client_cert,
        client_key=pf.client_key,
        tls_backend=backend,
        timeout=30,
    )
    assert result.accepted
    delivered(pf)
    pf.wait_for_log("Trusted TLS connection established", offset)


@pytest.mark.parametrize("tlsimport", [False, True], ids=["starttls", "implicit"])
def test_throwaway_ca_is_not_trusted_by_default(postfix_clean, backend, tlsimport):
    pf = postfix_clean
    with pytest.raises(ConnectError) as info:
        smtplug.sendmessage(
            message("untrusted"),
            servers=[pf.host],
            ports=[pf.smtps_port if tlsimport else pf.plain_port],
            tlsimport=tlsimport,
            tls_backend=backend,
            timeout=30,
        )
    error = info.value.failures[0].error
    assert isinstance(error, TLSError) and error.certificate
    assert pf.messages() == []


def test_refusals_from_a_real_server(postfix_clean, backend):
    pf = postfix_clean
    msg = message("refusals")
    del msg["To"]
    msg["To"] = f"ok@example.org, x@{pf.refused_domain}, y@{pf.tempfail_domain}"
    common = dict(servers=[pf.host], ports=[pf.plain_port], cafile=pf.ca, tls_backend=backend)
    result = smtplug.sendmessage(msg, **common)
    assert [(address, code) for address, code, _ in result] == [
        (f"x@{pf.refused_domain}", 550),
        (f"y@{pf.tempfail_domain}", 450),
    ]
    assert not result.accepted and pf.messages() == []
    result = smtplug.sendmessage(msg, atleastone=True, **common)
    assert result.accepted and result.recipients == ("ok@example.org",)
    (got,) = delivered(pf)
    assert got["X-Original-To"] == "ok@example.org"
