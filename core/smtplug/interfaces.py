"""The shapes plugins implement, as typing protocols.

A plugin module registers objects of these shapes through the register-style
hooks of :mod:`smtplug.hookspecs`. The core only ever talks to plugins through
these protocols: it never imports a plugin module by name.

The network boundary is deliberately tiny (after httpcore): a
:class:`Transport` opens a :class:`Stream`; a stream reads, writes and closes.
Operating-system and TLS exceptions are mapped to :mod:`smtplug.errors` at that
boundary, so nothing above it ever sees an ``OSError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "ConnectionInfo",
    "SASLExchange",
    "SASLMechanism",
    "Stream",
    "TLSBackend",
    "TLSPolicy",
    "Transport",
]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What observers are told about the connection an event belongs to."""

    server: str
    port: int
    transport: str
    tls: bool = False


@runtime_checkable
class Stream(Protocol):
    """A connected byte channel to one server.

    ``read`` returns at most ``max_bytes`` bytes, and ``b""`` once the peer has
    closed; it raises :class:`smtplug.errors.ConnectionLostError` (with
    ``timed_out=True`` when ``timeout`` seconds pass without data) on failure.
    ``write`` sends every byte or raises ``ConnectionLostError``. ``close`` is
    idempotent and never raises.
    """

    @property
    def tls(self) -> bool:
        """True once the channel is encrypted."""
        ...

    def read(self, max_bytes: int, timeout: float | None) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Opens streams: ``plain`` (TCP), ``starttls``, ``implicit-tls``.

    ``connect`` raises :class:`smtplug.errors.ConnectError` when the
    connection cannot be made (refused, unreachable, name not found, timeout).
    ``options`` holds the caller's transport and TLS options by name.
    """

    name: str

    def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> Stream: ...


@runtime_checkable
class TLSBackend(Protocol):
    """Secures a stream with TLS (``stdlib``, ``pyopenssl``).

    ``wrap`` performs the handshake over ``stream`` and returns the encrypted
    stream; it verifies the certificate chain and ``server_hostname`` unless
    the caller opted out. Failures raise :class:`smtplug.errors.TLSError`.
    """

    name: str

    def wrap(self, stream: Stream, server_hostname: str, options: Mapping[str, Any]) -> Stream: ...


class SASLExchange(Protocol):
    """One authentication attempt with one mechanism."""

    def initial_response(self) -> bytes | None:
        """The RFC 4954 initial response, or None to wait for a challenge."""
        ...

    def respond(self, challenge: bytes) -> bytes:
        """The answer to one server challenge (already base64-decoded)."""
        ...


@runtime_checkable
class SASLMechanism(Protocol):
    """A SASL mechanism (``PLAIN``, ``CRAM-MD5``, ``SCRAM-SHA-256`` ...).

    ``strength`` orders mechanisms, strongest (highest) first;
    ``exposes_password`` is True when a passive listener learns the password
    (PLAIN, LOGIN), so the core refuses it on an unencrypted link.
    """

    name: str
    strength: int
    exposes_password: bool

    def start(self, *, username: str, password: str, hostname: str) -> SASLExchange: ...


@runtime_checkable
class TLSPolicy(Protocol):
    """Decides what happens when TLS cannot be set up with a server.

    ``decide`` is called with the SMTP code (or a pseudo code) and the
    diagnostic, as Tcllib's ``-tlspolicy`` command is, and returns
    ``"secure"`` (give up this server, try the next) or ``"insecure"``
    (carry on without TLS).
    """

    name: str

    def decide(self, code: int, diagnostic: str) -> Literal["secure", "insecure"]: ...
