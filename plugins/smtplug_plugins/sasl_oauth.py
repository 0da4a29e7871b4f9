"""XOAUTH2 and OAUTHBEARER (RFC 7628): an OAuth 2.0 bearer token.

The token is ``credentials.oauth_token()`` (called once, when the exchange
starts), or ``credentials.password`` when no token callable was given. When
the server refuses it and the caller gave a token provider, the core starts
the mechanism once more with credentials whose ``oauth_token`` gives the
provider's renewed token (see :class:`smtplug.interfaces.OAuthTokenProvider`). It
must be an RFC 6750 ``b64token`` (``[A-Za-z0-9-._~+/]+=*``): anything else is
refused before a byte is sent, so the token can never break the message
framing.

* **XOAUTH2** (Google's and Microsoft's format): the initial response is
  ``user=<username>^Aauth=Bearer <token>^A^A``. On failure the server sends a
  334 challenge carrying a JSON error (``{"status":"401","schemes":...,
  "scope":...}``); the client answers it with an empty response and the
  server then sends its final 5xx. The username cannot carry an
  authorization identity, so XOAUTH2 is not offered when one is given.
* **OAUTHBEARER** (RFC 7628): the initial response is the GS2 header
  ``n,a=<authzid>,`` (the authzid, or the username when none is given, with
  ``,`` and ``=`` escaped as ``=2C``/``=3D``; ``n,,`` when both are empty)
  followed by
  ``^Ahost=<hostname>^Aport=<port>^Aauth=Bearer <token>^A^A``. On failure the
  server's JSON error challenge is answered with ``^A`` (RFC 7628 3.2.3) and
  the server sends its final 5xx.

The error challenge is parsed defensively: invalid JSON, or JSON that is not
an object, is tolerated. Its ``status`` (and scope) is kept on the exchange
(``error_status``) and named in any later error text. No error text or repr
ever holds the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from smtplug.errors import AuthenticationError
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import SASLCredentials, SASLExchange, SASLMechanism

__all__ = ["OAuthBearerSASL", "XOAuth2SASL"]

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _token(name: str, credentials: SASLCredentials) -> str:
    """The bearer token, validated; errors never show it."""
    if credentials.oauth_token is not None:
        try:
            token: object = credentials.oauth_token()
        except Exception as exc:
            raise AuthenticationError(
                f"{name}: the oauth_token callable failed ({type(exc).__name__})"
            ) from None
    else:
        token = credentials.password
    if token is None:
        raise AuthenticationError(f"{name}: no OAuth token given")
    if not isinstance(token, str):
        raise AuthenticationError(f"{name}: the OAuth token is a {type(token).__name__}, not a str")
    if _B64TOKEN.fullmatch(token) is None:
        raise AuthenticationError(
            f"{name}: the OAuth token is not an RFC 6750 bearer token "
            "(empty, or characters outside A-Z a-z 0-9 - . _ ~ + / =)"
        )
    return token


def _check_text(name: str, what: str, value: str) -> None:
    if _CONTROL.search(value):
        raise AuthenticationError(f"{name}: the {what} contains a control character")


def _parse_error(challenge: bytes) -> tuple[str | None, str | None]:
    """(status, scope) from the server's JSON error challenge, when present."""
    try:
        data = json.loads(challenge.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    status, scope = data.get("status"), data.get("scope")
    return (
        _short(status) if isinstance(status, (str, int)) else None,
        _short(scope) if isinstance(scope, str) else None,
    )


def _short(value: str | int) -> str:
    text = _CONTROL.sub("?", str(value))
    return text if len(text) <= 100 else text[:100] + "..."


class _OAuthExchange:
    def __init__(self, name: str, username: str, message: bytes, error_answer: bytes) -> None:
        self._name = name
        self._username = username
        self._message: bytes | None = message
        self._error_answer = error_answer
        self._errored = False
        self.error_status: str | None = None
        self.error_scope: str | None = None

    def __repr__(self) -> str:
        state = "" if not self._errored else f", server error status {self.error_status!r}"
        return f"<{self._name} exchange for {self._username!r}{state}>"

    def initial_response(self) -> bytes:
        message, self._message = self._message, None
        if message is None:
            raise AuthenticationError(f"{self._name}: the exchange was already started")
        return message

    def respond(self, challenge: bytes) -> bytes:
        if self._errored:
            raise AuthenticationError(
                f"{self._name}: unexpected challenge after the server's error"
                f" (status {self.error_status or 'unknown'})"
            )
        self._errored = True
        self.error_status, self.error_scope = _parse_error(challenge)
        # Answer so the server ends the exchange with its final 5xx reply.
        return self._error_answer

    def verify(self) -> None:
        return None


def _gs2_name(name: str) -> str:
    """RFC 5801 saslname: ``=`` and ``,`` escaped."""
    return name.replace("=", "=3D").replace(",", "=2C")


class XOAuth2SASL:
    """XOAUTH2: ``user=...^Aauth=Bearer ...^A^A`` in the initial response."""

    name = "XOAUTH2"
    strength = 30
    exposes_password = True

    def supported(self, credentials: SASLCredentials) -> bool:
        has_token = credentials.oauth_token is not None or credentials.password is not None
        return has_token and credentials.authzid is None

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        _check_text(self.name, "username", credentials.username)
        token = _token(self.name, credentials)
        message = f"user={credentials.username}\x01auth=Bearer {token}\x01\x01"
        return _OAuthExchange(self.name, credentials.username, message.encode("utf-8"), b"")

    def __repr__(self) -> str:
        return "<SASL mechanism XOAUTH2>"


class OAuthBearerSASL:
    """OAUTHBEARER (RFC 7628): GS2 header, host, port and bearer token."""

    name = "OAUTHBEARER"
    strength = 35
    exposes_password = True

    def supported(self, credentials: SASLCredentials) -> bool:
        return credentials.oauth_token is not None or credentials.password is not None

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        identity = credentials.authzid if credentials.authzid is not None else credentials.username
        _check_text(self.name, "username or authzid", identity)
        _check_text(self.name, "hostname", credentials.hostname)
        token = _token(self.name, credentials)
        gs2 = f"n,a={_gs2_name(identity)}," if identity else "n,,"
        message = (
            f"{gs2}\x01host={credentials.hostname}"
            f"\x01port={credentials.port}\x01auth=Bearer {token}\x01\x01"
        )
        return _OAuthExchange(self.name, credentials.username, message.encode("utf-8"), b"\x01")

    def __repr__(self) -> str:
        return "<SASL mechanism OAUTHBEARER>"


@hookimpl
def smtplug_register_sasl_mechanisms() -> Sequence[SASLMechanism]:
    return [OAuthBearerSASL(), XOAuth2SASL()]
