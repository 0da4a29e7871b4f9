"""A Django email backend on smtplug: ``smtplug.django.EmailBackend``.

A drop-in for ``django.core.mail.backends.smtp.EmailBackend``, configured as
the installed Django configures its own:

- Django 6.1 and later: a ``MAILERS`` entry, ``{"BACKEND":
  "smtplug.django.EmailBackend", "OPTIONS": {...}}``, with the OPTIONS of
  Django's SMTP backend (``host``, ``port``, ``username``, ``password``,
  ``use_tls``, ``use_ssl``, ``timeout``, ``ssl_certfile``, ``ssl_keyfile``,
  ``fail_silently``) plus ``options`` (smtplug's own); ``mail.mailers[alias]``
  builds the backend. No deprecated setting is read.
- Before, or on Django 6.1 while a project still has ``EMAIL_BACKEND``: the
  settings ``EMAIL_HOST``, ``EMAIL_PORT``, ``EMAIL_HOST_USER``,
  ``EMAIL_HOST_PASSWORD``, ``EMAIL_USE_TLS``, ``EMAIL_USE_SSL``,
  ``EMAIL_TIMEOUT``, ``EMAIL_SSL_CERTFILE``, ``EMAIL_SSL_KEYFILE``, and the
  same constructor keywords, read (and deprecated) as Django's backend
  reads them.

The same ``open()`` / ``close()`` / ``send_messages()`` contract, sending
through one :class:`smtplug.Client`. smtplug's own options (``tlspolicy``,
``tls_backend``, ``cafile``, ``mechanisms``, ``oauth_token``, ``atleastone``,
``timeouts`` ...) come from the ``options`` keyword (an OPTIONS entry with
MAILERS) or else the ``SMTPLUG_OPTIONS`` setting, over the options mapped
from Django's. See ``docs/django.md``.

This module imports Django; nothing else in smtplug imports this module.
"""

from __future__ import annotations

import email.policy
import inspect
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import django  # type: ignore[import-untyped]
import django.core.mail  # type: ignore[import-untyped]
import django.utils.deprecation  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.core.mail.backends.base import BaseEmailBackend  # type: ignore[import-untyped]
from django.core.mail.utils import DNS_NAME  # type: ignore[import-untyped]
from django.utils.functional import empty  # type: ignore[import-untyped]

import smtplug

__all__ = ["EmailBackend", "InvalidMailerError", "RecipientsRefusedError"]

logger = logging.getLogger("smtplug.django")

#: Options of :meth:`smtplug.Client.sendmessage` the backend passes per message.
MESSAGE_OPTIONS = frozenset({"atleastone", "queue"})


