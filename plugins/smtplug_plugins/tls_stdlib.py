"""The ``stdlib`` TLS backend: Python's :mod:`ssl` module.

Certificate chain and host name are verified by default (``check_hostname``
with ``CERT_REQUIRED``); SNI carries the configured host name (the ``ssl``
module sends none for an IP literal and checks the certificate's IP SAN
instead); TLS 1.2 is the minimum. A context given by the caller
(``tls_context=``) is used as it is.

``wrap`` secures a blocking socket (:class:`ssl.SSLSocket`); ``engine`` hands
out the same connection over memory buffers (:class:`ssl.SSLObject` over
:class:`ssl.MemoryBIO`) for the asyncio driver. Both use the same cached
context, the same session handling, error mapping and :class:`TLSInfo`.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import TypeVar

from smtplug.errors import ConnectionLostError, InvalidInputError, TLSError
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import TLSBackend, TLSEngine, TLSInfo, TLSOptions, TLSStream
from smtplug_plugins._sockets import SocketStream
from smtplug_plugins._tls import EngineBase, check_tls_files, server_end_point

__all__ = ["StdlibBackend", "StdlibEngine"]

_T = TypeVar("_T", ssl.SSLSocket, ssl.SSLObject)


def _resuming(make: Callable[[ssl.SSLSession | None], _T], session: object | None) -> _T:
    """``make(session)``, or ``make(None)`` when the session belongs to
    another context (the ssl module refuses it): a full handshake then."""
    resume = session if isinstance(session, ssl.SSLSession) else None
    try:
        return make(resume)
    except ValueError:
        if resume is None:
            raise
        return make(None)


def _handshake_error(exc: BaseException, peer: str, timeout: float | None) -> TLSError:
    """The :class:`TLSError` a failed handshake (of ``wrap`` or an engine) raises."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(
            f"the certificate of {peer} did not verify: {exc.verify_message or exc}",
            certificate=True,
        )
    if isinstance(exc, TimeoutError):
        return TLSError(f"TLS handshake with {peer} timed out after {timeout} s")
    return TLSError(f"TLS handshake with {peer} failed: {exc}")


def _info(backend: str, tls: ssl.SSLSocket | ssl.SSLObject, context: ssl.SSLContext) -> TLSInfo:
    """What the handshake of ``tls`` (a socket or a memory-buffer object) negotiated."""
    der = tls.getpeercert(binary_form=True)
    bindings: dict[str, bytes] = {}
    unique = tls.get_channel_binding("tls-unique")
    if unique is not None and tls.version() != "TLSv1.3":
        bindings["tls-unique"] = unique
    if der:
        end_point = server_end_point(der)
        if end_point is not None:
            bindings["tls-server-end-point"] = end_point
    cipher = tls.cipher()
    return TLSInfo(
        backend=backend,
        version=tls.version() or "?",
        cipher=cipher[0] if cipher else "?",
        peer_certificate=der,
        verified=context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname,
        channel_bindings=bindings,
        resumed=bool(tls.session_reused),
    )


class StdlibBackend:
    """TLS through :mod:`ssl`."""

    name = "stdlib"

    def check(self, options: TLSOptions) -> None:
        if options.context is not None and not isinstance(options.context, ssl.SSLContext):
            raise InvalidInputError(
                "tls_context for the stdlib backend must be an ssl.SSLContext, "
                f"not {type(options.context).__name__}"
            )
        check_tls_files(options)

    def context(self, options: TLSOptions) -> ssl.SSLContext:
        """The context the options describe (or the caller's own).

        Built once per distinct options and reused: loading the trust store is
        not free, and a TLS session can be resumed only with the context that
        made it.
        """
        if isinstance(options.context, ssl.SSLContext):
            return options.context
        return self._context(options)

    @functools.lru_cache(maxsize=32)  # noqa: B019 - one backend object per registry
    def _context(self, options: TLSOptions) -> ssl.SSLContext:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=options.cafile, capath=options.capath
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not options.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if options.client_cert is not None:
            try:
                context.load_cert_chain(options.client_cert, options.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidInputError(f"client certificate cannot be loaded: {exc}") from exc
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
        peer = server_hostname
        try:
            context = self.context(options)
        except InvalidInputError:
            sock.close()
            raise
        try:
            sock.settimeout(timeout)
            tls_sock = _resuming(
                lambda resume: context.wrap_socket(
                    sock, server_hostname=server_hostname, session=resume
                ),
                session,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            sock.close()
            raise _handshake_error(exc, peer, timeout) from exc
        return SocketStream(tls_sock, peer, tls_info=_info(self.name, tls_sock, context))

    def engine(
        self,
        *,
        server_hostname: str,
        options: TLSOptions,
        session: object | None = None,
    ) -> TLSEngine:
        """The connection ``wrap`` would make, over memory buffers."""
        context = self.context(options)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            tls = _resuming(
                lambda resume: context.wrap_bio(
                    incoming, outgoing, server_hostname=server_hostname, session=resume
                ),
                session,
            )
        except (ssl.SSLError, ValueError) as exc:
            raise _handshake_error(exc, server_hostname, None) from exc
        return StdlibEngine(tls, incoming, outgoing, context, backend=self.name)


class StdlibEngine(EngineBase):
    """A :class:`smtplug.interfaces.TLSEngine` over :class:`ssl.SSLObject`."""

    def __init__(
        self,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        context: ssl.SSLContext,
        *,
        backend: str,
    ) -> None:
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._context = context
        self._backend = backend
        self._peer = tls.server_hostname or "?"

    def _advance(self) -> bool:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._broken = True
            raise _handshake_error(exc, self._peer, None) from exc
        return True

    def _established(self) -> TLSInfo:
        return _info(self._backend, self._tls, self._context)

    def receive(self, data: bytes) -> None:
        if self._incoming.eof:
            return
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def outgoing(self) -> bytes:
        if not self._outgoing.pending:
            return b""
        return self._outgoing.read()

    def read(self, max_bytes: int) -> bytes | None:
        if max_bytes <= 0:
            return b""
        try:
            return self._tls.read(max_bytes)
        except ssl.SSLWantReadError:
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # close_notify, or an end of file without it (as ssl sockets'
            # suppress_ragged_eofs): either way the peer is gone.
            return b""
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._broken = True
            raise ConnectionLostError(f"read from {self._peer} failed: {exc}") from exc

    def write(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[self._tls.write(view) :]
        except ssl.SSLWantReadError as exc:
            # Only a renegotiation can make a write wait for the peer.
            self._broken = True
            raise ConnectionLostError(
                f"write to {self._peer} failed: the server renegotiates TLS"
            ) from exc
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._broken = True
            raise ConnectionLostError(f"write to {self._peer} failed: {exc}") from exc

    def session(self) -> object | None:
        return self._tls.session

    def _shut_down(self, broken: bool) -> None:
        if broken:
            return
        # Queues close_notify; "want read" means the peer's has not come yet.
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self._tls.unwrap()


@hookimpl
def smtplug_register_tls_backends() -> Sequence[TLSBackend]:
    return [StdlibBackend()]
