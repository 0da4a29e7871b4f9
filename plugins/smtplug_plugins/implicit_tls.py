"""The ``implicit-tls`` transport: TLS from the first byte (port 465, RFC 8314).

Tcllib's ``-tlsimport``. The handshake runs right after the TCP connection
is made, before the greeting; a failed handshake fails this server (the core
moves on to the next).

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
    Transport,
)
from smtplug_plugins._sockets import open_socket

__all__ = ["AsyncImplicitTLSTransport", "ImplicitTLSTransport"]


class ImplicitTLSTransport:
    """TCP, then at once the TLS handshake."""

    name = "implicit-tls"

    def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> Stream:
        backend: TLSBackend = options["tls_backend"]
        tls_options: TLSOptions = options["tls_options"]
        return backend.wrap(
            open_socket(host, port, timeout),
            server_hostname=host,
            options=tls_options,
            timeout=timeout,
            session=options.get("tls_sessions", {}).get((host, port)),
        )


class AsyncImplicitTLSTransport:
    """The asyncio variant of :class:`ImplicitTLSTransport`: the TLS backend
    must be able to run over memory buffers (both built-in ones can). The
    handshake has its own ``timeout``, as the blocking one has."""

    name = "implicit-tls"

    async def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> AsyncStream:
        # Here, not at the top: a blocking send must not pay for importing asyncio.
        from smtplug_plugins._aio import engine_backend, open_connection, secure

        backend = engine_backend(options["tls_backend"])  # before connecting
        return await secure(
            await open_connection(host, port, timeout),
            backend,
            server_hostname=host,
            options=options["tls_options"],
            timeout=timeout,
            session=options.get("tls_sessions", {}).get((host, port)),
        )


@hookimpl
def smtplug_register_transports() -> Sequence[Transport]:
    return [ImplicitTLSTransport()]


@hookimpl
def smtplug_register_async_transports() -> Sequence[AsyncTransport]:
    return [AsyncImplicitTLSTransport()]