def _client_option_names() -> frozenset[str] | None:
    """The keyword options :class:`smtplug.Client` takes (None: it takes any)."""
    parameters = inspect.signature(smtplug.Client).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None  # the Client checks the names itself
    return frozenset(
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def _check_options(
    options: object, where: str, error: type[smtplug.InvalidInputError]
) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise error(f"{where} must be a mapping of smtplug options, not {type(options).__name__}")
    known = _client_option_names()
    unknown = sorted(
        str(name)
        for name in options
        if not isinstance(name, str)
        or (known is not None and name not in known and name not in MESSAGE_OPTIONS)
    )
    if unknown:
        raise error(
            f"{where}: unknown smtplug option(s): {', '.join(unknown)} (the options are "
            "smtplug.Client's keywords, plus atleastone and queue)"
        )
    return dict(options)


#: Django 6 builds messages on the modern email API (``message(policy=...)``,
#: the SMTP backend's ``prep_address``); earlier versions on its SafeMIME
#: classes and ``sanitize_address``. The backend follows the installed one.
_DJANGO_6 = django.VERSION >= (6, 0)

#: Django 6.1 configures backends through the MAILERS setting:
#: ``mail.mailers[alias]`` calls ``BACKEND(alias=alias, **OPTIONS)``. It
#: deprecates the EMAIL_* settings (each read by code outside Django warns;
#: with MAILERS defined they are gone), creating a backend directly, and
#: ``BaseEmailBackend.fail_silently`` (a backend keeps its own). Found by
#: feature, as Django's own code tells the two configurations apart.
_MAILERS: bool = hasattr(django.core.mail, "mailers")

#: The error Django raises for a bad MAILERS entry (ImproperlyConfigured
#: before Django 6.1, which has no MAILERS).
_InvalidMailer: Any = getattr(django.core.mail, "InvalidMailer", ImproperlyConfigured)

#: What Django 6.1 warns with for the deprecated email configuration.
_DEPRECATION: Any = getattr(
    django.utils.deprecation, "RemovedInDjango2028Warning", PendingDeprecationWarning
)


class InvalidMailerError(smtplug.InvalidInputError, _InvalidMailer):  # type: ignore[misc]
    """A MAILERS entry for this backend is wrong (no ``host``, ``use_tls``
    with ``use_ssl``, an unknown OPTIONS name or smtplug option), or an
    EMAIL_* setting was needed where MAILERS is defined. Raised when the
    backend is made, whatever ``fail_silently`` says.

    Both an :class:`smtplug.InvalidInputError` (so a ``ValueError``) and
    Django's ``InvalidMailer`` (an ``ImproperlyConfigured``), which Django's
    own backend raises for the same mistakes.
    """

    def __init__(self, message: str) -> None:
        smtplug.InvalidInputError.__init__(self, message)


def _email_setting(name: str) -> Any:
    """The deprecated EMAIL_* setting ``name``, read as Django's own SMTP
    backend reads it.

    Django 6.1 warns at each read of one from code outside Django (its own
    backend reads them silently; the project was warned for each one it sets
    when its settings were loaded), so the read goes to the settings object
    under the lazy ``settings`` proxy, which is what the proxy reads. With
    MAILERS defined the EMAIL_* settings are not available (Django raises
    AttributeError): InvalidMailerError here.
    """
    if not _MAILERS:
        return getattr(settings, name)
    if settings._wrapped is empty:
        settings._setup(name)
    configured = settings._wrapped
    if hasattr(configured, "MAILERS"):
        raise InvalidMailerError(
            f"The {name} setting is not available when MAILERS is defined: get this "
            "backend from django.core.mail.mailers (a MAILERS entry's OPTIONS) instead "
            "of creating it directly"
        )
    return getattr(configured, name)


def _sanitize(address: object, encoding: str) -> str:
    """Django's envelope address; its ValueError for a malformed one becomes
    InvalidInputError (a ValueError too), raised whatever fail_silently says,
    as Django raises it."""
    try:
        if _DJANGO_6:
            from django.core.mail.backends.smtp import (  # type: ignore[import-untyped]
                EmailBackend as SMTPBackend,
            )

            # The same rules as Django's SMTP backend (it uses no state of its own).
            return str(SMTPBackend.prep_address(None, address))
        from django.core.mail.message import sanitize_address  # type: ignore[import-untyped]

        return str(sanitize_address(address, encoding))
    except ValueError as exc:
        raise smtplug.InvalidInputError(f"invalid address {address!r}: {exc}") from exc


def _serialise(email_message: Any) -> bytes:
    """The message as Django's SMTP backend sends it."""
    if _DJANGO_6:
        return bytes(email_message.message(policy=email.policy.SMTP).as_bytes())
    return bytes(email_message.message().as_bytes(linesep="\r\n"))


class RecipientsRefusedError(smtplug.ResponseError):
    """The server accepted none of a message's recipients (or, with
    ``atleastone=False`` in the smtplug options, refused one of them): the
    message was not sent. The equivalent of smtplib's
    ``SMTPRecipientsRefused``, which Django's SMTP backend lets through.

    ``recipients`` maps each refused address to ``(code, diagnostic)``, as
    smtplib's does; ``refused`` is the list of :class:`smtplug.RefusedRecipient`.
    ``code`` is the first temporary (4xx) refusal's, when there is one (so
    :attr:`transient` says whether trying later may help), else the first
    refusal's.
    """

    def __init__(self, refused: Sequence[smtplug.RefusedRecipient]) -> None:
        self.refused: list[smtplug.RefusedRecipient] = list(refused)
        self.recipients: dict[str, tuple[int, str]] = {
            r.address: (r.code, r.diagnostic) for r in self.refused
        }
        chosen = next((r for r in self.refused if r.transient), None) or (
            self.refused[0] if self.refused else None
        )
        listed = "; ".join(f"{r.address}: {r.code} {r.diagnostic}" for r in self.refused)
        super().__init__(
            f"message not sent: recipient(s) refused: {listed or 'none accepted'}",
            chosen.code if chosen is not None else 554,
            command="RCPT",
            enhanced=chosen.enhanced if chosen is not None else None,
        )


class _BatchOver(Exception):
    """A connection could not be opened, silently: the batch stops there."""


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]
    """Django's SMTP email backend, sending with smtplug.

    The same keywords as ``django.core.mail.backends.smtp.EmailBackend``
    (its MAILERS OPTIONS on Django 6.1 and later), plus ``options``: smtplug's
    own options, used instead of the ``SMTPLUG_OPTIONS`` setting. Unknown
    option names, and ``use_tls`` with ``use_ssl``, are errors here.

    Made by ``mail.mailers`` (``alias`` given), it takes its configuration
    from the keywords alone, with the defaults of Django's backend: ``host``
    required, ``port`` 465 with ``use_ssl``, 587 with ``use_tls``, else 25.
    Made without ``alias`` (``EMAIL_BACKEND``, ``get_connection()``, or
    directly), each keyword that is ``None`` means "from the EMAIL_* setting",
    as in Django.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        use_tls: bool | None = None,
        fail_silently: bool = False,
        use_ssl: bool | None = None,
        timeout: float | None = None,
        ssl_keyfile: str | None = None,
        ssl_certfile: str | None = None,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        alias: str | None = kwargs.get("alias")
        if _MAILERS and alias is None:
            # As Django's SMTP backend warns (for callers outside Django).
            django.utils.deprecation.warn_about_external_use(
                "Directly creating EmailBackend instances is deprecated. Use mail.mailers instead.",
                _DEPRECATION,
            )
        # fail_silently is this backend's own (Django 6.1 deprecates the base
        # class's); the base class checks the rest (alias, unknown OPTIONS).
        try:
            super().__init__(**kwargs)
        except _InvalidMailer as exc:
            raise InvalidMailerError(str(exc)) from exc
        self.fail_silently: bool = fail_silently
        self.host: str
        self.port: int
        self.username: str | None
        self.password: str | None
        self.use_tls: bool
        self.use_ssl: bool
        self.timeout: float | None
        self.ssl_keyfile: str | None
        self.ssl_certfile: str | None
        if alias is None:
            self._from_settings(
                host, port, username, password, use_tls, use_ssl, timeout, ssl_keyfile, ssl_certfile
            )
        else:
            self._from_mailer(
                alias,
                host,
                port,
                username,
                password,
                use_tls,
                use_ssl,
                timeout,
                ssl_keyfile,
                ssl_certfile,
            )
        error = smtplug.InvalidInputError if alias is None else InvalidMailerError
        if options is None:
            self.options = _check_options(
                getattr(settings, "SMTPLUG_OPTIONS", None) or {}, "SMTPLUG_OPTIONS", error
            )
        else:
            where = "options" if alias is None else f"MAILERS[{alias!r}]: OPTIONS['options']"
            self.options = _check_options(options, where, error)
        self.connection: smtplug.Client | None = None
        self._lock = threading.RLock()

    def _from_settings(
        self,
        host: str | None,
        port: int | None,
        username: str | None,
        password: str | None,
        use_tls: bool | None,
        use_ssl: bool | None,
        timeout: float | None,
        ssl_keyfile: str | None,
        ssl_certfile: str | None,
    ) -> None:
        """Django's EMAIL_* settings for each keyword that is None."""
        self.host = host or _email_setting("EMAIL_HOST")
        self.port = port or _email_setting("EMAIL_PORT")
        self.username = _email_setting("EMAIL_HOST_USER") if username is None else username
        self.password = _email_setting("EMAIL_HOST_PASSWORD") if password is None else password
        self.use_tls = _email_setting("EMAIL_USE_TLS") if use_tls is None else use_tls
        self.use_ssl = _email_setting("EMAIL_USE_SSL") if use_ssl is None else use_ssl
        self.timeout = _email_setting("EMAIL_TIMEOUT") if timeout is None else timeout
        self.ssl_keyfile = (
            _email_setting("EMAIL_SSL_KEYFILE") if ssl_keyfile is None else ssl_keyfile
        )
        self.ssl_certfile = (
            _email_setting("EMAIL_SSL_CERTFILE") if ssl_certfile is None else ssl_certfile
        )
        if self.use_ssl and self.use_tls:
            # Django's own error, word for word.
            raise ValueError(
                "EMAIL_USE_TLS/EMAIL_USE_SSL are mutually exclusive, so only set "
                "one of those settings to True."
            )

    def _from_mailer(
        self,
        alias: str,
        host: str | None,
        port: int | None,
        username: str | None,
        password: str | None,
        use_tls: bool | None,
        use_ssl: bool | None,
        timeout: float | None,
        ssl_keyfile: str | None,
        ssl_certfile: str | None,
    ) -> None:
        """A MAILERS entry's OPTIONS, with the defaults of Django's backend."""
        if host is None:
            raise InvalidMailerError(f"MAILERS[{alias!r}]: OPTIONS must define 'host'.")
        self.host = host
        self.username = username
        self.password = password
        self.use_tls = bool(use_tls)
        self.use_ssl = bool(use_ssl)
        self.timeout = timeout
        self.ssl_keyfile = ssl_keyfile
        self.ssl_certfile = ssl_certfile
        if self.use_ssl and self.use_tls:
            # Django's own error, word for word.
            raise InvalidMailerError(
                f"MAILERS[{alias!r}]: The 'use_ssl' and 'use_tls' OPTIONS are incompatible. "
                "Set at most one of them to True."
            )
        if port is None:
            port = 465 if self.use_ssl else 587 if self.use_tls else 25
        self.port = port

    def client_options(self) -> dict[str, Any]:
        """The keywords the :class:`smtplug.Client` is built with: the Django
        settings mapped to smtplug's options, then the smtplug options over them."""
        mapped: dict[str, Any] = {
            "servers": self.host,
            "ports": self.port,
            # Django says EHLO with the cached FQDN; so does this backend.
            "client": DNS_NAME.get_fqdn(),
            # Neither TLS setting: plain SMTP, as Django's backend (smtplug's
            # own default would be opportunistic STARTTLS).
            "usetls": bool(self.use_tls) and not self.use_ssl,
            "tlsimport": bool(self.use_ssl),
        }
        if self.use_tls:
            mapped["tlspolicy"] = "require"  # Django fails when STARTTLS does
        if self.timeout is not None:
            mapped["timeout"] = self.timeout
        if self.ssl_certfile:
            mapped["client_cert"] = self.ssl_certfile
        if self.ssl_keyfile:
            mapped["client_key"] = self.ssl_keyfile
        if self.username and self.password:  # Django logs in only with both
            mapped["username"] = self.username
            mapped["password"] = self.password
        mapped.update((k, v) for k, v in self.options.items() if k not in MESSAGE_OPTIONS)
        return mapped

    def message_options(self) -> dict[str, Any]:
        """The per-message options: Django's semantics (``atleastone=True``:
        sent when any recipient is accepted), then the smtplug options."""
        chosen: dict[str, Any] = {"atleastone": True}
        chosen.update((k, v) for k, v in self.options.items() if k in MESSAGE_OPTIONS)
        return chosen

    def open(self) -> bool | None:
        """Make sure there is a client: True when one was made, False when
        one was already open, None when making it failed with fail_silently.

        The :class:`smtplug.Client` is built here (every option checked); it
        connects, negotiates TLS and authenticates at the first message.
        """
        with self._lock:
            if self.connection is not None:
                return False
            try:
                self.connection = smtplug.Client(**self.client_options())
            except smtplug.SMTPError:
                if not self.fail_silently:
                    raise
                return None
            return True

    def close(self) -> None:
        """QUIT and close the connection, if one is open (never raises)."""
        with self._lock:
            connection, self.connection = self.connection, None
            if connection is not None:
                connection.close()

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Send Django ``EmailMessage`` objects; return how many were sent.

        Opens a connection when none is open, and then closes it again; a
        connection opened before (``open()``, ``with backend:``) stays open.
        """
        if not email_messages:
            return 0
        with self._lock:
            new_conn_created = self.open()
            if not self.connection or new_conn_created is None:
                return 0  # failed silently in open()
            num_sent = 0
            try:
                for message in email_messages:
                    if self._send(message):
                        num_sent += 1
            except _BatchOver:
                pass
            finally:
                if new_conn_created:
                    self.close()
        return num_sent

    def _send(self, email_message: Any) -> bool:
        if not email_message.recipients():
            return False
        encoding = email_message.encoding or settings.DEFAULT_CHARSET
        from_email = _sanitize(email_message.from_email, encoding)
        recipients = [_sanitize(addr, encoding) for addr in email_message.recipients()]
        data = _serialise(email_message)
        assert self.connection is not None
        try:
            result = self.connection.sendmessage(
                data, originator=from_email, recipients=recipients, **self.message_options()
            )
            if not result.accepted:
                raise RecipientsRefusedError(result)
        except smtplug.SMTPError as exc:
            if not self.fail_silently:
                raise
            if isinstance(exc, smtplug.ConnectError | smtplug.AuthenticationError):
                # No connection could be opened: Django's open() would have
                # failed, and nothing of the batch been sent.
                raise _BatchOver from exc
            return False
        if result:
            logger.warning(
                "message sent, but %d recipient(s) refused: %s",
                len(result),
                "; ".join(f"{r.address}: {r.code} {r.diagnostic}" for r in result),
            )
        return True
