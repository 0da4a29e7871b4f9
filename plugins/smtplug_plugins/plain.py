"""The ``plain`` transport: one TCP connection, no encryption (``usetls=False``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smtplug.hookspecs import hookimpl
from smtplug.interfaces import Stream, Transport
from smtplug_plugins._sockets import SocketStream, open_socket

__all__ = ["PlainTransport"]


class PlainTransport:
    """TCP without TLS (what Tcllib does with ``-usetls 0``)."""

    name = "plain"

    def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> Stream:
        return SocketStream(open_socket(host, port, timeout), f"{host}:{port}")


@hookimpl
def smtplug_register_transports() -> Sequence[Transport]:
    return [PlainTransport()]
