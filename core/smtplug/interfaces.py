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

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from smtplug.errors import PluginError

__all__ = [
    "SMTP",
    "AsyncResumableStream",
    "AsyncStream",
    "AsyncTLSStream",
    "AsyncTransport",
    "AsyncUpgradableStream",
    "ConnectionInfo",
    "Dialect",
    "EngineTLSBackend",
    "OAuthTokenProvider",
    "ResumableStream",
    "SASLCredentials",
    "SASLExchange",
    "SASLMechanism",
    "Stream",
    "TLSBackend",
    "TLSEngine",
    "TLSFailure",
    "TLSFailureKind",
    "TLSInfo",
    "TLSOptions",
    "TLSPolicy",
    "TLSStream",
    "Transport",
    "UpgradableStream",
]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What observers are told about the connection an event belongs to.

    ``connection`` numbers the connections of this process (from 1; 0 before
    one is opened), so that the records of one session can be told apart.
    """

    server: str
    port: int
    transport: str
    tls: bool = False
    connection: int = 0


@runtime_checkable
class Stream(Protocol):
    """A connected byte channel to one server.

    ``read`` returns at most ``max_bytes`` bytes, and ``b""`` once the peer has
    closed; it raises :class:`smtplug.errors.ConnectionLostError` (with
    ``timed_out=True`` when ``timeout`` seconds pass without data) on failure.
    ``write`` sends every byte or raises ``ConnectionLostError`` (with
    ``timed_out=True`` when ``timeout`` seconds pass without the peer taking
    any of them: RFC 5321's per-block wait, not a limit on the whole write).
    ``close`` is idempotent and never raises.
    """

    @property
    def tls(self) -> bool:
        """True once the channel is encrypted."""
        ...

    def read(self, max_bytes: int, timeout: float | None) -> bytes: ...

    def write(self, data: bytes, timeout: float | None) -> None: ...

    def close(self) -> None: ...


_VERB = re.compile(r"[A-Z]{1,16}")


@dataclass(frozen=True, slots=True)
class Dialect:
    """The protocol a transport's servers speak: SMTP, or a variant of it.

    A transport may declare one as its ``dialect`` attribute (its asyncio
    variant, registered under the same name, declares the same); one that
    does not speaks SMTP (:data:`SMTP`). The core reads it when it plans the
    connections and nowhere else decides by protocol:

    * ``hello``: the verb that opens the session and asks for the
      capabilities (``EHLO``; LMTP's ``LHLO``, RFC 2033 section 4.1);
    * ``fallback_hello``: the verb tried after a permanent refusal of
      ``hello`` (``HELO``), or None when there is none (LMTP);
    * ``replies_per_recipient``: after the end of the message (the final "."
      or ``BDAT ... LAST``) the server sends one reply per recipient it
      accepted at RCPT, in RCPT order, instead of one for the message (LMTP,
      RFC 2033 section 4.2);
    * ``name``: how messages call it.

    A malformed one (a verb that is not A-Z) raises
    :class:`smtplug.errors.PluginError` when it is made.
    """

    name: str = "SMTP"
    hello: str = "EHLO"
    fallback_hello: str | None = "HELO"
    replies_per_recipient: bool = False

    def __post_init__(self) -> None:
        for what, verb in (("hello", self.hello), ("fallback_hello", self.fallback_hello)):
            if verb is not None and (not isinstance(verb, str) or not _VERB.fullmatch(verb)):
                raise PluginError(f"Dialect.{what} must be a command verb (A-Z), not {verb!r}")
        if not isinstance(self.name, str) or not self.name.isprintable() or not self.name:
            raise PluginError(f"Dialect.name must be a non-empty printable str, not {self.name!r}")


#: What a transport without a ``dialect`` attribute speaks.
SMTP = Dialect()


@runtime_checkable
class Transport(Protocol):
    """Opens streams: ``plain`` (TCP), ``starttls``, ``implicit-tls``.

    ``connect`` raises :class:`smtplug.errors.ConnectError` when the
    connection cannot be made (refused, unreachable, name not found, timeout).
    ``options`` holds the caller's transport and TLS options by name.

    Two optional attributes (a transport without them is an SMTP transport
    to host names): ``dialect``, a :class:`Dialect` (the protocol variant
    its servers speak), and ``accepts_server(server) -> bool``, True when
    ``server`` is an address of the transport's own rather than a host name
    (a Unix socket path), already checked (it raises
    :class:`smtplug.errors.InvalidInputError` for a malformed one), False to
    have the core check it as a host name. Both are read before any
    connection is opened.
    """

    name: str

    def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> Stream: ...


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """The caller's TLS settings, the same for every backend.

    ``verify`` False turns off certificate and host-name checks (the
    ``tls_verify=False`` opt-out). ``context`` is a ready backend-specific
    context (``ssl.SSLContext`` for ``stdlib``, ``OpenSSL.SSL.Context`` for
    ``pyopenssl``) used as given, instead of building one from the other
    options.
    """

    verify: bool = True
    cafile: str | None = None
    capath: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    context: object | None = None


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What a TLS handshake negotiated, as the backend reports it.

    ``channel_bindings`` maps RFC 5929/9266 binding types (``"tls-unique"``,
    ``"tls-server-end-point"``, ``"tls-exporter"``) to their data, for those
    the backend and the negotiated version can provide (SCRAM-PLUS uses them).
    """

    backend: str
    version: str
    cipher: str
    peer_certificate: bytes | None = field(repr=False)  # DER: long, and not for logs
    verified: bool
    channel_bindings: Mapping[str, bytes] = field(repr=False)  # secrets of the session
    resumed: bool = False  # an earlier TLS session was resumed (no full handshake)


@runtime_checkable
class TLSStream(Stream, Protocol):
    """A stream encrypted by a TLS backend."""

    @property
    def tls_info(self) -> TLSInfo: ...


@runtime_checkable
class ResumableStream(TLSStream, Protocol):
    """A TLS stream whose session can be resumed on a later connection."""

    def tls_session(self) -> object | None:
        """The session to hand to the backend's ``wrap(session=...)`` next time
        (read it before closing: TLS 1.3 tickets arrive after the handshake)."""
        ...


@runtime_checkable
class UpgradableStream(Stream, Protocol):
    """A plain stream that can be secured in place (STARTTLS)."""

    def start_tls(self, timeout: float | None) -> TLSStream:
        """Run the TLS handshake over this connection and return the secured
        stream; this stream must not be used afterwards. Raises
        :class:`smtplug.errors.TLSError` (``certificate=True`` when the
        peer's certificate failed verification)."""
        ...


@runtime_checkable
class TLSBackend(Protocol):
    """Secures a connection with TLS (``stdlib``, ``pyopenssl``): a connected
    blocking socket (``wrap``), or memory buffers (``engine``) for a driver
    that does its own I/O.

    ``check`` validates ``options`` for this backend (a ``context`` of the
    wrong type, unreadable files) and raises
    :class:`smtplug.errors.InvalidInputError`; it is called before any
    connection is opened. ``wrap`` performs the handshake on ``sock`` within
    ``timeout`` seconds: it sends SNI (none for an IP literal), refuses
    protocols below TLS 1.2, and verifies the certificate chain and
    ``server_hostname`` unless ``options.verify`` is False. It raises
    :class:`smtplug.errors.TLSError` (``certificate=True`` for a failed
    certificate check) and closes ``sock`` on failure. ``session`` is a
    session an earlier stream of this backend returned from ``tls_session()``
    (see :class:`ResumableStream`), to resume where the backend can; a backend
    that cannot resume ignores it.
    """

    name: str

    def check(self, options: TLSOptions) -> None: ...

    def wrap(
        self,
        sock: socket.socket,
        *,
        server_hostname: str,
        options: TLSOptions,
        timeout: float | None,
        session: object | None = None,
    ) -> TLSStream: ...


@runtime_checkable
class EngineTLSBackend(TLSBackend, Protocol):
    """A :class:`TLSBackend` that can also run over memory buffers, and so
    serve the asyncio driver (both built-in backends can). A backend without
    ``engine`` still serves the blocking API; the async API names it in a
    clear error.
    """

    def engine(
        self,
        *,
        server_hostname: str,
        options: TLSOptions,
        session: object | None = None,
    ) -> TLSEngine:
        """A :class:`TLSEngine` for one connection to ``server_hostname``, with
        ``wrap``'s guarantees (SNI, TLS 1.2 at least, chain and host name
        verified during the handshake unless ``options.verify`` is False,
        ``session`` resumed where possible); no I/O happens here."""
        ...


@runtime_checkable
class TLSEngine(Protocol):
    """A client TLS connection over memory buffers: no socket, never waits.

    What a TLS backend hands a driver that owns its own I/O (the asyncio
    driver): the driver moves records between the network and the engine.

    * ``handshake()`` advances the handshake with the records received so
      far; True once it is complete (then :meth:`info` is valid). It raises
      :class:`smtplug.errors.TLSError` (``certificate=True`` when the
      certificate chain or the host name did not verify: checked during the
      handshake, before any application byte is exchanged).
    * ``receive(data)`` hands over records read from the network (``b""``
      when the peer closed the TCP connection).
    * ``outgoing()`` returns the records to write now (``b""`` when none):
      call it after every other method.
    * ``read(max_bytes)`` returns decrypted bytes, None when more records are
      needed, ``b""`` once the peer closed TLS (close_notify or EOF); raises
      :class:`smtplug.errors.ConnectionLostError` on a TLS error.
    * ``write(data)`` encrypts ``data`` (the records come from ``outgoing``).
    * ``session()`` the session to resume on a later connection (read it
      before closing: TLS 1.3 tickets arrive after the handshake), or None.
    * ``close()`` queues close_notify (``outgoing`` has it); never raises.
    """

    def handshake(self) -> bool: ...

    def receive(self, data: bytes) -> None: ...

    def outgoing(self) -> bytes: ...

    def read(self, max_bytes: int) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...

    def info(self) -> TLSInfo: ...

    def session(self) -> object | None: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncStream(Protocol):
    """A connected byte channel for the asyncio driver: :class:`Stream`'s
    contract with ``read`` and ``write`` awaited.

    ``read(max_bytes, 0)`` does not wait: it returns what already arrived,
    or raises :class:`smtplug.errors.ConnectionLostError` with
    ``timed_out=True`` when nothing did. ``close`` is synchronous,
    idempotent and never raises (it may queue close_notify and abort).
    Cancelling a ``read`` or ``write`` leaves the stream unusable; the driver
    closes it.
    """

    @property
    def tls(self) -> bool: ...

    async def read(self, max_bytes: int, timeout: float | None) -> bytes: ...

    async def write(self, data: bytes, timeout: float | None) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncTLSStream(AsyncStream, Protocol):
    """An asyncio stream encrypted by a TLS backend."""

    @property
    def tls_info(self) -> TLSInfo: ...


@runtime_checkable
class AsyncResumableStream(AsyncTLSStream, Protocol):
    """An asyncio TLS stream whose session can be resumed later
    (see :class:`ResumableStream`)."""

    def tls_session(self) -> object | None: ...


@runtime_checkable
class AsyncUpgradableStream(AsyncStream, Protocol):
    """A plain asyncio stream that can be secured in place (STARTTLS):
    :meth:`UpgradableStream.start_tls`, awaited."""

    async def start_tls(self, timeout: float | None) -> AsyncTLSStream: ...


@runtime_checkable
class AsyncTransport(Protocol):
    """The asyncio variant of a :class:`Transport`, registered under the same
    name (``plain``, ``starttls``, ``implicit-tls``) through
    ``smtplug_register_async_transports``. ``connect`` is awaited and raises
    what :meth:`Transport.connect` raises; the ``options`` are the same.
    """

    name: str

    async def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> AsyncStream: ...


@dataclass(frozen=True, slots=True)
class SASLCredentials:
    """What a SASL mechanism may use for one authentication.

    ``password`` is the caller's ``password=``; ``oauth_token`` returns the
    OAuth 2.0 bearer token (the caller's ``oauth_token=``, a str or an
    :class:`OAuthTokenProvider`, called once per attempt); either may be None.
    ``oauth_refresh`` returns a new token after the server refused the one
    ``oauth_token`` gave (the provider asked again, see
    :class:`OAuthTokenProvider`), or is None when the token cannot be renewed
    (a str token, or none): the core, not the mechanism, uses it, retrying the
    mechanism once with ``oauth_token`` set to it. ``hostname`` is the
    server's name as given in ``servers`` (DIGEST-MD5's digest-uri,
    OAUTHBEARER's host); ``port`` its port; ``tls`` what TLS negotiated (None
    on a plain connection: -PLUS mechanisms need its ``channel_bindings``).
    Secrets never appear in the repr.
    """

    username: str
    password: str | None = field(default=None, repr=False)
    oauth_token: Callable[[], str] | None = field(default=None, repr=False)
    authzid: str | None = None
    hostname: str = "localhost"
    port: int = 25
    service: str = "smtp"
    tls: TLSInfo | None = None
    oauth_refresh: Callable[[], str] | None = field(default=None, repr=False)


class OAuthTokenProvider(Protocol):
    """What ``oauth_token=`` may be instead of a str: a source of fresh tokens.

    smtplug calls it with no argument for the token of each authentication.
    When the server refuses that token (XOAUTH2/OAUTHBEARER answered 535, or
    an error challenge and then a 5xx), smtplug calls it once more, with
    ``refused=True``, and retries the mechanism once with what it returns: a
    provider holding a cached token should then fetch a new one rather than
    hand back the one just refused. A plain function taking no argument is a
    provider too: it is then called again with no argument (smtplug passes
    ``refused`` only to a callable whose signature accepts it). The token is
    never logged or shown in an error; what the provider raises is named only
    by its type.
    """

    def __call__(self, *, refused: bool = False) -> str: ...


class SASLExchange(Protocol):
    """One authentication attempt with one mechanism (a client state machine).

    ``initial_response`` gives the RFC 4954 initial response (``b""`` for an
    empty one), or None to wait for the server's first challenge;
    ``respond`` answers each challenge (already base64-decoded);
    ``verify`` is called after the server's 235 and raises
    :class:`smtplug.errors.AuthenticationError` when the mechanism's own
    check of the server failed or did not happen (SCRAM's server signature).
    Any exception from these methods cancels the exchange (``*``).
    """

    def initial_response(self) -> bytes | None: ...

    def respond(self, challenge: bytes) -> bytes: ...

    def verify(self) -> None: ...


@runtime_checkable
class SASLMechanism(Protocol):
    """A SASL mechanism (``PLAIN``, ``CRAM-MD5``, ``SCRAM-SHA-256`` ...).

    ``name`` is the name servers advertise after AUTH (upper case).
    ``strength`` orders mechanisms, strongest (highest) first.
    ``exposes_password`` is True when a passive listener learns the secret
    (PLAIN, LOGIN, XOAUTH2's bearer token): such a mechanism is used only
    over TLS or to a loopback host unless the caller opts in.
    ``supported(credentials)`` says whether the mechanism can run with what
    the caller gave (a password, a token, a TLS channel binding ...).
    """

    name: str
    strength: int
    exposes_password: bool

    def supported(self, credentials: SASLCredentials) -> bool: ...

    def start(self, credentials: SASLCredentials) -> SASLExchange: ...


TLSFailureKind = Literal["absent", "unavailable", "refused", "handshake", "certificate"]


@dataclass(frozen=True, slots=True)
class TLSFailure:
    """Why TLS could not be set up with a server.

    ``kind`` is one of:

    * ``"absent"``: the server does not offer STARTTLS;
    * ``"unavailable"``: it does, but this installation has no STARTTLS
      transport (blocked or not installed);
    * ``"refused"``: it answered STARTTLS with something other than 220;
    * ``"handshake"``: the TLS handshake failed;
    * ``"certificate"``: the server's certificate or host name did not verify.

    ``code`` is the server's reply code, or 454 for local failures (RFC 3207's
    "TLS not available"); ``diagnostic`` says what happened.
    """

    kind: TLSFailureKind
    code: int
    diagnostic: str


@runtime_checkable
class TLSPolicy(Protocol):
    """Decides what happens when TLS cannot be set up with a server.

    ``decide`` returns ``"secure"`` (give this server up, try the next) or
    ``"insecure"`` (carry on without TLS: on the same connection after a
    refused STARTTLS, on a fresh plain connection to the same server after a
    failed handshake).
    """

    name: str

    def decide(self, failure: TLSFailure) -> Literal["secure", "insecure"]: ...
