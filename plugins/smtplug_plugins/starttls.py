"""The ``starttls`` transport: TCP that can be secured in place (RFC 3207).

The connection starts in plain text; when the server offers STARTTLS and
answers it with 220, the core asks the stream to ``start_tls``, which hands
the socket to the chosen TLS backend for the handshake.

Transport options used: ``tls_backend`` (a :class:`~smtplug.interfaces.TLSBackend`),
``tls_options`` (:class:`~smtplug.interfaces.TLSOptions`) and, optionally,
``tls_sessions`` (sessions to resume, by ``(host, port)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smtplug.hookspecs import hookimpl
from smtplug.interfaces import (
    AsyncStream,
    AsyncTransport,
    Stream,
    TLSBackend,
    TLSOptions,
    TLSStream,
    Transport,
)
from smtplug_plugins._sockets import SocketStream, open_socket

__all__ = ["AsyncStartTLSTransport", "StartTLSStream", "StartTLSTransport"]


class StartTLSStream(SocketStream):
    """A plain TCP stream that knows how to become a TLS stream."""

    def __init__(
        self,
        sock: Any,
        peer: str,
        *,
        backend: TLSBackend,
        tls_options: TLSOptions,
        server_hostname: str,
        session: object | None = None,
    ) -> None:
        super().__init__(sock, peer)
        self._backend = backend
        self._tls_options = tls_options
        self._server_hostname = server_hostname
        self._session = session

    def start_tls(self, timeout: float | None) -> TLSStream:
        return self._backend.wrap(
            self.detach(),
            server_hostname=self._server_hostname,
            options=self._tls_options,
            timeout=timeout,
            session=self._session,
        )


class StartTLSTransport:
    """Plain TCP first, TLS after STARTTLS."""

    name = "starttls"

    def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> Stream:
        return StartTLSStream(
            open_socket(host, port, timeout),
            f"{host}:{port}",
            backend=options["tls_backend"],
            tls_options=options["tls_options"],
            server_hostname=host,
            session=options.get("tls_sessions", {}).get((host, port)),
        )


class AsyncStartTLSTransport:
    """The asyncio variant of :class:`StartTLSTransport`: the TLS backend
    must be able to run over memory buffers (both built-in ones can)."""

    name = "starttls"

    async def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> AsyncStream:
        # Here, not at the top: a blocking send must not pay for importing asyncio.
        from smtplug_plugins._aio import AsyncStartTLSStream, engine_backend, open_connection

        backend = engine_backend(options["tls_backend"])  # before connecting
        return AsyncStartTLSStream(
            await open_connection(host, port, timeout),
            backend=backend,
            tls_options=options["tls_options"],
            server_hostname=host,
            session=options.get("tls_sessions", {}).get((host, port)),
        )


@hookimpl
def smtplug_register_transports() -> Sequence[Transport]:
    return [StartTLSTransport()]


@hookimpl
def smtplug_register_async_transports() -> Sequence[AsyncTransport]:
    return [AsyncStartTLSTransport()]
