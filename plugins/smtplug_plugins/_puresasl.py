"""PLAIN, CRAM-MD5, DIGEST-MD5, EXTERNAL and ANONYMOUS, on pure-sasl.

Each exchange below wraps pure-sasl's client mechanism (``puresasl.mechanisms``,
bound to a ``puresasl.client.SASLClient`` that carries the host, the service
and the authorization id) in smtplug's :class:`~smtplug.interfaces.SASLExchange`.

* **PLAIN** (RFC 4616): the initial response is ``authzid NUL authcid NUL
  passwd`` in UTF-8, from pure-sasl's ``PlainMechanism.process()``; no
  challenge follows. NUL cannot be carried, so credentials holding one are
  refused before anything is sent.
* **CRAM-MD5** (RFC 2195): no initial response; the server's one challenge
  (its ``<msg-id>``) is answered with ``username SP hex(HMAC-MD5(password,
  challenge))`` by pure-sasl's ``CramMD5Mechanism``. The mechanism cannot
  carry an authorization identity.
* **DIGEST-MD5** (RFC 2831): no initial response; challenge 1 is the
  digest-challenge, answered with the digest-response built by pure-sasl's
  ``DigestMD5Mechanism``; challenge 2 is ``rspauth=...``, which pure-sasl
  checks (it proves the server knows the password) and which is answered
  with an empty response. ``verify()`` fails when no valid rspauth was seen.
  pure-sasl quirks handled here:

  - the digest-uri is ``<service>/<host>`` from the ``SASLClient``'s
    ``service`` and ``host``, so both are passed (``smtp/<hostname>``);
  - it would accept ``auth-int``/``auth-conf`` (and then wrap the SMTP
    stream, which smtplug does not do), so ``qops`` is restricted to
    ``auth``;
  - it draws the cnonce from :func:`random.random` (predictable, about 52
    bits): a subclass replaces every cnonce it sets with one from
    :mod:`secrets`;
  - it needs a ``realm`` callback when the challenge names none, and RFC 2831
    then uses the empty realm: the realm is set before ``process()``;
  - it hashes UTF-8 and never sends ``charset=utf-8``; RFC 2831 wants ISO
    8859-1 unless the server offered ``charset=utf-8`` (and even then
    ISO 8859-1 in the hash when the name or password fits it). The
    ``username`` field and the precomputed ``H(username:realm:password)``
    (pure-sasl's ``key_hash``) are therefore set here with the right
    encodings, and ``charset=utf-8`` is appended when used;
  - it does not check the challenge (nonce present, ``algorithm=md5-sess``),
    and crashes rather than fail on a server that sends ``rspauth`` first;
    the state machine here checks both;
  - it ignores the authorization id, so DIGEST-MD5 is not offered when one is
    given.
* **EXTERNAL** (RFC 4422 appendix A): the initial response is the authzid
  (``b""`` for none). pure-sasl's ``ExternalMechanism`` always answers
  ``b""`` and drops the authzid, so the bytes are produced here.
* **ANONYMOUS** (RFC 4505): the initial response is the trace (the username,
  at most 255 characters). pure-sasl's ``AnonymousMechanism`` always sends
  the fixed text ``Anonymous, None``, so the bytes are produced here.

Every failure is an :class:`~smtplug.errors.AuthenticationError` whose text
never contains the password.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from puresasl import QOP
from puresasl.client import SASLClient
from puresasl.mechanisms import CramMD5Mechanism, DigestMD5Mechanism, PlainMechanism

from smtplug.errors import AuthenticationError
from smtplug.interfaces import SASLCredentials, SASLExchange, SASLMechanism

__all__ = [
    "AnonymousSASL",
    "CramMD5SASL",
    "DigestMD5SASL",
    "ExternalSASL",
    "PlainSASL",
]


def _client(credentials: SASLCredentials, authzid: str | None = None) -> Any:
    """A pure-sasl client context (no mechanism chosen: ours are built on it)."""
    return SASLClient(
        credentials.hostname,
        credentials.service,
        authorization_id=authzid,
        qops=[QOP.AUTH],
    )


def _password(name: str, credentials: SASLCredentials) -> str:
    if credentials.password is None:
        raise AuthenticationError(f"{name}: no password given")
    return credentials.password


class _Exchange:
    """Shared bits: a name for messages and a repr without secrets."""

    name = ""

    def __init__(self, username: str) -> None:
        self._username = username
        self._step = 0

    def __repr__(self) -> str:
        return f"<{self.name} exchange for {self._username!r}, step {self._step}>"

    def _unexpected(self) -> AuthenticationError:
        return AuthenticationError(f"{self.name}: unexpected challenge from the server")

    def verify(self) -> None:
        return None


# --------------------------------------------------------------------- PLAIN


class _PlainExchange(_Exchange):
    name = "PLAIN"

    def __init__(self, credentials: SASLCredentials) -> None:
        super().__init__(credentials.username)
        password = _password(self.name, credentials)
        fields = (credentials.username, password, credentials.authzid or "")
        if any("\0" in f for f in fields):
            raise AuthenticationError("PLAIN: the username, password or authzid contains NUL")
        self._mech: Any = PlainMechanism(
            _client(credentials, credentials.authzid),
            username=credentials.username,
            password=password,
        )

    def initial_response(self) -> bytes:
        self._step = 1
        message = bytes(self._mech.process(None))
        self._mech.dispose()
        return message

    def respond(self, challenge: bytes) -> bytes:
        raise self._unexpected()


class PlainSASL:
    """PLAIN (RFC 4616): the password in the initial response."""

    name = "PLAIN"
    strength = 10
    exposes_password = True

    def supported(self, credentials: SASLCredentials) -> bool:
        return credentials.password is not None

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        return _PlainExchange(credentials)

    def __repr__(self) -> str:
        return "<SASL mechanism PLAIN>"


# ------------------------------------------------------------------ CRAM-MD5


class _CramMD5Exchange(_Exchange):
    name = "CRAM-MD5"

    def __init__(self, credentials: SASLCredentials) -> None:
        super().__init__(credentials.username)
        self._mech: Any = CramMD5Mechanism(
            _client(credentials),
            username=credentials.username,
            password=_password(self.name, credentials),
        )

    def initial_response(self) -> None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if self._step != 0:
            raise self._unexpected()
        self._step = 1
        if not challenge:
            raise AuthenticationError("CRAM-MD5: the server's challenge is empty")
        answer = bytes(self._mech.process(challenge))
        self._mech.dispose()
        return answer


class CramMD5SASL:
    """CRAM-MD5 (RFC 2195): an HMAC-MD5 of the server's challenge."""

    name = "CRAM-MD5"
    strength = 40
    exposes_password = False

    def supported(self, credentials: SASLCredentials) -> bool:
        # CRAM-MD5 has no place for an authorization identity.
        return credentials.password is not None and credentials.authzid is None

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        return _CramMD5Exchange(credentials)

    def __repr__(self) -> str:
        return "<SASL mechanism CRAM-MD5>"


