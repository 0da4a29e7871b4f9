"""smtplug.django.EmailBackend in real Django against the real Postfix.

STARTTLS with the harness's CA (use_tls), implicit TLS (use_ssl) with a client
certificate, AUTH as Django does it (username and password), a multipart
message with alternatives, attachments and non-ASCII text, Bcc, and refused
recipients; each checked in what arrived in the Maildir (and in Postfix's
Received header and log). The backends are configured as the installed Django
wants (a MAILERS entry on Django 6.1, keywords before); the EMAIL_* settings,
deprecated on 6.1, are tested on both, and MAILERS aliases with send_mail()
on 6.1. Django's deprecation warnings are errors, but for those Django gives
for the EMAIL_* settings.
"""

from __future__ import annotations

import email
import email.policy

import pytest

import django_settings
from django_settings import MAILERS_DJANGO, legacy, mailer

django_settings.configure()

from django.core import mail  # noqa: E402
from django.core.mail import EmailMessage, EmailMultiAlternatives  # noqa: E402
from django.test import override_settings  # noqa: E402

import smtplug  # noqa: E402
from smtplug.django import EmailBackend, RecipientsRefusedError  # noqa: E402

pytestmark = [pytest.mark.interop, *django_settings.deprecations_are_errors()]


def make_backend(**kwargs) -> EmailBackend:
    """A backend with these keywords, configured as the installed Django
    wants: a MAILERS entry's OPTIONS on Django 6.1, the keywords before."""
    if MAILERS_DJANGO:
        return mailer(**kwargs)
    return EmailBackend(**kwargs)


def arrived(pf, count: int = 1) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(raw, policy=email.policy.default)
        for raw in pf.wait_for_messages(count)
    ]


def simple(subject: str, **kwargs) -> EmailMessage:
    kwargs.setdefault("from_email", "alice@example.com")
    kwargs.setdefault("to", ["bob@example.org"])
    return EmailMessage(subject, "Sent by Django through smtplug.\n", **kwargs)


def test_starttls_with_cafile(postfix_clean):
    pf = postfix_clean
    backend = make_backend(
        host=pf.host, port=pf.plain_port, use_tls=True, timeout=30, options={"cafile": pf.ca}
    )
    assert backend.send_messages([simple("django starttls")]) == 1
    (got,) = arrived(pf)
    assert got["Subject"] == "django starttls"
    assert got["Return-Path"] == "<alice@example.com>"
    assert "using TLS" in got["Received"]


def test_starttls_without_the_ca_is_refused(postfix_clean):
    pf = postfix_clean
    backend = make_backend(host=pf.host, port=pf.plain_port, use_tls=True, timeout=30)
    with pytest.raises(smtplug.ConnectError) as info:
        backend.send_messages([simple("unverified")])
    assert any(
        isinstance(f.error, smtplug.TLSError) and f.error.certificate for f in info.value.failures
    )
    assert pf.messages() == []


def test_auth_over_starttls_from_django_settings(postfix_clean):
    pf = postfix_clean
    with (
        legacy(
            EMAIL_HOST=pf.host,
            EMAIL_PORT=pf.submission_port,
            EMAIL_HOST_USER=pf.user,
            EMAIL_HOST_PASSWORD=pf.password,
            EMAIL_USE_TLS=True,
            EMAIL_TIMEOUT=30,
        ),
        override_settings(SMTPLUG_OPTIONS={"cafile": pf.ca}),
    ):
        sent = mail.send_mail(
            "django auth", "After AUTH.\n", "alice@example.com", ["bob@example.org"]
        )
    assert sent == 1
    (got,) = arrived(pf)
    assert got["Subject"] == "django auth"
    assert f"Authenticated sender: {pf.user}" in got["Received"]


