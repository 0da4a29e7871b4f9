"""The Postfix harness itself, proved with CPython's smtplib and ssl as the client.

These tests pin down what the throwaway Postfix of postfix.sh offers, so
that smtplug's own interop tests can rely on it: which port offers or
requires STARTTLS, which SASL mechanisms are advertised where, that the
throwaway CA verifies (and that nothing else does), the refusal domains,
and what a delivered message looks like in the Maildir.
"""

from __future__ import annotations

import base64
import email
import hashlib
import hmac
import secrets
import smtplib
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from email.policy import compat32

import pytest

from .postfix import Postfix

pytestmark = pytest.mark.interop

MECHANISMS = {"PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"}
TIMEOUT = 10


def _context(postfix: Postfix) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=postfix.ca)


@contextmanager
def _plain(postfix: Postfix, port: int, host: str = "localhost") -> Iterator[smtplib.SMTP]:
    """An EHLO'd connection to ``port`` (the TLS certificate names localhost)."""
    client = smtplib.SMTP(timeout=TIMEOUT)
    client.connect(postfix.host, port)
    # smtplib checks the certificate against the name it connected to.
    client._host = host  # type: ignore[attr-defined]
    try:
        client.ehlo("client.test")
        yield client
    finally:
        client.close()


@contextmanager
def _starttls(postfix: Postfix, port: int, host: str = "localhost") -> Iterator[smtplib.SMTP]:
    with _plain(postfix, port, host) as client:
        code, _ = client.starttls(context=_context(postfix))
        assert code == 220
        client.ehlo("client.test")
        yield client


@contextmanager
def _smtps(postfix: Postfix) -> Iterator[smtplib.SMTP_SSL]:
    client = smtplib.SMTP_SSL(
        "localhost", postfix.smtps_port, context=_context(postfix), timeout=TIMEOUT
    )
    try:
        client.ehlo("client.test")
        yield client
    finally:
        client.close()


def _mechanisms(client: smtplib.SMTP) -> set[str]:
    return set(client.esmtp_features.get("auth", "").split())


