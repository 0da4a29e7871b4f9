"""The ``plain`` transport: one TCP connection, no encryption.

It maps every ``OSError`` to :mod:`smtplug.errors` at this boundary, sets
TCP_NODELAY (a command and the message's final "." must not wait for a delayed
ACK), and reads with a deadline per call.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from smtplug.errors import ConnectError, ConnectionLostError
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import Stream, Transport

__all__ = ["PlainTransport", "SocketStream"]


class SocketStream:
    """A :class:`smtplug.interfaces.Stream` over a connected socket."""

    def __init__(self, sock: socket.socket, peer: str, write_timeout: float | None) -> None:
        self._sock: socket.socket | None = sock
        self._peer = peer
        self._write_timeout = write_timeout

    @property
    def tls(self) -> bool:
        return False

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionLostError(f"connection to {self._peer} is closed")
        return self._sock

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        sock = self._live()
        try:
            sock.settimeout(timeout)
            return sock.recv(max_bytes)
        except TimeoutError as exc:
            raise ConnectionLostError(
                f"read from {self._peer} timed out after {timeout} s", timed_out=True
            ) from exc
        except OSError as exc:
            raise ConnectionLostError(f"read from {self._peer} failed: {exc}") from exc

    def write(self, data: bytes) -> None:
        sock = self._live()
        try:
            sock.settimeout(self._write_timeout)
            sock.sendall(data)
        except TimeoutError as exc:
            raise ConnectionLostError(
                f"write to {self._peer} timed out after {self._write_timeout} s", timed_out=True
            ) from exc
        except OSError as exc:
            raise ConnectionLostError(f"write to {self._peer} failed: {exc}") from exc

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def open_socket(host: str, port: int, timeout: float | None) -> socket.socket:
    """Connect over TCP (IPv4 or IPv6, as the name resolves) with TCP_NODELAY."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise ConnectError(f"connecting to {host}:{port} timed out after {timeout} s") from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    # Not every socket family has TCP_NODELAY; without it Nagle is merely slower.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class PlainTransport:
    """TCP without TLS (what Tcllib does with ``-usetls 0``)."""

    name = "plain"

    def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> Stream:
        return SocketStream(open_socket(host, port, timeout), f"{host}:{port}", timeout)


@hookimpl
def smtplug_register_transports() -> Sequence[Transport]:
    return [PlainTransport()]
