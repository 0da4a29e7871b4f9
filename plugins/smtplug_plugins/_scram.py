"""SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS forms (RFC 5802, 7677), on scramp.

All the cryptography and message parsing is scramp's ``ScramClient``. The
exchange, in SMTP terms:

1. ``AUTH SCRAM-SHA-256 <client-first-message>``: the client-first message
   is the initial response (one round trip fewer than waiting for an empty
   challenge);
2. ``334 <server-first-message>`` is answered with the client-final message
   (channel binding, nonce, proof);
3. ``334 <server-final-message>`` (``v=<server signature>``) is checked and
   answered with an empty response; an ``e=<error>`` or a wrong signature
   fails the exchange (the server does not know the password: it may be an
   impostor);
4. ``235``: ``verify()`` fails unless step 3 happened, so a server that
   accepts without proving it knows the password is not trusted.

Channel binding (-PLUS): the binding data comes from the TLS backend
(``credentials.tls.channel_bindings``), preferring ``tls-exporter`` (RFC 9266,
the TLS 1.3 binding) and then ``tls-unique`` (RFC 5929, TLS 1.2 only). A -PLUS
mechanism is not supported without TLS or without one of those two.

Library quirks:

* scramp 1.5 refuses the name ``tls-exporter`` (its README: Python's ``ssl``
  cannot produce the data, so scramp cannot fetch it from a socket). It only
  uses the name in the GS2 header ``p=<name>,,``, which enters both the
  client-first message and the channel-binding input ``c=``. When scramp
  refuses it, the client is built with the same data under the name
  ``tls-unique`` and the header's binding name is then set to
  ``tls-exporter``: scramp still does all the hashing, over the right header.
  A scramp that accepts ``tls-exporter`` is used as is.
* scramp picks the GS2 flag from what it is given: ``n`` without binding
  data, ``p=`` for a -PLUS mechanism, and ``y`` ("I could bind, the server
  seems unable to") when a non-PLUS mechanism gets binding data. smtplug's
  interface does not say whether the server advertised a -PLUS mechanism, so
  non-PLUS SCRAM never passes the data and always uses ``n`` (a server that
  does support -PLUS would reject ``y`` if the caller restricted the
  mechanisms to non-PLUS ones).
* scramp's GS2 header never has an ``a=`` authorization identity, so SCRAM
  is not offered when one is given.
* scramp applies SASLprep to the username and the password, and refuses
  (``ScramException``) those it prohibits; the error names the rule broken,
  never the secret.
"""

from __future__ import annotations

from typing import Any

from scramp import ScramClient, ScramException

try:  # scramp >= 1.5 (Python >= 3.11)
    from scramp.utils import saslprep
except ImportError:  # scramp 1.4 (Python 3.10)
    from scramp.core import saslprep  # type: ignore[attr-defined,no-redef,unused-ignore]

from smtplug.errors import AuthenticationError
from smtplug.interfaces import SASLCredentials, SASLExchange

__all__ = ["ScramSASL"]

_BINDING_PREFERENCE = ("tls-exporter", "tls-unique")


def _binding(credentials: SASLCredentials) -> tuple[str, bytes] | None:
    """The channel binding to use: (type, data), or None when none is usable."""
    if credentials.tls is None:
        return None
    for name in _BINDING_PREFERENCE:
        data = credentials.tls.channel_bindings.get(name)
        if data:
            return name, bytes(data)
    return None


def _make_client(
    mechanism: str, username: str, password: str, binding: tuple[str, bytes] | None
) -> Any:
    try:
        return ScramClient([mechanism], username, password, channel_binding=binding)
    except ScramException:
        if binding is None or binding[0] != "tls-exporter":
            raise
    # scramp refuses the name tls-exporter: see the module docstring.
    client = ScramClient(
        [mechanism], username, password, channel_binding=("tls-unique", binding[1])
    )
    client.gs2_header.cb_name = "tls-exporter"
    return client