def test_auth_with_the_realm_and_a_wrong_password(postfix_clean):
    pf = postfix_clean
    common = dict(host=pf.host, port=pf.submission_port, use_tls=True, timeout=30)
    backend = make_backend(
        username=f"{pf.user}@{pf.realm}",
        password=pf.password,
        options={"cafile": pf.ca, "mechanisms": ["PLAIN"]},
        **common,
    )
    assert backend.send_messages([simple("realm")]) == 1
    arrived(pf)
    wrong = make_backend(
        username=pf.user, password=pf.password + "-wrong", options={"cafile": pf.ca}, **common
    )
    with pytest.raises(smtplug.AuthenticationError) as info:
        wrong.send_messages([simple("wrong")])
    assert info.value.code == 535 and pf.password not in str(info.value)
    silent = make_backend(
        username=pf.user,
        password=pf.password + "-wrong",
        fail_silently=True,
        options={"cafile": pf.ca},
        **common,
    )
    assert silent.send_messages([simple("wrong"), simple("wrong again")]) == 0
    assert len(pf.messages()) == 1


def test_implicit_tls_with_a_client_certificate_and_auth(postfix_clean):
    pf = postfix_clean
    offset = pf.log_offset()
    backend = make_backend(
        host=pf.host,
        port=pf.smtps_port,
        use_ssl=True,
        username=pf.user,
        password=pf.password,
        ssl_certfile=pf.client_cert,
        ssl_keyfile=pf.client_key,
        timeout=30,
        options={"cafile": pf.ca},
    )
    with backend:
        assert backend.send_messages([simple("ssl one")]) == 1
        assert backend.send_messages([simple("ssl two")]) == 1
    got = arrived(pf, 2)
    assert sorted(m["Subject"] for m in got) == ["ssl one", "ssl two"]
    assert all("using TLS" in m["Received"] for m in got)
    assert all(f"Authenticated sender: {pf.user}" in m["Received"] for m in got)
    pf.wait_for_log("Trusted TLS connection established", offset)


def test_alternatives_attachments_and_non_ascii(postfix_clean):
    pf = postfix_clean
    msg = EmailMultiAlternatives(
        "Grüße aus Zürich ☃",
        "Zoë's naïve café: 日本語.\n.A line starting with a dot.\n",
        "Zoë Müller <alice@example.com>",
        ["Jürgen Groß <bob@example.org>"],
    )
    msg.attach_alternative("<p>Zoë's <b>café</b></p>", "text/html")
    payload = bytes(range(256)) * 16
    msg.attach("blob.bin", payload, "application/octet-stream")
    msg.attach("notizen.txt", "Äpfel und Birnen\n", "text/plain")
    backend = make_backend(
        host=pf.host, port=pf.plain_port, use_tls=True, timeout=30, options={"cafile": pf.ca}
    )
    assert backend.send_messages([msg]) == 1
    (got,) = arrived(pf)
    assert got["Subject"] == "Grüße aus Zürich ☃"
    assert got["From"].addresses[0].display_name == "Zoë Müller"
    assert got["To"].addresses[0].display_name == "Jürgen Groß"
    assert got["To"].addresses[0].addr_spec == "bob@example.org"
    plain = got.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert plain == "Zoë's naïve café: 日本語.\n.A line starting with a dot.\n"
    assert got.get_body(("html",)).get_content().rstrip("\n") == "<p>Zoë's <b>café</b></p>"
    files = {part.get_filename(): part.get_content() for part in got.iter_attachments()}
    assert files["blob.bin"] == payload
    assert files["notizen.txt"].replace("\r\n", "\n") == "Äpfel und Birnen\n"


def test_bcc_is_delivered_but_never_shown(postfix_clean):
    pf = postfix_clean
    msg = simple("bcc", cc=["carol@example.org"], bcc=["secret@example.net"])
    backend = make_backend(
        host=pf.host, port=pf.plain_port, use_tls=True, timeout=30, options={"cafile": pf.ca}
    )
    assert backend.send_messages([msg]) == 1
    got = arrived(pf, 3)
    assert sorted(m["X-Original-To"] for m in got) == [
        "bob@example.org",
        "carol@example.org",
        "secret@example.net",
    ]
    postfix_added = {"return-path", "delivered-to", "x-original-to", "received"}
    for m in got:
        assert m["Bcc"] is None
        assert m["Cc"] == "carol@example.org"
        shown = [v for k, v in m.items() if k.lower() not in postfix_added]
        assert not any("secret" in str(v) for v in shown)
        assert "secret" not in m.get_content()


