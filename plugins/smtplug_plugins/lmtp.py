"""The ``lmtp`` transport: LMTP (RFC 2033) over TCP or a Unix domain socket.

Choose it with ``transport="lmtp"``. A server is a host name (TCP, with
``ports``: LMTP has no port of its own, Dovecot's is often 24) or a Unix
socket: an absolute path (``"/run/dovecot/lmtp"``) or ``"unix:"`` and one
(``"unix:/run/dovecot/lmtp"``); the port is then ignored. Over TCP the
stream can be secured with STARTTLS when the server offers it (``usetls``
and the TLS policy decide, as for SMTP); a Unix socket stays plain (pass
``usetls=False`` for it).

The plugin uses only what a third party can: the transport declares its
protocol as a :class:`smtplug.interfaces.Dialect` (``LHLO`` instead of
``EHLO``, no ``HELO``, one reply per accepted recipient after the end of
the message) and the servers it takes (``accepts_server``); the core reads
both. The streams are the built-in socket streams
(:mod:`smtplug_plugins._sockets`, :mod:`smtplug_plugins._aio`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from smtplug.errors import ConnectError, InvalidInputError
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import AsyncStream, AsyncTransport, Dialect, Stream, Transport
from smtplug_plugins._sockets import SocketStream, open_socket
from smtplug_plugins.starttls import StartTLSStream

__all__ = ["LMTP", "AsyncLMTPTransport", "LMTPTransport", "socket_path"]

#: LMTP as the core sees it (RFC 2033): LHLO and no HELO (section 4.1), one
#: reply per accepted recipient after the end of the message (section 4.2).
LMTP = Dialect(name="LMTP", hello="LHLO", fallback_hello=None, replies_per_recipient=True)

_PREFIX = "unix:"
#: sun_path holds 108 octets on Linux (104 on the BSDs), its NUL included.
_MAX_PATH = 107


def socket_path(server: str) -> str | None:
    """The Unix socket path ``server`` names (``/path`` or ``unix:/path``), or
    None when it is a host name; :class:`InvalidInputError` for a malformed
    path (relative, empty, control characters, too long)."""
    if server.startswith(_PREFIX):
        path = server[len(_PREFIX) :]
    elif server.startswith("/"):
        path = server
    else:
        return None
    if not path.startswith("/"):
        raise InvalidInputError(
            f"invalid LMTP socket {server!r}: the path must be absolute (unix:/run/...)"
        )
    if not path.isprintable():
        raise InvalidInputError(f"invalid LMTP socket {server!r}: control characters in the path")
    if len(os.fsencode(path)) > _MAX_PATH:
        raise InvalidInputError(
            f"invalid LMTP socket {server!r}: longer than the {_MAX_PATH} octets a Unix "
            "socket address holds"
        )
    return path


def _open_unix(path: str, timeout: float | None) -> socket.socket:
    family = getattr(socket, "AF_UNIX", None)
    if family is None:
        raise ConnectError(f"cannot connect to {path}: this system has no Unix domain sockets")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except TimeoutError as exc:
        sock.close()
        raise ConnectError(f"connecting to {path} timed out after {timeout} s") from exc
    except OSError as exc:
        sock.close()
        raise ConnectError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    return sock


class LMTPTransport:
    """LMTP over TCP (STARTTLS when asked for and offered) or a Unix socket."""

    name = "lmtp"
    dialect = LMTP

    def accepts_server(self, server: str) -> bool:
        return socket_path(server) is not None

    def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> Stream:
        path = socket_path(host)
        if path is not None:
            return SocketStream(_open_unix(path, timeout), path)
        sock = open_socket(host, port, timeout)
        backend = options.get("tls_backend")
        if backend is None:  # usetls=False: nothing to upgrade with
            return SocketStream(sock, f"{host}:{port}")
        return StartTLSStream(
            sock,
            f"{host}:{port}",
            backend=backend,
            tls_options=options["tls_options"],
            server_hostname=host,
            session=options.get("tls_sessions", {}).get((host, port)),
        )


class AsyncLMTPTransport:
    """The asyncio variant of :class:`LMTPTransport`."""

    name = "lmtp"
    dialect = LMTP

    def accepts_server(self, server: str) -> bool:
        return socket_path(server) is not None

    async def connect(
        self, host: str, port: int, *, timeout: float | None, options: Mapping[str, Any]
    ) -> AsyncStream:
        # Here, not at the top: a blocking send must not pay for importing asyncio.
        from smtplug_plugins._aio import (
            AsyncPlainStream,
            AsyncStartTLSStream,
            engine_backend,
            open_connection,
            open_unix_connection,
        )

        path = socket_path(host)
        if path is not None:
            return AsyncPlainStream(await open_unix_connection(path, timeout))
        backend = options.get("tls_backend")
        if backend is None:
            return AsyncPlainStream(await open_connection(host, port, timeout))
        engine = engine_backend(backend)  # before connecting
        return AsyncStartTLSStream(
            await open_connection(host, port, timeout),
            backend=engine,
            tls_options=options["tls_options"],
            server_hostname=host,
            session=options.get("tls_sessions", {}).get((host, port)),
        )


@hookimpl
def smtplug_register_transports() -> Sequence[Transport]:
    return [LMTPTransport()]


@hookimpl
def smtplug_register_async_transports() -> Sequence[AsyncTransport]:
    return [AsyncLMTPTransport()]
