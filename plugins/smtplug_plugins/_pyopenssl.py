"""The ``pyopenssl`` TLS backend: :mod:`OpenSSL.SSL` plus :mod:`service_identity`.

It behaves as the ``stdlib`` backend does:

* the certificate chain is verified (``VERIFY_PEER``, against ``cafile`` /
  ``capath`` or else the default store) and the host name is checked with
  :mod:`service_identity` (an IP literal against the certificate's IP
  addresses) during the handshake: the verify callback checks the server's
  certificate (depth 0) once its chain has verified and aborts the handshake
  when the name fails, so a client certificate is never presented to a
  server whose name fails; any failure is a
  :class:`~smtplug.errors.TLSError` with ``certificate=True`` naming what
  failed;
* SNI carries the configured host name, none for an IP literal;
* TLS 1.2 is the minimum;
* a context given by the caller (an :class:`OpenSSL.SSL.Context`) is used as
  it is: its own verify mode (and callback) decides whether the chain is
  verified, and the host name is checked after the handshake whenever that
  mode includes ``VERIFY_PEER`` (its callback is not replaced, so the check
  cannot run inside the handshake; as with the stdlib backend, the other
  options, ``verify`` included, do not apply to a caller's context).

OpenSSL never touches the socket: the connection works over memory
buffers (:class:`PyOpenSSLEngine`), driven by :class:`~smtplug_plugins._tls.EngineStream`
over the blocking socket and by the asyncio streams alike. Every handshake,
read and write is bounded by its timeout, and a write that failed (the
server reset the connection) leaves what the server sent before readable.

Contexts are built once per set of options and shared by the connections
that use them (the verify callback finds each connection's expected name,
and records its failures, through the connection's app data), and a session
saved from one connection is offered to the next one to the same server: a
resumed handshake skips the certificate exchange (and so the callback), the
chain having been verified when the session was made; the host name is then
checked after the handshake against the certificate the session holds.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
from dataclasses import dataclass

import service_identity
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from smtplug.errors import ConnectionLostError, InvalidInputError, TLSError
from smtplug.interfaces import TLSEngine, TLSInfo, TLSOptions, TLSStream
from smtplug_plugins._sockets import SocketStream
from smtplug_plugins._tls import (
    EngineBase,
    EngineStream,
    check_tls_files,
    engine_handshake,
    server_end_point,
)

__all__ = ["PyOpenSSLBackend", "PyOpenSSLEngine"]

# RFC 9266: the label and length of the tls-exporter channel binding.
_EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
_EXPORTER_LENGTH = 32

# The largest slice handed to one SSL_write (its length argument is an int).
_WRITE_CHUNK = 1 << 20

# pyOpenSSL has no wrapper for SSL_session_reused; its binding library does.
# Without it no session is offered: a resumed handshake must be told apart.
try:
    from OpenSSL._util import lib as _openssl

    _session_reused = _openssl.SSL_session_reused
except (ImportError, AttributeError):  # pragma: no cover - older bindings
    _session_reused = None

# Texts for the X509_V_ERR_* codes a server certificate commonly fails with
# (their values are fixed by OpenSSL's x509_vfy.h).
_VERIFY_ERRORS: dict[int, str] = {
    2: "unable to get issuer certificate",
    4: "unable to decrypt certificate's signature",
    6: "unable to decode issuer public key",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    13: "format error in certificate's notBefore field",
    14: "format error in certificate's notAfter field",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate (issuer not trusted)",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    25: "path length constraint exceeded",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
}


def _describe(exc: BaseException) -> str:
    """A readable text for a pyOpenSSL error (its args are lists of tuples)."""
    if isinstance(exc, SSL.SysCallError):
        if exc.args and exc.args[0] == -1:
            return "the connection was closed unexpectedly"
        if len(exc.args) >= 2 and exc.args[1]:
            return f"{exc.args[1]} (errno {exc.args[0]})"
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(item[-1]) for item in exc.args[0] if isinstance(item, tuple) and item]
        if reasons:
            return "; ".join(reasons)
    return str(exc) or type(exc).__name__


def _identities(certificate: x509.Certificate) -> str:
    """The DNS names and IP addresses ``certificate`` is valid for."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return "no subjectAltName"
    found = [
        *names.value.get_values_for_type(x509.DNSName),
        *(str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)),
    ]
    return ", ".join(found) if found else "no DNS name or IP address"