class _ScramExchange:
    def __init__(self, mechanism: str, username: str, client: Any, expect_header: str) -> None:
        self._mechanism = mechanism
        self._username = username
        self._client = client
        self._expect_header = expect_header
        self._step = 0
        self._verified = False

    def __repr__(self) -> str:
        return (
            f"<{self._mechanism} exchange for {self._username!r}, step {self._step}, "
            f"server signature {'verified' if self._verified else 'not verified'}>"
        )

    def _fail(self, what: str, exc: Exception | None = None) -> AuthenticationError:
        detail = f": {exc}" if exc is not None else ""
        return AuthenticationError(f"{self._mechanism}: {what}{detail}")

    def initial_response(self) -> bytes:
        if self._step != 0:
            raise self._fail("the exchange was already started")
        self._step = 1
        try:
            first = str(self._client.get_client_first())
        except ScramException as exc:
            raise self._fail("cannot build the client-first message", exc) from exc
        if not first.startswith(self._expect_header):
            # Guards the tls-exporter adaptation against a changed scramp.
            raise self._fail("scramp built an unexpected GS2 header")
        return first.encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        try:
            message = challenge.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("the server's message is not UTF-8") from None
        if self._step == 1:
            self._step = 2
            try:
                self._client.set_server_first(message)
                return str(self._client.get_client_final()).encode("utf-8")
            except ScramException as exc:
                raise self._fail("bad server-first message", exc) from exc
        if self._step == 2:
            self._step = 3
            try:
                self._client.set_server_final(message)
            except ScramException as exc:
                if message.startswith("e="):  # the server's own refusal (RFC 5802 server-error)
                    raise self._fail("the server refused the proof", exc) from exc
                failure = self._fail("the server failed to prove it knows the password", exc)
                failure.server_unverified = True
                raise failure from exc
            self._verified = True
            return b""
        raise self._fail("unexpected challenge from the server")

    def verify(self) -> None:
        if not self._verified:
            raise self._fail(
                "the server accepted without proving it knows the password (no server signature)"
            )


class ScramSASL:
    """One SCRAM mechanism: ``SCRAM-SHA-1``, ``SCRAM-SHA-256``, or -PLUS."""

    exposes_password = False

    def __init__(self, name: str, strength: int) -> None:
        self.name = name
        self.strength = strength
        self.plus = name.endswith("-PLUS")

    def __repr__(self) -> str:
        return f"<SASL mechanism {self.name}>"

    def supported(self, credentials: SASLCredentials) -> bool:
        if credentials.password is None or credentials.authzid is not None:
            return False
        return not self.plus or _binding(credentials) is not None

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        if credentials.password is None:
            raise AuthenticationError(f"{self.name}: no password given")
        binding = _binding(credentials) if self.plus else None
        if self.plus and binding is None:
            raise AuthenticationError(f"{self.name}: no usable TLS channel binding")
        header = f"p={binding[0]},," if binding is not None else "n,,"
        try:
            # SASLprep (RFC 4013) now, whatever scramp version: 1.4 applies it to
            # the password only when computing the proof, mid-exchange.
            saslprep(credentials.username)
            saslprep(credentials.password)
        except (ScramException, ValueError, TypeError):
            raise AuthenticationError(
                f"{self.name}: the username or password contains characters SASLprep "
                "(RFC 4013) prohibits"
            ) from None
        try:
            client = _make_client(self.name, credentials.username, credentials.password, binding)
        except ScramException as exc:
            raise AuthenticationError(f"{self.name}: cannot start: {exc}") from exc
        return _ScramExchange(self.name, credentials.username, client, header)


MECHANISMS: tuple[ScramSASL, ...] = (
    ScramSASL("SCRAM-SHA-256-PLUS", 100),
    ScramSASL("SCRAM-SHA-256", 90),
    ScramSASL("SCRAM-SHA-1-PLUS", 80),
    ScramSASL("SCRAM-SHA-1", 70),
)

#: The mechanisms by name (what ``sasl_scram`` registers).
BY_NAME: dict[str, ScramSASL] = {mechanism.name: mechanism for mechanism in MECHANISMS}
