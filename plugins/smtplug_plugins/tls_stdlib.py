"""The ``stdlib`` TLS backend: Python's :mod:`ssl` module.

Certificate chain and host name are verified by default (``check_hostname``
with ``CERT_REQUIRED``); SNI carries the configured host name (the ``ssl``
module sends none for an IP literal and checks the certificate's IP SAN
instead); TLS 1.2 is the minimum. A context given by the caller
(``tls_context=``) is used as it is.
"""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import Sequence

from smtplug.errors import InvalidInputError, TLSError
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import TLSBackend, TLSInfo, TLSOptions, TLSStream
from smtplug_plugins._sockets import SocketStream
from smtplug_plugins._tls import check_tls_files, server_end_point

__all__ = ["StdlibBackend"]


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
            resume = session if isinstance(session, ssl.SSLSession) else None
            try:
                tls_sock = context.wrap_socket(
                    sock, server_hostname=server_hostname, session=resume
                )
            except ValueError:  # the session came from another context: start afresh
                if resume is None:
                    raise
                tls_sock = context.wrap_socket(sock, server_hostname=server_hostname)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise TLSError(
                f"the certificate of {peer} did not verify: {exc.verify_message or exc}",
                certificate=True,
            ) from exc
        except TimeoutError as exc:
            sock.close()
            raise TLSError(f"TLS handshake with {peer} timed out after {timeout} s") from exc
        except (OSError, ssl.SSLError, ValueError) as exc:
            sock.close()
            raise TLSError(f"TLS handshake with {peer} failed: {exc}") from exc

        der = tls_sock.getpeercert(binary_form=True)
        bindings: dict[str, bytes] = {}
        unique = tls_sock.get_channel_binding("tls-unique")
        if unique is not None and tls_sock.version() != "TLSv1.3":
            bindings["tls-unique"] = unique
        if der:
            end_point = server_end_point(der)
            if end_point is not None:
                bindings["tls-server-end-point"] = end_point
        cipher = tls_sock.cipher()
        info = TLSInfo(
            backend=self.name,
            version=tls_sock.version() or "?",
            cipher=cipher[0] if cipher else "?",
            peer_certificate=der,
            verified=context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname,
            channel_bindings=bindings,
            resumed=bool(tls_sock.session_reused),
        )
        return SocketStream(tls_sock, peer, tls_info=info)


@hookimpl
def smtplug_register_tls_backends() -> Sequence[TLSBackend]:
    return [StdlibBackend()]