def _ip_literal(host: str) -> str | None:
    """The address ``host`` spells (without an IPv6 zone), or None for a name."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


def _name_mismatch(
    certificate: x509.Certificate, peer: str, name: str, address: str | None
) -> str | None:
    """Why ``certificate`` is not valid for ``address`` (an IP literal) or
    else ``name`` (A-label form), or None when it is."""
    what = "IP address" if address is not None else "host name"
    try:
        if address is not None:
            verify_certificate_ip_address(certificate, address)
        else:
            verify_certificate_hostname(certificate, name)
    except service_identity.VerificationError:
        return (
            f"the certificate of {peer} does not match the {what} {peer!r}: "
            f"it is for {_identities(certificate)}"
        )
    except Exception as exc:  # fail closed: service_identity's or idna's complaint
        return f"the certificate of {peer} cannot be matched to the {what} {peer!r}: {exc}"
    return None


@dataclass
class _VerifyRecord:
    """One connection's expected name and what its verify callback found:
    the first failure OpenSSL reported while verifying the chain, or the host
    name mismatch of the server's certificate."""

    peer: str = ""
    name: str = ""  # the host name in A-label form
    address: str | None = None  # the IP literal, when the host is one
    check_host: bool = False  # check the name in the callback
    error: int | None = None
    depth: int = 0
    subject: str = ""
    mismatch: str | None = None  # why the server's certificate fails the name
    host_checked: bool = False  # the callback found the name valid

    def callback(
        self, conn: SSL.Connection, cert: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        """The verify callback: keeps OpenSSL's verdict, remembering a failure;
        once the server's certificate (depth 0) has verified, its name is
        checked (once), and a mismatch aborts the handshake."""
        if not ok:
            if self.error is None:
                self.error, self.depth = error, depth
                with contextlib.suppress(Exception):
                    self.subject = cert.to_cryptography().subject.rfc4514_string()
            return False
        if depth != 0 or not self.check_host:
            return True
        if not self.host_checked:
            try:
                certificate = cert.to_cryptography()
                self.mismatch = _name_mismatch(certificate, self.peer, self.name, self.address)
            except Exception as exc:  # fail closed: no exception may leave the callback
                self.mismatch = f"the certificate of {self.peer} cannot be checked: {exc}"
            self.host_checked = self.mismatch is None
        return self.host_checked

    def failure(self) -> str | None:
        """The failure the callback recorded, as a message, or None."""
        if self.error is not None:
            return f"the certificate of {self.peer} did not verify: {self.describe()}"
        return self.mismatch

    def describe(self) -> str:
        text = _VERIFY_ERRORS.get(self.error or 0, f"X509 verification error {self.error}")
        where = "the server's certificate" if self.depth == 0 else f"chain depth {self.depth}"
        subject = f" ({self.subject})" if self.subject else ""
        return f"{text} at {where}{subject}"


def _handshake_error(exc: BaseException, conn: SSL.Connection | None, peer: str = "?") -> TLSError:
    """The :class:`TLSError` for a failed handshake: ``certificate=True`` with
    what the verify callback of ``conn`` recorded, if it recorded a failure."""
    if isinstance(exc, TLSError):
        return exc
    record = None if conn is None else conn.get_app_data()
    if isinstance(record, _VerifyRecord):
        failure = record.failure()
        if failure is not None:
            return TLSError(failure, certificate=True)
        peer = record.peer
    return TLSError(f"TLS handshake with {peer} failed: {_describe(exc)}")


def _session(conn: SSL.Connection) -> object | None:
    """The session to resume next time (None when resumption cannot be told)."""
    if _session_reused is None:
        return None
    return conn.get_session()


def _shut_down(conn: SSL.Connection, broken: bool) -> None:
    """Queue close_notify (sent without waiting for the peer's), or after a
    fatal error mark the connection shut without one; never raises."""
    if not broken:
        with contextlib.suppress(Exception):
            conn.shutdown()
    else:
        # No close_notify can go (the socket failed). OpenSSL would void the
        # session when the connection is freed; TLS 1.1 and later no longer
        # ask for that (RFC 5246 section 7.2.1). After a TLS-level error
        # OpenSSL has voided it already, and this does not undo that.
        with contextlib.suppress(Exception):
            conn.set_shutdown(conn.get_shutdown() | SSL.SENT_SHUTDOWN)


class _Channel:
    """Reading and writing a pyOpenSSL connection over memory buffers, errors
    mapped. ``WantReadError``/``WantWriteError`` reach the caller, which asks
    for records; after any other failure the connection is ``_broken`` (no
    close_notify may follow)."""

    _peer: str
    _broken = False

    def _recv(self, conn: SSL.Connection, max_bytes: int) -> bytes:
        """``conn.recv``: ``b""`` once the peer closed, cleanly or not."""
        try:
            return conn.recv(max_bytes)
        except (SSL.WantReadError, SSL.WantWriteError):
            raise
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as exc:
            self._broken = True
            if exc.args and exc.args[0] == -1:  # EOF without close_notify
                return b""
            raise ConnectionLostError(f"read from {self._peer} failed: {_describe(exc)}") from exc
        except SSL.Error as exc:
            self._broken = True
            raise ConnectionLostError(f"read from {self._peer} failed: {_describe(exc)}") from exc

    def _send(self, conn: SSL.Connection, view: memoryview) -> int:
        """``conn.send`` of a slice of ``view``: how many bytes it took."""
        try:
            # After WantWrite the same bytes are offered again, as OpenSSL
            # requires; partial writes are enabled on pyOpenSSL contexts.
            return conn.send(view[:_WRITE_CHUNK])
        except (SSL.WantReadError, SSL.WantWriteError):
            raise
        except SSL.Error as exc:
            self._broken = True
            raise ConnectionLostError(f"write to {self._peer} failed: {_describe(exc)}") from exc


class PyOpenSSLBackend:
    """TLS through pyOpenSSL, with host names checked by service_identity."""

    name = "pyopenssl"

    def check(self, options: TLSOptions) -> None:
        """Raise :class:`InvalidInputError` for a ``context`` that is not an
        :class:`OpenSSL.SSL.Context` or a file option that is not readable."""
        if options.context is not None and not isinstance(options.context, SSL.Context):
            raise InvalidInputError(
                "tls_context for the pyopenssl backend must be an OpenSSL.SSL.Context, "
                f"not {type(options.context).__name__}"
            )
        check_tls_files(options)

    @functools.lru_cache(maxsize=32)  # noqa: B019 - one backend object per registry
    def context(self, options: TLSOptions) -> SSL.Context:
        """The client context the options describe, built once and shared;
        each connection's chain failures go to the :class:`_VerifyRecord` in
        its app data. Raises :class:`TLSError` naming the file OpenSSL cannot
        load."""
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        # A server that closes without close_notify (many do, on an idle
        # timeout) would otherwise be a fatal TLS error that voids the session
        # for resumption. SMTP finds a truncation by itself (a reply or the
        # message is incomplete), and an end of file reads as b"" either way.
        context.set_options(getattr(SSL, "OP_IGNORE_UNEXPECTED_EOF", 0))
        if options.verify:
            context.set_verify(SSL.VERIFY_PEER, _record_failure)
            try:
                if options.cafile is not None or options.capath is not None:
                    context.load_verify_locations(options.cafile, options.capath)
                else:
                    context.set_default_verify_paths()
            except (SSL.Error, OSError, ValueError) as exc:
                raise TLSError(f"CA certificates cannot be loaded: {_describe(exc)}") from exc
        else:
            context.set_verify(SSL.VERIFY_NONE)
        if options.client_cert is not None:
            try:
                context.use_certificate_chain_file(options.client_cert)
                context.use_privatekey_file(options.client_key or options.client_cert)
                context.check_privatekey()
            except (SSL.Error, OSError, ValueError) as exc:
                raise TLSError(f"client certificate cannot be loaded: {_describe(exc)}") from exc
        return context

    def wrap(
        self,
        sock: socket.socket,
        *,
        server_hostname: str,
        options: TLSOptions,
        timeout: float | None,
        session: object | None = None,
    ) -> TLSStream:
        """Handshake on ``sock`` within ``timeout`` seconds and verify the peer.

        Raises :class:`TLSError` (``certificate=True`` for a chain or host-name
        failure) and closes ``sock`` on any failure. ``session`` (from an
        earlier connection's stream) is offered for resumption.
        """
        try:
            return self._wrap(sock, server_hostname, options, timeout, session)
        except TLSError:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        except (SSL.Error, OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                sock.close()
            raise _handshake_error(exc, None, server_hostname) from exc

    def _wrap(
        self,
        sock: socket.socket,
        server_hostname: str,
        options: TLSOptions,
        timeout: float | None,
        session: object | None,
    ) -> EngineStream:
        # The engine (memory buffers) over the socket, not a socket-bound
        # connection: once a write on the socket fails, OpenSSL would read
        # nothing more from it, and the server's refusal sent before it reset
        # the connection would be lost.
        engine = self.engine(server_hostname=server_hostname, options=options, session=session)
        raw = SocketStream(sock, server_hostname)
        try:
            info = engine_handshake(raw, engine, server_hostname, timeout)
        except BaseException:
            engine.close()
            raise
        return EngineStream(raw, engine, server_hostname, info)

    def engine(
        self,
        *,
        server_hostname: str,
        options: TLSOptions,
        session: object | None = None,
    ) -> TLSEngine:
        """The connection ``wrap`` would make, over memory buffers (the host
        name checked in the verify callback the same way)."""
        try:
            conn = self._connection(None, server_hostname, options, session)
        except (SSL.Error, ValueError) as exc:
            raise _handshake_error(exc, None, server_hostname) from exc
        return PyOpenSSLEngine(self, conn)

    def _connection(
        self,
        sock: socket.socket | None,
        server_hostname: str,
        options: TLSOptions,
        session: object | None,
    ) -> SSL.Connection:
        """A client connection over ``sock`` (None: memory buffers) to
        ``server_hostname``, before its handshake: SNI set, ``session``
        offered, its :class:`_VerifyRecord` in the app data."""
        peer = server_hostname
        if isinstance(options.context, SSL.Context):
            context = options.context
            # Used as given, like the stdlib backend's: its verify mode (not
            # options.verify) decides; pyOpenSSL cannot carry a host-name check.
            check_host = bool(context.get_verify_mode() & SSL.VERIFY_PEER)
        else:
            context = self.context(options)
            check_host = options.verify

        if not server_hostname or server_hostname.startswith("."):
            raise TLSError(f"invalid server host name {server_hostname!r} for TLS")
        address = _ip_literal(server_hostname)
        # A name goes on the wire (SNI) and is checked in its A-label form,
        # as the ssl module does it.
        name = server_hostname
        if address is None:
            name = server_hostname.encode("idna").decode("ascii")
        # Read by _record_failure, the shared contexts' callback; a caller's
        # context keeps its own callback, and its name is checked afterwards.
        record = _VerifyRecord(peer=peer, name=name, address=address, check_host=check_host)

        conn = SSL.Connection(context, sock)
        conn.set_app_data(record)
        conn.set_connect_state()
        if address is None:
            conn.set_tlsext_host_name(name.encode("ascii"))
        if isinstance(session, SSL.Session) and _session_reused is not None:
            with contextlib.suppress(SSL.Error):  # not resumable here: a full handshake
                conn.set_session(session)
        return conn

    def _established(self, conn: SSL.Connection) -> TLSInfo:
        """After a completed handshake: the peer verified (when asked for) and
        what was negotiated. Raises :class:`TLSError` (``certificate=True``)
        after queueing a courtesy close_notify."""
        record: _VerifyRecord = conn.get_app_data()
        resumed = _session_reused is not None and bool(_session_reused(conn._ssl))
        verified = False
        if record.check_host:
            try:
                self._verify_peer(
                    conn, record, record.peer, record.name, record.address, resumed=resumed
                )
            except TLSError:
                with contextlib.suppress(Exception):
                    conn.shutdown()  # a courtesy close_notify, without waiting
                raise
            verified = True
        return self._info(conn, verified, resumed)

    @staticmethod
    def _verify_peer(
        conn: SSL.Connection,
        record: _VerifyRecord,
        peer: str,
        name: str,
        address: str | None,
        *,
        resumed: bool,
    ) -> None:
        """After the handshake: the chain verified, and the certificate is
        valid for ``address`` (an IP literal) or else ``name``.

        On a full handshake with a shared context the callback has checked
        the name already (a mismatch aborted the handshake); otherwise it is
        checked here: a resumed session sent no certificate chain (it was
        verified when the session was made, under this same context), and a
        caller's context has its own callback. Either way the certificate the
        connection holds is checked against the name.
        """
        # Under VERIFY_PEER the handshake itself fails on a chain error; the
        # record and the verified chain are checked as further witnesses.
        peer_certificate = conn.get_peer_certificate()
        if resumed and peer_certificate is None:
            raise TLSError(f"the resumed session with {peer} holds no certificate")
        if record.error is not None or not (resumed or conn.get_verified_chain()):
            reason = record.describe() if record.error is not None else "no verified chain"
            raise TLSError(f"the certificate of {peer} did not verify: {reason}", certificate=True)
        if record.host_checked and not resumed:
            return
        if peer_certificate is None:
            raise TLSError(f"{peer} presented no certificate", certificate=True)
        mismatch = _name_mismatch(peer_certificate.to_cryptography(), peer, name, address)
        if mismatch is not None:
            raise TLSError(mismatch, certificate=True)

    def _info(self, conn: SSL.Connection, verified: bool, resumed: bool) -> TLSInfo:
        """What the handshake negotiated, with the channel bindings available:
        ``tls-server-end-point`` always (when the certificate's hash is
        known), ``tls-unique`` on TLS 1.2, ``tls-exporter`` on TLS 1.3."""
        version = conn.get_protocol_version_name()
        # (X509.to_cryptography rather than as_cryptography=, for pyOpenSSL 24.)
        certificate = conn.get_peer_certificate()
        der = (
            None
            if certificate is None
            else certificate.to_cryptography().public_bytes(Encoding.DER)
        )
        bindings: dict[str, bytes] = {}
        if der is not None:
            end_point = server_end_point(der)
            if end_point is not None:
                bindings["tls-server-end-point"] = end_point
        if version == "TLSv1.2":
            # RFC 5929: the first Finished message of the handshake: the
            # client's on a full handshake, the server's on a resumed one.
            finished = conn.get_peer_finished() if resumed else conn.get_finished()
            if finished:
                bindings["tls-unique"] = finished
        elif version == "TLSv1.3":
            bindings["tls-exporter"] = conn.export_keying_material(
                _EXPORTER_LABEL, _EXPORTER_LENGTH, b""
            )
        return TLSInfo(
            backend=self.name,
            version=version,
            cipher=conn.get_cipher_name() or "?",
            peer_certificate=der,
            verified=verified,
            channel_bindings=bindings,
            resumed=resumed,
        )


class PyOpenSSLEngine(_Channel, EngineBase):
    """A :class:`smtplug.interfaces.TLSEngine` over a pyOpenSSL connection
    with memory buffers (``SSL.Connection(context, None)``); the peer is
    verified as :meth:`PyOpenSSLBackend.wrap` verifies it."""

    def __init__(self, backend: PyOpenSSLBackend, conn: SSL.Connection) -> None:
        self._backend = backend
        self._conn = conn
        record = conn.get_app_data()
        self._peer = record.peer if isinstance(record, _VerifyRecord) else "?"
        self._eof = False

    def _advance(self) -> bool:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            self._broken = True
            raise _handshake_error(exc, self._conn) from exc
        return True

    def _established(self) -> TLSInfo:
        return self._backend._established(self._conn)

    def receive(self, data: bytes) -> None:
        if self._eof:
            return
        if data:
            self._conn.bio_write(data)
        else:
            self._eof = True
            self._conn.bio_shutdown()

    def outgoing(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(_WRITE_CHUNK))
            except SSL.WantReadError:
                break
        return b"".join(chunks)

    def read(self, max_bytes: int) -> bytes | None:
        if max_bytes <= 0:
            return b""
        try:
            return self._recv(self._conn, max_bytes)
        except SSL.WantReadError:
            return None
        except SSL.WantWriteError as exc:  # memory buffers never fill up
            raise ConnectionLostError(f"read from {self._peer} failed: {exc}") from exc

    def write(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[self._send(self._conn, view) :]
        except (SSL.WantReadError, SSL.WantWriteError) as exc:
            # Only a renegotiation can make a write wait for the peer.
            self._broken = True
            raise ConnectionLostError(
                f"write to {self._peer} failed: the server renegotiates TLS"
            ) from exc

    def session(self) -> object | None:
        return _session(self._conn)

    def _shut_down(self, broken: bool) -> None:
        _shut_down(self._conn, broken)


def _record_failure(
    conn: SSL.Connection, cert: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    """The shared contexts' verify callback: OpenSSL's verdict, a failure
    recorded in the connection's :class:`_VerifyRecord`."""
    record = conn.get_app_data()
    if isinstance(record, _VerifyRecord):
        return record.callback(conn, cert, error, depth, ok)
    return bool(ok)
