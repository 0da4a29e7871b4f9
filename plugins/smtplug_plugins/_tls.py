"""Helpers both TLS backends share (a shared module, not a plugin)."""

from __future__ import annotations

import os
import ssl

from smtplug.errors import InvalidInputError, TLSError
from smtplug.interfaces import TLSInfo, TLSOptions

__all__ = ["EngineBase", "check_tls_files", "server_end_point"]


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
    # Load them once here, so a bad file fails before any connection is opened.
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
