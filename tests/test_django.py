"""smtplug.django.EmailBackend in real Django, against smtplug.testing.ScriptedServer.

Django is configured once with tests/django_settings.py, in the configuration
the installed Django wants: MAILERS on Django 6.1 and later (each test makes
its mailer from a MAILERS entry with its server's host and port), EMAIL_*
settings before. The EMAIL_* configuration, deprecated on Django 6.1, is
tested on both (``legacy``). Every Django deprecation warning is an error
here, except the ones ``legacy`` expects from Django itself.
"""

from __future__ import annotations

import email
import email.policy
import logging
import os
import subprocess
import sys
import threading
import warnings

import django
import django.utils.deprecation
import pytest

import django_settings
from django_settings import MAILERS_DJANGO, legacy, mailer

django_settings.configure()

from django.core import mail  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.mail import EmailMessage, EmailMultiAlternatives  # noqa: E402
from django.core.mail.backends.smtp import EmailBackend as DjangoSMTPBackend  # noqa: E402
from django.test import override_settings  # noqa: E402

import smtplug  # noqa: E402
from smtplug.django import EmailBackend, InvalidMailerError, RecipientsRefusedError  # noqa: E402
from smtplug.testing import ScriptedServer  # noqa: E402
from tlsfixtures import server_context, tls_ca, write_files  # noqa: E402

pytestmark = django_settings.deprecations_are_errors()

needs_mailers = pytest.mark.skipif(
    not MAILERS_DJANGO,
    reason="Django < 6.1 has no MAILERS (CI runs this on Python 3.12/3.13, with Django 6.1)",
)

DJANGO_TLS_ERROR = (
    "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set one of those settings to True."
)


def backend_for(server: ScriptedServer, **kwargs) -> EmailBackend:
    """A backend for ``server``, configured as the installed Django wants: a
    MAILERS entry's OPTIONS on Django 6.1, the keywords before."""
    kwargs.setdefault("timeout", 10)
    if MAILERS_DJANGO:
        return mailer(host="127.0.0.1", port=server.port, **kwargs)
    return EmailBackend(host="127.0.0.1", port=server.port, **kwargs)


def make_message(subject: str = "Hello", **kwargs) -> EmailMessage:
    kwargs.setdefault("from_email", "alice@example.com")
    kwargs.setdefault("to", ["bob@example.org"])
    return EmailMessage(subject, kwargs.pop("body", "The body.\n"), **kwargs)


def parsed(transaction) -> email.message.EmailMessage:
    """The message as a server stores it (line ends as LF, as in a Maildir)."""
    content = transaction.content.replace(b"\r\n", b"\n")
    return email.message_from_bytes(content, policy=email.policy.default)


def rcpts(transaction) -> list[str]:
    return [c.args for c in transaction.rcpts]


def delivered(server: ScriptedServer) -> list:
    """Transactions whose whole message reached the server (which accepts it
    unless the test's script refuses the end)."""
    return [t for s in server.sessions for t in s.transactions if t.complete]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    certs = tls_ca()
    directory = tmp_path_factory.mktemp("django-tls")
    return write_files(certs, directory).cafile, server_context(certs.server, directory)


# --- import isolation --------------------------------------------------------------------


