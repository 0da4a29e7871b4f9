"""The ``plain`` transport: one TCP connection, no encryption (``usetls=False``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smtplug.hookspecs import hookimpl
from smtplug.interfaces import AsyncStream, AsyncTransport, Stream, Transport
from smtplug_plugins._sockets import SocketStream, open_socket

__all__ = ["AsyncPlainTransport", "PlainTransport"]


class PlainTransport:
    """TCP without TLS (what Tcllib does with ``-usetls 0``)."""

    name = "plain"

    def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> Stream:
        return SocketStream(open_socket(host, port, timeout), f"{host}:{port}")


class AsyncPlainTransport:
    """The asyncio variant of :class:`PlainTransport`."""

    name = "plain"

    async def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> AsyncStream:
        # Here, not at the top: a blocking send must not pay for importing asyncio.
        from smtplug_plugins._aio import AsyncPlainStream, open_connection

        return AsyncPlainStream(await open_connection(host, port, timeout))


@hookimpl
def smtplug_register_transports() -> Sequence[Transport]:
    return [PlainTransport()]


@hookimpl
def smtplug_register_async_transports() -> Sequence[AsyncTransport]:
    return [AsyncPlainTransport()]