def test_a_refused_recipient(postfix_clean):
    pf = postfix_clean
    refused = f"nobody@{pf.refused_domain}"
    backend = make_backend(
        host=pf.host, port=pf.plain_port, use_tls=True, timeout=30, options={"cafile": pf.ca}
    )
    # One of two refused: sent to the other, and counted (Django's semantics).
    assert backend.send_messages([simple("partly", to=["bob@example.org", refused])]) == 1
    (got,) = arrived(pf)
    assert got["X-Original-To"] == "bob@example.org"
    pf.clear()
    # Every recipient refused: RecipientsRefusedError, nothing sent.
    with pytest.raises(RecipientsRefusedError) as info:
        backend.send_messages([simple("nobody", to=[refused])])
    assert info.value.code == 550 and info.value.permanent
    assert set(info.value.recipients) == {refused}
    assert info.value.recipients[refused][0] == 550
    # With fail_silently: not counted, and the rest of the batch goes.
    silent = make_backend(
        host=pf.host,
        port=pf.plain_port,
        use_tls=True,
        timeout=30,
        fail_silently=True,
        options={"cafile": pf.ca},
    )
    assert silent.send_messages([simple("nobody", to=[refused]), simple("after")]) == 1
    (got,) = arrived(pf)
    assert got["Subject"] == "after"
    # atleastone=False: one refusal and nothing is sent.
    strict = make_backend(
        host=pf.host,
        port=pf.plain_port,
        use_tls=True,
        timeout=30,
        options={"cafile": pf.ca, "atleastone": False},
    )
    pf.clear()
    with pytest.raises(RecipientsRefusedError):
        strict.send_messages([simple("strict", to=["bob@example.org", refused])])
    assert pf.messages() == []


if MAILERS_DJANGO:
    # Django 6.1's configuration (defined only where it exists: an interop
    # skip fails CI, and CI runs this on Python 3.12/3.13 with Django 6.1).

    def test_mailers_auth_over_starttls_and_implicit_tls_with_send_mail(postfix_clean):
        pf = postfix_clean
        offset = pf.log_offset()
        mailers = {
            "default": {
                "BACKEND": "smtplug.django.EmailBackend",
                "OPTIONS": {
                    "host": pf.host,
                    "port": pf.submission_port,
                    "username": pf.user,
                    "password": pf.password,
                    "use_tls": True,
                    "timeout": 30,
                    "options": {"cafile": pf.ca},
                },
            },
            "smtps": {
                "BACKEND": "smtplug.django.EmailBackend",
                "OPTIONS": {
                    "host": pf.host,
                    "port": pf.smtps_port,
                    "use_ssl": True,
                    "username": pf.user,
                    "password": pf.password,
                    "ssl_certfile": pf.client_cert,
                    "ssl_keyfile": pf.client_key,
                    "timeout": 30,
                    "options": {"cafile": pf.ca},
                },
            },
            "refusing": {
                "BACKEND": "smtplug.django.EmailBackend",
                "OPTIONS": {
                    "host": pf.host,
                    "port": pf.plain_port,
                    "use_tls": True,
                    "timeout": 30,
                    "fail_silently": True,
                    "options": {"cafile": pf.ca, "atleastone": False},
                },
            },
        }
        refused = f"nobody@{pf.refused_domain}"
        args = ("Through MAILERS.\n", "alice@example.com", ["bob@example.org"])
        with override_settings(MAILERS=mailers):
            assert mail.send_mail("mailers default", *args) == 1
            assert mail.send_mail("mailers smtps", *args, using="smtps") == 1
            # fail_silently from OPTIONS: every recipient refused counts zero.
            strict = simple("mailers refused", to=["bob@example.org", refused])
            assert strict.send(using="refusing") == 0
        got = {m["Subject"]: m for m in arrived(pf, 2)}
        assert set(got) == {"mailers default", "mailers smtps"}
        for m in got.values():
            assert "using TLS" in m["Received"]
            assert f"Authenticated sender: {pf.user}" in m["Received"]
        pf.wait_for_log("Trusted TLS connection established", offset)
        assert len(pf.messages()) == 2