# ---------------------------------------------------------------- DIGEST-MD5


class _SecureCnonceDigestMD5(DigestMD5Mechanism):  # type: ignore[misc]
    """pure-sasl's DIGEST-MD5 with a cnonce from :mod:`secrets`.

    pure-sasl assigns ``self.cnonce = str(random.random())[2:]`` when it builds
    the first response; this property swaps any such value for 32 random hex
    digits (``None``, from ``dispose()``, is kept).
    """

    @property
    def cnonce(self) -> bytes | None:
        return self._smtplug_cnonce

    @cnonce.setter
    def cnonce(self, value: object) -> None:
        self._smtplug_cnonce = None if value is None else secrets.token_hex(16).encode("ascii")


def _latin1_or_utf8(text: str) -> bytes:
    try:
        return text.encode("iso-8859-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


class _DigestMD5Exchange(_Exchange):
    name = "DIGEST-MD5"

    def __init__(self, credentials: SASLCredentials) -> None:
        super().__init__(credentials.username)
        self._password = _password(self.name, credentials)
        # digest-uri = service "/" host (RFC 2831 2.1.2): smtp/<hostname>.
        self._mech: Any = _SecureCnonceDigestMD5(_client(credentials))
        self._verified = False

    def __repr__(self) -> str:
        return (
            f"<DIGEST-MD5 exchange for {self._username!r}, step {self._step}, "
            f"rspauth {'verified' if self._verified else 'not verified'}>"
        )

    def initial_response(self) -> None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        try:
            fields: dict[str, bytes] = DigestMD5Mechanism.parse_challenge(challenge)
        except Exception as exc:
            raise AuthenticationError(
                f"DIGEST-MD5: the server's challenge cannot be parsed ({type(exc).__name__})"
            ) from exc
        if self._step == 0:
            self._step = 1
            return self._digest_response(challenge, fields)
        if self._step == 1:
            self._step = 2
            return self._check_rspauth(challenge, fields)
        raise self._unexpected()

    def _digest_response(self, challenge: bytes, fields: dict[str, bytes]) -> bytes:
        if "rspauth" in fields:
            raise AuthenticationError("DIGEST-MD5: rspauth received before the digest-response")
        if not fields.get("nonce"):
            raise AuthenticationError("DIGEST-MD5: the server's challenge has no nonce")
        if fields.get("algorithm", b"").lower() != b"md5-sess":
            raise AuthenticationError("DIGEST-MD5: the server's challenge lacks algorithm=md5-sess")
        utf8 = fields.get("charset", b"").lower() == b"utf-8"
        realm = fields.get("realm", b"")
        if utf8:
            username_field = self._username.encode("utf-8")
            user_hash = _latin1_or_utf8(self._username)
            password_hash = _latin1_or_utf8(self._password)
        else:
            try:
                username_field = user_hash = self._username.encode("iso-8859-1")
                password_hash = self._password.encode("iso-8859-1")
            except UnicodeEncodeError:
                raise AuthenticationError(
                    "DIGEST-MD5: the server did not offer charset=utf-8 and the username "
                    "or password is not ISO 8859-1"
                ) from None
        mech = self._mech
        mech.username = username_field
        mech.realm = realm  # pure-sasl would otherwise ask a callback for it
        # H({ username-value, ":", realm-value, ":", passwd }) with RFC 2831's
        # encodings; pure-sasl uses a preset key_hash instead of hashing UTF-8.
        mech.key_hash = hashlib.md5(user_hash + b":" + realm + b":" + password_hash).digest()
        self._password = ""
        try:
            response = bytes(mech.process(challenge))
        except Exception as exc:
            raise AuthenticationError(
                f"DIGEST-MD5: cannot answer the server's challenge ({type(exc).__name__}: "
                f"{_safe_text(exc)})"
            ) from exc
        if utf8:
            response += b",charset=utf-8"
        return response

    def _check_rspauth(self, challenge: bytes, fields: dict[str, bytes]) -> bytes:
        if "rspauth" not in fields:
            raise AuthenticationError("DIGEST-MD5: the server's second challenge has no rspauth")
        try:
            self._mech.process(challenge)
        except Exception as exc:
            raise AuthenticationError(
                "DIGEST-MD5: the server's rspauth does not match: it does not know the password",
                server_unverified=True,
            ) from exc
        self._verified = bool(self._mech.complete)
        self._mech.dispose()
        return b""

    def verify(self) -> None:
        if not self._verified:
            raise AuthenticationError(
                "DIGEST-MD5: the server accepted without proving it knows the password (no rspauth)"
            )


def _safe_text(exc: Exception) -> str:
    """pure-sasl's own messages (QOP mismatches) hold no secrets; keep them short."""
    return str(exc)[:200]


class DigestMD5SASL:
    """DIGEST-MD5 (RFC 2831, historic): challenge-response with mutual proof."""

    name = "DIGEST-MD5"
    strength = 50
    exposes_password = False

    def supported(self, credentials: SASLCredentials) -> bool:
        # pure-sasl cannot send an authzid with DIGEST-MD5.
        return credentials.password is not None and credentials.authzid is None

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        return _DigestMD5Exchange(credentials)

    def __repr__(self) -> str:
        return "<SASL mechanism DIGEST-MD5>"


# ------------------------------------------------------- EXTERNAL, ANONYMOUS


class _FixedExchange(_Exchange):
    """An initial response and nothing else (EXTERNAL, ANONYMOUS)."""

    def __init__(self, name: str, username: str, message: bytes) -> None:
        super().__init__(username)
        self.name = name
        self._message = message

    def initial_response(self) -> bytes:
        self._step = 1
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        raise self._unexpected()


class ExternalSASL:
    """EXTERNAL (RFC 4422): identity from outside SASL (a TLS client certificate)."""

    name = "EXTERNAL"
    strength = 5
    exposes_password = False

    def supported(self, credentials: SASLCredentials) -> bool:
        return True

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        authzid = credentials.authzid or ""
        if "\0" in authzid:
            raise AuthenticationError("EXTERNAL: the authzid contains NUL")
        return _FixedExchange(self.name, credentials.username, authzid.encode("utf-8"))

    def __repr__(self) -> str:
        return "<SASL mechanism EXTERNAL>"


class AnonymousSASL:
    """ANONYMOUS (RFC 4505): no identity, only a trace (the username)."""

    name = "ANONYMOUS"
    strength = 0
    exposes_password = False

    def supported(self, credentials: SASLCredentials) -> bool:
        return True

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        trace = credentials.username[:255]  # RFC 4505: at most 255 characters
        if "\0" in trace:
            raise AuthenticationError("ANONYMOUS: the trace contains NUL")
        return _FixedExchange(self.name, credentials.username, trace.encode("utf-8"))

    def __repr__(self) -> str:
        return "<SASL mechanism ANONYMOUS>"


#: Every mechanism of this module, by name (what ``sasl_puresasl`` registers).
MECHANISMS: dict[str, SASLMechanism] = {
    mechanism.name: mechanism
    for mechanism in (PlainSASL(), CramMD5SASL(), DigestMD5SASL(), ExternalSASL(), AnonymousSASL())
}