def test_importing_smtplug_never_imports_django():
    code = (
        "import importlib, pkgutil, sys\n"
        "import smtplug, smtplug_plugins\n"
        "for pkg in (smtplug, smtplug_plugins):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        # smtplug.__main__ runs the CLI when imported.
        "        if m.name not in ('smtplug.django', 'smtplug.__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'django' or n.startswith('django.')"
        " or n == 'smtplug.django')\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --- the EMAIL_* settings and keywords (Django < 6.1; deprecated on 6.1) -------------------


def test_use_tls_and_use_ssl_together_is_djangos_value_error():
    with legacy(), pytest.raises(ValueError) as info:
        EmailBackend(use_tls=True, use_ssl=True)
    assert str(info.value) == DJANGO_TLS_ERROR
    with (
        legacy(EMAIL_USE_TLS=True, EMAIL_USE_SSL=True),
        pytest.raises(ValueError, match="mutually exclusive"),
    ):
        EmailBackend()


def test_django_settings_are_mapped_to_smtplug_options():
    with legacy(
        EMAIL_HOST="mail.example.net",
        EMAIL_PORT=2525,
        EMAIL_HOST_USER="alice",
        EMAIL_HOST_PASSWORD="secret",
        EMAIL_USE_TLS=True,
        EMAIL_TIMEOUT=12,
        EMAIL_SSL_CERTFILE="/etc/client.pem",
        EMAIL_SSL_KEYFILE="/etc/client.key",
    ):
        backend = EmailBackend()
    assert (backend.host, backend.port, backend.username) == ("mail.example.net", 2525, "alice")
    options = backend.client_options()
    assert options["servers"] == "mail.example.net" and options["ports"] == 2525
    assert options["usetls"] is True and options["tlsimport"] is False
    assert options["tlspolicy"] == "require"  # EMAIL_USE_TLS: STARTTLS or nothing
    assert options["timeout"] == 12
    assert options["client_cert"] == "/etc/client.pem"
    assert options["client_key"] == "/etc/client.key"
    assert (options["username"], options["password"]) == ("alice", "secret")
    assert backend.message_options() == {"atleastone": True}


def test_keywords_win_over_settings_and_defaults_are_plain_smtp():
    with legacy(EMAIL_HOST="ignored.example", EMAIL_USE_SSL=True):
        backend = EmailBackend(host="kw.example", port=465, timeout=3)
        assert backend.client_options()["tlsimport"] is True
        assert backend.client_options()["usetls"] is False
    with legacy():
        plain = EmailBackend().client_options()  # Django's defaults
    assert plain["servers"] == "localhost" and plain["ports"] == 25
    assert plain["usetls"] is False and plain["tlsimport"] is False
    assert "tlspolicy" not in plain and "timeout" not in plain
    assert "username" not in plain and "client_cert" not in plain
    assert backend.host == "kw.example" and backend.port == 465 and backend.timeout == 3


def test_username_without_password_does_not_authenticate():
    # Django logs in only when both are set.
    with legacy():
        assert "username" not in EmailBackend(username="alice", password="").client_options()
        assert "username" not in EmailBackend(username="", password="x").client_options()


def test_smtplug_options_setting_and_keyword():
    settings_options = {"tlspolicy": "opportunistic", "cafile": "/ca.pem", "atleastone": False}
    with legacy(), override_settings(SMTPLUG_OPTIONS=settings_options):
        backend = EmailBackend(use_tls=True)
        # Merged over the mapped ones: the setting's tlspolicy wins.
        assert backend.client_options()["tlspolicy"] == "opportunistic"
        assert backend.client_options()["cafile"] == "/ca.pem"
        assert "atleastone" not in backend.client_options()
        assert backend.message_options() == {"atleastone": False}
        # options= is used instead of the setting, as every keyword is.
        other = EmailBackend(use_tls=True, options={"tls_backend": "pyopenssl", "queue": True})
        assert other.client_options()["tlspolicy"] == "require"
        assert other.client_options()["tls_backend"] == "pyopenssl"
        assert "cafile" not in other.client_options()
        assert other.message_options() == {"atleastone": True, "queue": True}


def test_unknown_smtplug_options_are_an_error():
    with legacy(), pytest.raises(smtplug.InvalidInputError, match="tls_polcy"):
        EmailBackend(options={"tls_polcy": "require"})
    with (
        legacy(),
        override_settings(SMTPLUG_OPTIONS={"bogus": 1}),
        pytest.raises(smtplug.InvalidInputError, match=r"SMTPLUG_OPTIONS.*bogus"),
    ):
        EmailBackend()
    with legacy(), pytest.raises(smtplug.InvalidInputError, match="mapping"):
        EmailBackend(options=["tlspolicy"])  # type: ignore[arg-type]
    # Even with fail_silently: a misspelt option is a configuration error.
    with legacy(), pytest.raises(smtplug.InvalidInputError):
        EmailBackend(fail_silently=True, options={"mechanism": ["PLAIN"]})


def test_bad_option_value_fails_open_or_is_silent():
    backend = backend_for_nothing(options={"tlspolicy": "no-such-policy"})
    with pytest.raises(smtplug.SMTPError):
        backend.open()
    assert backend.connection is None
    silent = backend_for_nothing(fail_silently=True, options={"tlspolicy": "no-such-policy"})
    assert silent.open() is None
    assert silent.send_messages([make_message()]) == 0


def backend_for_nothing(**kwargs) -> EmailBackend:
    """A backend for localhost:25 (which it never reaches), configured as
    the installed Django wants."""
    if MAILERS_DJANGO:
        return mailer(host="localhost", **kwargs)
    return EmailBackend(**kwargs)


def test_fail_silently_is_the_backends_own_attribute():
    # Django 6.1 deprecates BaseEmailBackend's fail_silently (passing it to
    # BaseEmailBackend.__init__, reading it from there): a backend keeps its own.
    with legacy():
        for backend in (EmailBackend(fail_silently=True), EmailBackend()):
            assert vars(backend)["fail_silently"] is backend.fail_silently
        assert EmailBackend(fail_silently=True).fail_silently is True
        assert EmailBackend().fail_silently is False


def test_deprecated_configuration_warns_as_djangos_own_backend_does():
    """With the EMAIL_* settings on Django 6.1, the backend gives exactly the
    warnings Django's SMTP backend gives in its place (made directly, by
    get_connection(), with fail_silently); before 6.1, none."""
    email_settings = {
        "EMAIL_HOST": "mail.example.net",
        "EMAIL_PORT": 2525,
        "EMAIL_HOST_USER": "alice",
        "EMAIL_HOST_PASSWORD": "secret",
        "EMAIL_TIMEOUT": 12,
    }

    def warnings_of(backend_path: str) -> list[tuple[type[Warning], str, str]]:
        backend_class = (
            EmailBackend if backend_path == django_settings.BACKEND else DjangoSMTPBackend
        )
        # A fresh settings object each time: Django caches what was read.
        with (
            legacy(**email_settings, EMAIL_BACKEND=backend_path),
            warnings.catch_warnings(record=True) as caught,  # not setting them
        ):
            warnings.simplefilter("always")
            direct = backend_class(fail_silently=True, timeout=5)
            assert direct.fail_silently is True and direct.host == "mail.example.net"
            assert mail.get_connection(fail_silently=True).fail_silently is True
            assert backend_class(username="bob").port == 2525
        return [(w.category, str(w.message), os.path.basename(w.filename)) for w in caught]

    ours = warnings_of(django_settings.BACKEND)
    djangos = warnings_of("django.core.mail.backends.smtp.EmailBackend")
    assert ours == djangos
    if MAILERS_DJANGO:
        # Django warns when a backend is made directly and at get_connection(),
        # each pointing at the caller; nothing for reading the settings.
        assert [message.split(".")[0] for _, message, _ in ours] == [
            "Directly creating EmailBackend instances is deprecated",
            "get_connection() is deprecated",
            "Directly creating EmailBackend instances is deprecated",
        ]
        assert {filename for _, _, filename in ours} == {"test_django.py"}
    else:
        assert ours == []


# --- MAILERS (Django 6.1) ------------------------------------------------------------------


@needs_mailers
def test_mailers_options_are_mapped_to_smtplug_options():
    backend = mailer(
        "outbound",
        host="mail.example.net",
        port=2525,
        username="alice",
        password="secret",
        use_tls=True,
        timeout=12,
        ssl_certfile="/etc/client.pem",
        ssl_keyfile="/etc/client.key",
        fail_silently=True,
        options={"tls_backend": "pyopenssl", "atleastone": False},
    )
    assert isinstance(backend, EmailBackend) and backend.alias == "outbound"
    assert (backend.host, backend.port, backend.username) == ("mail.example.net", 2525, "alice")
    assert backend.fail_silently is True
    options = backend.client_options()
    assert options["servers"] == "mail.example.net" and options["ports"] == 2525
    assert options["usetls"] is True and options["tlsimport"] is False
    assert options["tlspolicy"] == "require"
    assert options["timeout"] == 12
    assert options["client_cert"] == "/etc/client.pem"
    assert options["client_key"] == "/etc/client.key"
    assert (options["username"], options["password"]) == ("alice", "secret")
    assert options["tls_backend"] == "pyopenssl"
    assert backend.message_options() == {"atleastone": False}


@needs_mailers
def test_mailers_defaults_are_djangos():
    # Django's SMTP backend's defaults for its OPTIONS; no setting is read.
    plain = mailer(host="mail.example.net")
    assert plain.port == 25 and plain.fail_silently is False
    options = plain.client_options()
    assert options["usetls"] is False and options["tlsimport"] is False
    assert "tlspolicy" not in options and "timeout" not in options
    assert "username" not in options and "client_cert" not in options
    assert mailer(host="h", use_tls=True).port == 587
    assert mailer(host="h", use_ssl=True).port == 465
    assert mailer(host="h", use_ssl=True).client_options()["tlsimport"] is True
    for backend, django_backend in (
        (mailer(host="h"), DjangoSMTPBackend(alias="x", host="h")),
        (mailer(host="h", use_tls=True), DjangoSMTPBackend(alias="x", host="h", use_tls=True)),
    ):
        names = ("port", "username", "password", "use_tls", "use_ssl", "timeout")
        assert [getattr(backend, n) for n in names] == [getattr(django_backend, n) for n in names]


@needs_mailers
def test_mailers_configuration_errors_are_djangos_invalid_mailer():
    with pytest.raises(InvalidMailerError, match=r"MAILERS\['bad'\]: OPTIONS must define 'host'"):
        mailer("bad")
    with pytest.raises(InvalidMailerError) as info:
        mailer("bad", host="h", use_tls=True, use_ssl=True)
    assert info.value.diagnostic == (
        "MAILERS['bad']: The 'use_ssl' and 'use_tls' OPTIONS are incompatible. "
        "Set at most one of them to True."
    )
    # Every one of these is Django's InvalidMailer (an ImproperlyConfigured)
    # and smtplug's InvalidInputError (a ValueError).
    assert isinstance(info.value, mail.InvalidMailer)
    assert isinstance(info.value, ImproperlyConfigured)
    assert isinstance(info.value, smtplug.InvalidInputError)
    assert isinstance(info.value, ValueError)
    # An OPTIONS name neither Django's backend nor smtplug's takes.
    with pytest.raises(InvalidMailerError, match=r"MAILERS\['bad'\]: Unknown options 'bogus'"):
        mailer("bad", host="h", bogus=1)
    # A misspelt smtplug option, even with fail_silently.
    with pytest.raises(InvalidMailerError, match=r"MAILERS\['bad'\].*'options'.*tls_polcy"):
        mailer("bad", host="h", fail_silently=True, options={"tls_polcy": "require"})
    with pytest.raises(InvalidMailerError, match="mapping"):
        mailer("bad", host="h", options=["tlspolicy"])


@needs_mailers
def test_mailers_smtplug_options_setting_when_the_entry_has_none():
    with override_settings(SMTPLUG_OPTIONS={"cafile": "/ca.pem", "queue": True}):
        assert mailer(host="h").client_options()["cafile"] == "/ca.pem"
        assert mailer(host="h").message_options() == {"atleastone": True, "queue": True}
        # The entry's options are used instead of the setting.
        chosen = mailer(host="h", options={"tls_backend": "pyopenssl"})
        assert "cafile" not in chosen.client_options()
    with (
        override_settings(SMTPLUG_OPTIONS={"bogus": 1}),
        pytest.raises(InvalidMailerError, match=r"SMTPLUG_OPTIONS.*bogus"),
    ):
        mailer(host="h")


@needs_mailers
def test_a_directly_made_backend_where_mailers_is_defined_is_a_configuration_error():
    # Django's own backend made so reads EMAIL_HOST_USER, which Django then
    # refuses (AttributeError): here an InvalidMailerError, after Django's warning.
    with (
        pytest.warns(django.utils.deprecation.RemovedInDjango2028Warning, match="Directly"),
        pytest.raises(InvalidMailerError, match=r"EMAIL_HOST_USER.*MAILERS is defined"),
    ):
        EmailBackend(host="127.0.0.1", port=25)


# --- open, close, count -------------------------------------------------------------------


def test_send_messages_opens_and_closes_its_own_connection():
    with ScriptedServer() as server:
        backend = backend_for(server)
        assert backend.send_messages([make_message("one"), make_message("two")]) == 2
        assert backend.connection is None
        server.wait_idle()
    (session,) = server.sessions
    one = ["MAIL", "RCPT", "DATA", "."]
    assert session.verbs == ["EHLO", *one, *one, "QUIT"]
    assert [parsed(t)["Subject"] for t in session.transactions] == ["one", "two"]


def test_open_returns_true_then_false_and_an_open_connection_stays_open():
    with ScriptedServer() as server:
        backend = backend_for(server)
        assert backend.open() is True
        assert backend.open() is False
        assert backend.send_messages([make_message("one")]) == 1
        assert backend.send_messages([make_message("two")]) == 1
        assert backend.connection is not None and backend.connection.connected
        assert "QUIT" not in server.sessions[0].verbs
        backend.close()
        assert backend.connection is None
        backend.close()  # twice is fine
        server.wait_idle()
    assert server.connections == 1
    assert server.sessions[0].verbs[-1] == "QUIT"
    assert len(server.sessions[0].transactions) == 2


def test_context_manager_keeps_one_connection():
    with ScriptedServer() as server:
        with backend_for(server) as backend:
            assert backend.send_messages([make_message("a")]) == 1
            assert backend.send_messages([make_message("b"), make_message("c")]) == 2
        assert backend.connection is None
        server.wait_idle()
    assert server.connections == 1
    assert len(delivered(server)) == 3


def test_nothing_to_send_and_messages_without_recipients():
    with ScriptedServer() as server:
        backend = backend_for(server)
        assert backend.send_messages([]) == 0
        assert server.connections == 0
        nobody = make_message("nobody", to=[])
        assert backend.send_messages([nobody, make_message("somebody"), nobody]) == 1
        server.wait_idle()
    assert [parsed(t)["Subject"] for t in delivered(server)] == ["somebody"]


def test_send_mail_through_the_email_backend_setting():
    with (
        ScriptedServer() as server,
        legacy(EMAIL_HOST="127.0.0.1", EMAIL_PORT=server.port, EMAIL_TIMEOUT=10),
    ):
        assert isinstance(mail.get_connection(), EmailBackend)
        sent = mail.send_mail("via send_mail", "Body.\n", "alice@example.com", ["bob@example.org"])
        assert sent == 1
        server.wait_idle()
    (t,) = delivered(server)
    assert parsed(t)["Subject"] == "via send_mail"


@needs_mailers
def test_send_mail_through_mailers_default_and_using():
    with ScriptedServer() as default, ScriptedServer() as other:
        entries = {
            alias: {
                "BACKEND": "smtplug.django.EmailBackend",
                "OPTIONS": {"host": "127.0.0.1", "port": server.port, "timeout": 10},
            }
            for alias, server in (("default", default), ("other", other))
        }
        with override_settings(MAILERS=entries):
            assert isinstance(mail.mailers.default, EmailBackend)
            args = ("Body.\n", "alice@example.com", ["bob@example.org"])
            assert mail.send_mail("to default", *args) == 1
            assert mail.send_mail("to other", *args, using="other") == 1
            assert make_message("message.send").send(using="other") == 1
        default.wait_idle()
        other.wait_idle()
    assert [parsed(t)["Subject"] for t in delivered(default)] == ["to default"]
    assert [parsed(t)["Subject"] for t in delivered(other)] == ["to other", "message.send"]


def test_neither_tls_setting_is_plain_smtp_even_when_starttls_is_offered():
    with ScriptedServer(capabilities=["STARTTLS", "8BITMIME"]) as server:
        assert backend_for(server).send_messages([make_message()]) == 1
        server.wait_idle()
    assert "STARTTLS" not in server.sessions[0].verbs
    assert not server.sessions[0].tls


# --- envelope, Bcc, content ----------------------------------------------------------------


def test_envelope_from_from_email_and_recipients_to_cc_bcc_without_bcc_transmitted():
    msg = make_message(
        "bcc",
        from_email="Alice <alice@example.com>",
        to=["Bob <bob@example.org>"],
        cc=["carol@example.org"],
        bcc=["secret@example.net"],
    )
    with ScriptedServer() as server:
        assert backend_for(server).send_messages([msg]) == 1
        server.wait_idle()
    (t,) = delivered(server)
    assert t.mail is not None and t.mail.args.startswith("FROM:<alice@example.com>")
    assert rcpts(t) == [
        "TO:<bob@example.org>",
        "TO:<carol@example.org>",
        "TO:<secret@example.net>",
    ]
    assert b"secret@example.net" not in t.content
    assert b"bcc:" not in t.content.lower()
    got = parsed(t)
    assert got["To"] == "Bob <bob@example.org>" and got["Cc"] == "carol@example.org"
    assert got["Sender"] is None  # From is the envelope's sender: nothing added


def test_non_ascii_subject_body_and_display_names():
    msg = make_message(
        "Grüße, ☃",
        body="Zoë says: naïve café, 日本語.\n",
        from_email="Zoë Müller <zoe@example.com>",
        to=["Jürgen <j@example.org>"],
    )
    with ScriptedServer() as server:
        assert backend_for(server).send_messages([msg]) == 1
        server.wait_idle()
    (t,) = delivered(server)
    got = parsed(t)
    assert got["Subject"] == "Grüße, ☃"
    assert got["From"].addresses[0].display_name == "Zoë Müller"
    assert got["To"].addresses[0].display_name == "Jürgen"
    assert got.get_content() == "Zoë says: naïve café, 日本語.\n"
    assert got.get_content_charset() == "utf-8"


def test_charset_follows_default_charset_and_message_encoding():
    with ScriptedServer() as server, override_settings(DEFAULT_CHARSET="iso-8859-1"):
        assert backend_for(server).send_messages([make_message("latin", body="café\n")]) == 1
        msg = make_message("koi8", body="привет\n")
        msg.encoding = "koi8-r"
        assert backend_for(server).send_messages([msg]) == 1
        server.wait_idle()
    latin, koi8 = (parsed(t) for t in delivered(server))
    assert latin.get_content_charset() == "iso-8859-1" and latin.get_content() == "café\n"
    assert koi8.get_content_charset() == "koi8-r" and koi8.get_content() == "привет\n"


def test_alternatives_and_attachments():
    msg = EmailMultiAlternatives("multi", "plain text\n", "alice@example.com", ["bob@example.org"])
    msg.attach_alternative("<p>html <b>text</b></p>", "text/html")
    payload = bytes(range(256)) * 4
    msg.attach("data.bin", payload, "application/octet-stream")
    msg.attach("notes.txt", "some notes\n", "text/plain")
    with ScriptedServer() as server:
        assert backend_for(server).send_messages([msg]) == 1
        server.wait_idle()
    (t,) = delivered(server)
    got = parsed(t)
    assert got.get_content_type() == "multipart/mixed"
    assert got.get_body(("plain",)).get_content() == "plain text\n"
    # (Django 6 builds the part with set_content, which ends it with a newline.)
    assert got.get_body(("html",)).get_content().rstrip("\n") == "<p>html <b>text</b></p>"
    files = {part.get_filename(): part.get_content() for part in got.iter_attachments()}
    assert files == {"data.bin": payload, "notes.txt": "some notes\n"}


def test_a_body_line_starting_with_from_is_not_mangled():
    msg = make_message("from", body="From here on.\n.leading dot\n")
    with ScriptedServer() as server:
        assert backend_for(server).send_messages([msg]) == 1
        server.wait_idle()
    assert parsed(delivered(server)[0]).get_content() == "From here on.\n.leading dot\n"


def test_non_ascii_local_part_is_refused_before_sending():
    # Django writes it as an encoded word, which no address may hold.
    msg = make_message(to=["jürgen@example.org"])
    with ScriptedServer() as server:
        with pytest.raises(smtplug.InvalidInputError):
            backend_for(server).send_messages([msg])
        if django.VERSION >= (6, 0):
            # Django 6 refuses it as it makes the envelope (prep_address), a
            # ValueError whatever fail_silently says; so does the backend.
            with pytest.raises(smtplug.InvalidInputError):
                backend_for(server, fail_silently=True).send_messages([msg])
        else:
            assert backend_for(server, fail_silently=True).send_messages([msg]) == 0
        server.wait_idle()
    assert delivered(server) == []


def test_malformed_address_is_a_value_error_even_with_fail_silently():
    msg = make_message(to=["not an address@@"])
    with ScriptedServer() as server:
        with pytest.raises(ValueError) as info:
            backend_for(server, fail_silently=True).send_messages([msg])
        server.wait_idle()
    assert isinstance(info.value, smtplug.InvalidInputError)
    assert delivered(server) == []


# --- refused recipients --------------------------------------------------------------------


def test_one_refused_recipient_of_several_still_sends_and_counts(caplog):
    msg = make_message(to=["bob@example.org", "nobody@example.org", "carol@example.org"])
    with ScriptedServer({("RCPT", 2): b"550 5.1.1 No such user\r\n"}) as server:
        with caplog.at_level(logging.WARNING, logger="smtplug.django"):
            assert backend_for(server).send_messages([msg]) == 1
        server.wait_idle()
    (t,) = delivered(server)
    assert len(t.rcpts) == 3
    assert "nobody@example.org: 550 5.1.1 No such user" in caplog.text


def test_every_recipient_refused_raises_and_is_not_counted():
    refuse = {"RCPT": b"550 5.1.1 No such user\r\n"}
    msg = make_message(to=["x@example.org", "y@example.org"])
    with ScriptedServer(refuse) as server:
        with pytest.raises(RecipientsRefusedError) as info:
            backend_for(server).send_messages([msg])
        server.wait_idle()
    err = info.value
    assert isinstance(err, smtplug.SMTPError) and err.code == 550 and err.permanent
    assert err.recipients == {
        "x@example.org": (550, "5.1.1 No such user"),
        "y@example.org": (550, "5.1.1 No such user"),
    }
    assert delivered(server) == []
    assert "DATA" not in server.sessions[0].verbs


def test_every_recipient_refused_with_fail_silently_counts_zero_and_goes_on():
    # Only the first message's RCPT is refused; the second is sent.
    with ScriptedServer({("RCPT", 1): b"451 4.3.0 Try later\r\n"}) as server:
        backend = backend_for(server, fail_silently=True)
        assert backend.send_messages([make_message("refused"), make_message("sent")]) == 1
        server.wait_idle()
    assert [parsed(t)["Subject"] for t in delivered(server)] == ["sent"]
    assert server.connections == 1


def test_atleastone_false_sends_nothing_when_one_is_refused():
    msg = make_message(to=["bob@example.org", "nobody@example.org"])
    with ScriptedServer({("RCPT", 2): b"550 5.1.1 No such user\r\n"}) as server:
        backend = backend_for(server, options={"atleastone": False})
        with pytest.raises(RecipientsRefusedError) as info:
            backend.send_messages([msg])
        server.wait_idle()
    assert info.value.recipients == {"nobody@example.org": (550, "5.1.1 No such user")}
    assert delivered(server) == []


def test_transient_refusal_code_wins():
    msg = make_message(to=["a@example.org", "b@example.org"])
    script = {("RCPT", 1): b"550 5.1.1 No\r\n", ("RCPT", 2): b"452 4.2.2 Full\r\n"}
    with ScriptedServer(script) as server, pytest.raises(RecipientsRefusedError) as info:
        backend_for(server).send_messages([msg])
    assert info.value.code == 452 and info.value.transient


# --- failures and fail_silently ------------------------------------------------------------


def test_connection_failure_raises_or_is_silent_and_stops_the_batch():
    with ScriptedServer(greeting=b"554 5.3.2 Go away\r\n") as server:
        with pytest.raises(smtplug.ConnectError):
            backend_for(server).send_messages([make_message()])
        assert server.connections == 1
        silent = backend_for(server, fail_silently=True)
        batch = [make_message("1"), make_message("2"), make_message("3")]
        assert silent.send_messages(batch) == 0
        server.wait_idle()
    # The batch stopped at the failed connection, as Django's open() failing does.
    assert server.connections == 2
    assert silent.connection is None


def test_refused_message_with_fail_silently_counts_zero_then_the_next_goes():
    with ScriptedServer({(".", 1): b"554 5.7.1 Spam\r\n"}) as server:
        backend = backend_for(server)
        with pytest.raises(smtplug.ResponseError) as info:
            backend.send_messages([make_message("spam")])
        assert info.value.code == 554
        # The first message of each connection is refused.
        silent = backend_for(server, fail_silently=True)
        assert silent.send_messages([make_message("spam"), make_message("ok")]) == 1
        server.wait_idle()
    assert server.connections == 2
    second = server.sessions[1]
    assert [parsed(t)["Subject"] for t in second.transactions] == ["spam", "ok"]
    one = ["MAIL", "RCPT", "DATA", "."]
    assert second.verbs == ["EHLO", *one, "RSET", *one, "QUIT"]


def test_fail_silently_swallows_only_smtplug_errors():
    class Boom:
        @smtplug.hookimpl
        def smtplug_on_command(self, info, command):
            if command.startswith("MAIL"):
                raise RuntimeError("an observer's own bug")

    with ScriptedServer() as server:
        backend = backend_for(server, fail_silently=True, options={"plugins": [Boom()]})
        with pytest.raises(RuntimeError, match="observer's own bug"):
            backend.send_messages([make_message()])
        assert backend.connection is None  # it opened it, so it closed it
        server.wait_idle()
    assert delivered(server) == []


def test_authentication_failure_raises_or_is_silent():
    script = {"AUTH": b"535 5.7.8 Bad credentials\r\n"}
    with ScriptedServer(script, capabilities=["AUTH PLAIN", "8BITMIME"]) as server:
        kwargs = {"username": "alice", "password": "wrong"}
        with pytest.raises(smtplug.AuthenticationError):
            backend_for(server, **kwargs).send_messages([make_message()])
        silent = backend_for(server, fail_silently=True, **kwargs)
        assert silent.send_messages([make_message(), make_message()]) == 0
        server.wait_idle()
    assert server.connections == 2 and delivered(server) == []


def test_auth_with_username_and_password():
    with ScriptedServer(capabilities=["AUTH PLAIN", "8BITMIME"]) as server:
        backend = backend_for(server, username="alice", password="wonderland")
        assert backend.send_messages([make_message()]) == 1
        server.wait_idle()
    assert server.sessions[0].verbs[:2] == ["EHLO", "AUTH"]


# --- TLS -----------------------------------------------------------------------------------


def test_use_tls_is_starttls_verified_with_cafile(tls):
    cafile, context = tls
    with ScriptedServer(tls_context=context) as server:
        backend = backend_for(server, use_tls=True, options={"cafile": cafile})
        assert backend.send_messages([make_message("tls")]) == 1
        server.wait_idle()
    session = server.sessions[0]
    assert session.tls and session.verbs[:3] == ["EHLO", "STARTTLS", "EHLO"]
    assert parsed(delivered(server)[0])["Subject"] == "tls"


def test_use_tls_requires_starttls(tls):
    cafile, _ = tls
    with ScriptedServer() as server:  # no STARTTLS offered
        backend = backend_for(server, use_tls=True, options={"cafile": cafile})
        with pytest.raises(smtplug.ConnectError) as info:
            backend.send_messages([make_message()])
        server.wait_idle()
    assert any(isinstance(f.error, smtplug.TLSError) for f in info.value.failures)
    assert delivered(server) == []


def test_use_ssl_is_implicit_tls(tls):
    cafile, context = tls
    with ScriptedServer(tls_context=context, implicit_tls=True) as server:
        backend = backend_for(server, use_ssl=True, options={"cafile": cafile})
        assert backend.send_messages([make_message("ssl")]) == 1
        server.wait_idle()
    session = server.sessions[0]
    assert session.tls and "STARTTLS" not in session.verbs


# --- threads -------------------------------------------------------------------------------


def test_threads_share_an_open_backend_over_one_connection():
    with ScriptedServer() as server:
        backend = backend_for(server)
        backend.open()
        counts: list[int] = []
        errors: list[BaseException] = []

        def send(n: int) -> None:
            try:
                counts.append(backend.send_messages([make_message(f"t{n}")]))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        backend.close()
        server.wait_idle()
    assert errors == [] and sum(counts) == 16
    assert server.connections == 1
    subjects = sorted(parsed(t)["Subject"] for t in delivered(server))
    assert subjects == sorted(f"t{n}" for n in range(16))


def test_threads_on_an_unopened_backend_each_open_and_close():
    with ScriptedServer() as server:
        backend = backend_for(server)
        counts: list[int] = []

        def send(n: int) -> None:
            counts.append(backend.send_messages([make_message(f"t{n}"), make_message("x")]))

        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        server.wait_idle()
    assert sum(counts) == 16
    assert backend.connection is None
    assert server.connections == 8
    assert all(s.verbs[-1] == "QUIT" and len(s.transactions) == 2 for s in server.sessions)
