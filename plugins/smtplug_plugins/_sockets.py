"""Sockets for the built-in transports (a shared module, not a plugin).

Every ``OSError`` is mapped to :mod:`smtplug.errors` at this boundary;
connections get TCP_NODELAY (a command and the message's final "." must not
wait for a delayed ACK); each read has a deadline.

A plain socket (where ``select.poll`` exists) is made non-blocking once, and
each read and write waits with a ``poll`` of its own, for the wait it was
given: a read is one poll and one recv, a write one send (a poll only when
the kernel's buffer is full). A socket with a timeout would make the
kernel calls double: CPython polls before every send() and recv() of such a
socket, and a wait other than the socket's needs a settimeout (an ioctl) on
the way. A TLS socket keeps its timeout (its reads and writes may need the
other direction; ``ssl`` handles that in blocking mode).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time

from smtplug.errors import ConnectError, ConnectionLostError
from smtplug.interfaces import TLSInfo

__all__ = ["SocketStream", "open_socket"]

#: The most bytes handed to one send() call.
_SLICE = 1 << 16
_POLL = hasattr(select, "poll")  # (not on Windows: there a probe reads at once)
_POLL_MOST = 2_000_000.0  # seconds: poll() counts milliseconds in a C int


class SocketStream:
    """A :class:`smtplug.interfaces.Stream` over a connected socket."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        tls_info: TLSInfo | None = None,
    ) -> None:
        self._sock: socket.socket | None = sock
        self._peer = peer
        self._tls_info = tls_info
        self._current_timeout = sock.gettimeout()
        self._pollers: dict[int, select.poll] = {}  # by event: POLLIN, POLLOUT
        #: A plain socket, made non-blocking: reads and writes poll for their
        #: own waits (see the module doc). The timeout it came with is given
        #: back with it (:meth:`detach`).
        self._polled = _POLL and type(sock) is socket.socket
        if self._polled:
            sock.setblocking(False)

    @property
    def tls(self) -> bool:
        return self._tls_info is not None

    @property
    def tls_info(self) -> TLSInfo:
        if self._tls_info is None:
            raise AttributeError("tls_info: this stream is not encrypted")
        return self._tls_info

    @property
    def peer(self) -> str:
        return self._peer

    def tls_session(self) -> object | None:
        """The TLS session to resume next time (stdlib ``ssl`` sockets)."""
        if self._tls_info is None or self._sock is None:
            return None
        return getattr(self._sock, "session", None)

    def detach(self) -> socket.socket:
        """Hand the socket over (to a TLS backend), with the timeout it came
        with; this stream is then closed."""
        sock = self._live()
        self._sock = None
        if self._polled:
            sock.settimeout(self._current_timeout)
        return sock

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionLostError(f"connection to {self._peer} is closed")
        return self._sock

    def _timeout(self, sock: socket.socket, timeout: float | None) -> None:
        # settimeout costs a system call; most reads and writes reuse the last.
        if timeout != self._current_timeout:
            sock.settimeout(timeout)
            self._current_timeout = timeout

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        sock = self._live()
        if self._polled:
            return self._polled_read(sock, max_bytes, timeout)
        if (
            _POLL
            and timeout is not None
            and timeout != self._current_timeout
            and timeout < _POLL_MOST
        ):
            # A wait of its own (the probe's none, the final reply's longer):
            # a poll, rather than two settimeout calls (a system call each,
            # dropping the GIL) around the read. With TLS, only for the probe:
            # bytes in the kernel there may be part of a record.
            plain = not isinstance(sock, ssl.SSLSocket)
            if (timeout == 0 or plain) and not self._readable(sock, timeout):
                raise ConnectionLostError(
                    f"read from {self._peer} timed out after {timeout} s", timed_out=True
                )
            if plain:  # (readable: the read returns at once, whatever its timeout)
                timeout = self._current_timeout
        try:
            self._timeout(sock, timeout)
            return sock.recv(max_bytes)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError) as exc:
            # A timeout of 0 makes the socket non-blocking: nothing to read
            # yet is a timeout too (ssl raises its own WantRead for it).
            raise ConnectionLostError(
                f"read from {self._peer} timed out after {timeout} s", timed_out=True
            ) from exc
        except OSError as exc:
            raise ConnectionLostError(f"read from {self._peer} failed: {exc}") from exc

    def _polled_read(self, sock: socket.socket, max_bytes: int, timeout: float | None) -> bytes:
        """A read of the non-blocking socket: a poll for ``timeout``, then recv."""
        poller = self._watching(sock, select.POLLIN)
        wait = timeout
        deadline = None
        try:
            while True:
                if not _ready(poller, wait):
                    raise ConnectionLostError(
                        f"read from {self._peer} timed out after {timeout} s", timed_out=True
                    )
                try:
                    return sock.recv(max_bytes)
                except BlockingIOError:  # (readable, yet nothing: wait for what is left)
                    if timeout is not None:
                        now = time.monotonic()
                        if deadline is None:
                            deadline = now + timeout
                        wait = max(0.0, deadline - now)
        except OSError as exc:
            raise ConnectionLostError(f"read from {self._peer} failed: {exc}") from exc

    def _polled_write(self, sock: socket.socket, data: bytes, timeout: float | None) -> None:
        """A write to the non-blocking socket: send() until all is taken,
        polling (at most ``timeout`` each time) only when the kernel's buffer
        is full: the wait bounds each stretch without progress."""
        view = memoryview(data).cast("B")
        try:
            while view:
                piece = view[:_SLICE]
                try:
                    sent = sock.send(piece)
                except BlockingIOError:
                    sent = 0
                view = view[sent:]
                if (
                    view
                    and sent < len(piece)
                    and not _ready(self._watching(sock, select.POLLOUT), timeout)
                ):
                    raise ConnectionLostError(
                        f"write to {self._peer} made no progress for {timeout} s",
                        timed_out=True,
                    )
        except OSError as exc:
            raise ConnectionLostError(f"write to {self._peer} failed: {exc}") from exc

    def _readable(self, sock: socket.socket, wait: float) -> bool:
        """True when, within ``wait`` seconds, a read would not find nothing:
        bytes (or the end, or an error) in the kernel, or decrypted bytes in
        the TLS object."""
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        return _ready(self._watching(sock, select.POLLIN), wait)

    def _watching(self, sock: socket.socket, event: int) -> select.poll:
        """The poll object watching ``sock`` for ``event``, made once."""
        poller = self._pollers.get(event)
        if poller is None:
            poller = self._pollers[event] = select.poll()
            poller.register(sock, event)
        return poller

    def write(self, data: bytes, timeout: float | None) -> None:
        sock = self._live()
        if self._polled:
            self._polled_write(sock, data, timeout)
            return
        try:
            # The timeout bounds each send() system call, so a slow reader that
            # keeps taking data never trips it: RFC 5321's "data block" wait
            # (sendall's timeout would bound the whole write, since Python 3.5).
            self._timeout(sock, timeout)
            # Slices, so that a TLS socket (whose send writes all it is given
            # under one deadline) also makes progress at least every timeout.
            view = memoryview(data).cast("B")
            while view:
                view = view[sock.send(view[:_SLICE]) :]
        except TimeoutError as exc:
            raise ConnectionLostError(
                f"write to {self._peer} made no progress for {timeout} s", timed_out=True
            ) from exc
        except OSError as exc:
            raise ConnectionLostError(f"write to {self._peer} failed: {exc}") from exc

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def _ready(poller: select.poll, seconds: float | None) -> bool:
    """Whether ``poller``'s socket is ready within ``seconds`` (None, or more
    than poll() can count in milliseconds: no limit)."""
    if seconds is None or seconds >= _POLL_MOST:
        return bool(poller.poll())
    return bool(poller.poll(seconds * 1000))


def open_socket(host: str, port: int, timeout: float | None) -> socket.socket:
    """Connect over TCP (IPv4 or IPv6, as the name resolves) with TCP_NODELAY."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise ConnectError(f"connecting to {host}:{port} timed out after {timeout} s") from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    except UnicodeError as exc:  # (a name the resolver's IDNA step refuses)
        raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
    # Not every socket family has TCP_NODELAY; without it Nagle is merely slower.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
