"""Helpers both TLS backends share (a shared module, not a plugin)."""

from __future__ import annotations

import contextlib
import os
import ssl
import time

from smtplug.errors import ConnectionLostError, InvalidInputError, TLSError
from smtplug.interfaces import TLSEngine, TLSInfo, TLSOptions
from smtplug_plugins._sockets import SocketStream

__all__ = ["EngineBase", "EngineStream", "check_tls_files", "engine_handshake", "server_end_point"]

# The most plaintext handed to the engine at once, and read from the socket.
_SLICE = 1 << 16


def _check_file(what: str, path: object, *, directory: bool = False) -> None:
    if path is None:
        return
    if not isinstance(path, str | os.PathLike):
        raise InvalidInputError(f"{what} must be a path, not {type(path).__name__}")
    ok = os.path.isdir(path) if directory else os.path.isfile(path)
    if not ok:
        kind = "directory" if directory else "file"
        raise InvalidInputError(f"{what} {os.fspath(path)!s} is not a readable {kind}")


def check_tls_files(options: TLSOptions) -> None:
    """The checks both backends make on the file options, before connecting."""
    _check_file("cafile", options.cafile)
    _check_file("capath", options.capath, directory=True)
    _check_file("client_cert", options.client_cert)
    _check_file("client_key", options.client_key)
    if options.client_key is not None and options.client_cert is None:
        raise InvalidInputError("client_key given without client_cert")
    # Load them once here, so a bad file fails before any connection is opened
    # (no context built when there is nothing to load: it costs about 180 µs,
    # every call with the default usetls=True).
    if options.cafile is None and options.client_cert is None:
        return
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if options.cafile is not None:
        try:
            probe.load_verify_locations(cafile=options.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInputError(f"cafile {options.cafile} cannot be loaded: {exc}") from exc
    if options.client_cert is not None:
        try:
            probe.load_cert_chain(options.client_cert, options.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInputError(
                f"client certificate {options.client_cert} cannot be loaded "
                f"(with key {options.client_key}): {exc}"
            ) from exc


def server_end_point(der: bytes) -> bytes | None:
    """RFC 5929 ``tls-server-end-point`` channel binding for a DER certificate.

    The certificate's hash under its signature's hash algorithm, with MD5 and
    SHA-1 replaced by SHA-256; None when the algorithm is unknown (Ed25519).
    """
    # Imported here: a plain-text send never needs cryptography (about 40 ms).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        certificate = x509.load_der_x509_certificate(der)
        algorithm = certificate.signature_hash_algorithm
    except (ValueError, x509.UnsupportedGeneralNameType):
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der)
    return digest.finalize()


class EngineBase:
    """What the :class:`smtplug.interfaces.TLSEngine` of each backend shares:
    the handshake's bookkeeping, ``info`` and an idempotent ``close``.

    A subclass sets ``_peer`` and implements ``_advance`` (one handshake
    step: True once complete, :class:`TLSError` on failure, setting
    ``_broken``), ``_established`` (the peer's checks and the
    :class:`TLSInfo`, called once) and ``_shut_down`` (queue close_notify,
    or after a failure mark the connection shut; never raises).
    """

    _peer = "?"
    _info: TLSInfo | None = None
    _broken = False  # after a TLS error no close_notify may be sent
    _closed = False

    def _advance(self) -> bool:
        raise NotImplementedError

    def _established(self) -> TLSInfo:
        raise NotImplementedError

    def _shut_down(self, broken: bool) -> None:
        raise NotImplementedError

    def handshake(self) -> bool:
        if self._info is None:
            if not self._advance():
                return False
            self._info = self._established()
        return True

    def info(self) -> TLSInfo:
        if self._info is None:
            raise TLSError(f"the TLS handshake with {self._peer} is not complete")
        return self._info

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shut_down(self._broken or self._info is None)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def engine_handshake(
    raw: SocketStream, engine: TLSEngine, peer: str, timeout: float | None
) -> TLSInfo:
    """Run ``engine``'s handshake over the blocking socket stream ``raw``
    within ``timeout`` seconds: the peer verified, what was negotiated.

    Raises :class:`TLSError` (the engine's own, ``certificate=True`` for a
    chain or name failure; a lost connection or the timeout as a TLS failure).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            done = engine.handshake()
            records = engine.outgoing()
            if records:
                raw.write(records, _left(deadline))
            if done:
                return engine.info()
            engine.receive(raw.read(_SLICE, _left(deadline)))
    except ConnectionLostError as exc:
        if exc.timed_out:
            raise TLSError(f"TLS handshake with {peer} timed out after {timeout} s") from exc
        raise TLSError(f"TLS handshake with {peer} failed: {exc.diagnostic}") from exc


class EngineStream:
    """A :class:`smtplug.interfaces.TLSStream`: a :class:`TLSEngine` (records
    in memory buffers) over a blocking socket stream whose handshake is done.

    The socket is read and written here, not by the TLS library, so a write
    that failed (the server reset the connection after its refusal) leaves
    the TLS state intact: what the server sent before is still read, as on a
    plain connection, and the drivers report it instead of the failed write.
    ``read``/``write``/``close`` keep :class:`SocketStream`'s contract.
    """

    def __init__(self, raw: SocketStream, engine: TLSEngine, peer: str, info: TLSInfo) -> None:
        self._raw: SocketStream | None = raw
        self._engine = engine
        self._peer = peer
        self._tls_info = info
        self._write_failed = False  # no close_notify may follow, reads still may

    @property
    def tls(self) -> bool:
        return True

    @property
    def tls_info(self) -> TLSInfo:
        return self._tls_info

    @property
    def peer(self) -> str:
        return self._peer

    def _live(self) -> SocketStream:
        if self._raw is None:
            raise ConnectionLostError(f"connection to {self._peer} is closed")
        return self._raw

    def tls_session(self) -> object | None:
        """The session to resume on the next connection (None once closed)."""
        return None if self._raw is None else self._engine.session()

    def _flush(self, raw: SocketStream, timeout: float | None) -> None:
        records = self._engine.outgoing()
        if records and not self._write_failed:
            try:
                raw.write(records, timeout)
            except ConnectionLostError as exc:
                if not exc.timed_out:
                    self._write_failed = True
                raise

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        """Decrypted bytes (what the engine holds comes without waiting);
        ``b""`` once the peer closed; ``timeout`` 0 never waits."""
        raw = self._live()
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        if max_bytes == 0:
            return b""
        deadline = None if timeout is None else time.monotonic() + timeout
        engine = self._engine
        ended = False
        while True:
            data = engine.read(max_bytes)
            # Reading may have made records (a TLS 1.2 alert, a key update).
            self._flush(raw, timeout)
            if data is not None:
                return data
            if ended:  # the peer closed the TCP connection within a record
                return b""
            received = raw.read(_SLICE, _left(deadline))
            ended = not received
            engine.receive(received)

    def write(self, data: bytes, timeout: float | None) -> None:
        """Send all of ``data``; fail when no byte goes for ``timeout`` seconds."""
        raw = self._live()
        if self._write_failed:
            raise ConnectionLostError(f"write to {self._peer} failed: the connection was reset")
        view = memoryview(data).cast("B")
        while view:
            self._engine.write(view[:_SLICE].tobytes())
            view = view[_SLICE:]
            self._flush(raw, timeout)

    def close(self) -> None:
        """Send close_notify if possible (without waiting), close the socket."""
        raw, self._raw = self._raw, None
        if raw is None:
            return
        self._engine.close()
        if not self._write_failed:
            with contextlib.suppress(ConnectionLostError):
                records = self._engine.outgoing()
                if records:
                    raw.write(records, 0)
        raw.close()