def _login(client: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    client.user, client.password = user, password
    method = getattr(client, "auth_" + mechanism.lower().replace("-", "_"))
    return client.auth(mechanism, method)


# -- TLS and AUTH on each port ---------------------------------------------


def test_plain_port_offers_starttls_and_auth_only_after_tls(postfix: Postfix) -> None:
    with _plain(postfix, postfix.plain_port) as client:
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.starttls(context=_context(postfix))[0] == 220
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert _mechanisms(client) == MECHANISMS


def test_certificate_names_ip_address_too(postfix: Postfix) -> None:
    with _starttls(postfix, postfix.plain_port, host="127.0.0.1") as client:
        assert client.noop()[0] == 250


def test_submission_port_requires_starttls(postfix: Postfix) -> None:
    with _plain(postfix, postfix.submission_port) as client:
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        code, text = client.mail("sender@example.org")
        assert code == 530, text
        assert b"STARTTLS" in text
        client.starttls(context=_context(postfix))
        client.ehlo("client.test")
        assert _mechanisms(client) == MECHANISMS


def test_submission_port_refuses_unauthenticated_senders(postfix_clean: Postfix) -> None:
    with _starttls(postfix_clean, postfix_clean.submission_port) as client:
        assert client.mail("sender@example.org")[0] == 250
        code, text = client.rcpt("someone@example.net")
        assert code == 554, text


def test_submission_port_accepts_after_tls_and_auth(postfix_clean: Postfix) -> None:
    with _starttls(postfix_clean, postfix_clean.submission_port) as client:
        client.login(postfix_clean.user, postfix_clean.password)
        refused = client.sendmail(
            "sender@example.org", ["someone@example.net"], b"Subject: submission\r\n\r\nhello\r\n"
        )
        assert refused == {}
    (message,) = postfix_clean.wait_for_messages(1)
    assert b"Subject: submission" in message


def test_smtps_port_verifies_with_the_throwaway_ca(postfix: Postfix) -> None:
    with _smtps(postfix) as client:
        assert _mechanisms(client) == MECHANISMS
        assert not client.has_extn("starttls")
        assert client.login(postfix.user, postfix.password)[0] == 235


def test_certificate_is_not_trusted_without_the_ca(postfix: Postfix) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        smtplib.SMTP_SSL(
            "localhost",
            postfix.smtps_port,
            context=ssl.create_default_context(),
            timeout=TIMEOUT,
        )
    with (
        _plain(postfix, postfix.plain_port) as client,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        client.starttls(context=ssl.create_default_context())


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
@pytest.mark.parametrize("form", ["alice", "alice@realm"])
def test_auth_mechanisms_accept_the_password(postfix: Postfix, mechanism: str, form: str) -> None:
    user = postfix.user if form == "alice" else f"{postfix.user}@{postfix.realm}"
    with _starttls(postfix, postfix.plain_port) as client:
        code, text = _login(client, mechanism, user, postfix.password)
        assert code == 235, text


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_mechanisms_refuse_a_wrong_password(postfix: Postfix, mechanism: str) -> None:
    with _starttls(postfix, postfix.plain_port) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            _login(client, mechanism, postfix.user, "not-" + postfix.password)
        assert raised.value.smtp_code == 535
        # The session goes on: the error limits are raised for tests.
        assert client.noop()[0] == 250


def _scram(client: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    """A minimal SCRAM client (RFC 5802/7677) over smtplib's docmd."""
    digest = hashlib.sha1 if mechanism == "SCRAM-SHA-1" else hashlib.sha256
    nonce = secrets.token_urlsafe(18)
    first_bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={nonce}"
    b64 = base64.b64encode
    code, reply = client.docmd("AUTH", f"{mechanism} {b64(b'n,,' + first_bare.encode()).decode()}")
    if code != 334:
        return code, reply
    server_first = base64.b64decode(reply).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    assert fields["r"].startswith(nonce)
    salted = hashlib.pbkdf2_hmac(
        digest().name, password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    without_proof = f"c={b64(b'n,,').decode()},r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(digest(client_key).digest(), auth_message, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{without_proof},p={b64(proof).decode()}"
    code, reply = client.docmd(b64(final.encode()).decode())
    if code == 334:
        server_key = hmac.new(salted, b"Server Key", digest).digest()
        expected = b64(hmac.new(server_key, auth_message, digest).digest()).decode()
        assert base64.b64decode(reply).decode() == f"v={expected}"
        code, reply = client.docmd("")
    return code, reply


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_mechanisms_work(postfix: Postfix, mechanism: str) -> None:
    with _smtps(postfix) as client:
        code, text = _scram(client, mechanism, postfix.user, postfix.password)
        assert code == 235, text
    with _smtps(postfix) as client:
        code, text = _scram(client, mechanism, postfix.user, "wrong")
        assert code == 535, text


def test_digest_md5_works(postfix: Postfix) -> None:
    from puresasl.client import SASLClient  # smtplug's own dependency

    with _smtps(postfix) as client:
        sasl = SASLClient(
            "localhost",
            service="smtp",
            mechanism="DIGEST-MD5",
            username=postfix.user,
            password=postfix.password,
        )
        code, reply = client.docmd("AUTH", "DIGEST-MD5")
        while code == 334:
            answer = sasl.process(base64.b64decode(reply)) or b""
            code, reply = client.docmd(base64.b64encode(answer).decode())
        assert code == 235, reply


# -- refusals and delivery ---------------------------------------------------


@pytest.mark.parametrize(
    ("domain_attr", "code", "enhanced"),
    [("refused_domain", 550, b"5.1.1"), ("tempfail_domain", 450, b"4.2.0")],
)
def test_refused_recipients(postfix: Postfix, domain_attr: str, code: int, enhanced: bytes) -> None:
    address = f"x@{getattr(postfix, domain_attr)}"
    with _plain(postfix, postfix.plain_port) as client:
        assert client.mail("sender@example.org")[0] == 250
        reply = client.rcpt(address)
        assert reply[0] == code, reply
        assert reply[1].startswith(enhanced), reply
        assert client.rcpt("fine@example.net")[0] == 250


def _parse(raw: bytes) -> tuple[Message, bytes]:
    _head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return email.message_from_bytes(raw, policy=compat32), body


def test_delivered_message_in_maildir(postfix_clean: Postfix) -> None:
    body = b"First line\r\n.starts with a dot\r\n..two dots\r\n.\r\nlast line\r\n"
    message = (
        b"From: Sender <sender@example.org>\r\nTo: rcpt@example.net\r\n"
        b"Subject: harness delivery\r\n\r\n" + body
    )
    with _starttls(postfix_clean, postfix_clean.plain_port) as client:
        client.login(postfix_clean.user, postfix_clean.password)
        refused = client.sendmail(
            "envelope-sender@example.org",
            ["rcpt@example.net", "x@" + postfix_clean.refused_domain],
            message,
        )
    assert set(refused) == {"x@" + postfix_clean.refused_domain}
    (raw,) = postfix_clean.wait_for_messages(1)
    parsed, delivered_body = _parse(raw)
    assert raw.startswith(b"Return-Path: <envelope-sender@example.org>\n")
    assert parsed["X-Original-To"] == "rcpt@example.net"
    assert parsed["Delivered-To"] == "rcpt@example.net"
    assert parsed["Subject"] == "harness delivery"
    # Maildir files have LF line ends; smtplib's dot-stuffing was undone.
    assert delivered_body == body.replace(b"\r\n", b"\n")


def test_each_recipient_gets_a_copy_and_clear_empties(postfix_clean: Postfix) -> None:
    recipients = ["one@example.net", "two@other.example"]
    with _plain(postfix_clean, postfix_clean.plain_port) as client:
        client.sendmail("", recipients, b"Subject: two\r\n\r\nbody\r\n")
    delivered = postfix_clean.wait_for_messages(2)
    assert len(delivered) == 2
    assert {_parse(raw)[0]["Delivered-To"] for raw in delivered} == set(recipients)
    assert all(raw.startswith(b"Return-Path: <>\n") for raw in delivered)
    postfix_clean.clear()
    assert postfix_clean.messages() == []


# -- the client certificate ----------------------------------------------------


def test_client_certificate_is_signed_by_the_ca(postfix: Postfix) -> None:
    client_context = ssl.create_default_context(cafile=postfix.ca)
    client_context.load_cert_chain(postfix.client_cert, postfix.client_key)
    # A TLS handshake in memory against a server that requires a client
    # certificate from the throwaway CA: it succeeds only with a CA-signed one.
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(postfix.server_cert, postfix.server_key)
    server_context.load_verify_locations(postfix.ca)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname="localhost")
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    peer = server.getpeercert()
    assert peer is not None
    subject = peer["subject"]
    assert isinstance(subject, tuple)
    assert ("commonName", postfix.user) in [pair for rdn in subject for pair in rdn]


def test_smtps_port_trusts_the_client_certificate(postfix: Postfix) -> None:
    context = _context(postfix)
    context.load_cert_chain(postfix.client_cert, postfix.client_key)
    before = postfix.log.read_bytes().count(b"Trusted TLS connection established")
    with smtplib.SMTP_SSL("localhost", postfix.smtps_port, context=context, timeout=TIMEOUT) as c:
        assert c.noop()[0] == 250
    # Postfix logs "Trusted" when the client's certificate verified against
    # smtpd_tls_CAfile (the smtps service asks for one).
    deadline = time.monotonic() + TIMEOUT
    while postfix.log.read_bytes().count(b"Trusted TLS connection established") == before:
        assert time.monotonic() < deadline, postfix.log_tail()
        time.sleep(0.02)
