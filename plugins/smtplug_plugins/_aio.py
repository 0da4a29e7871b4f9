"""asyncio streams for the built-in async transports (a shared module, not a plugin).

Theory of operation: one :class:`_Connection` (an :class:`asyncio.Protocol`,
not a ``StreamReader``: no per-read task, no line machinery) per TCP
connection buffers what arrives and wakes at most one waiting reader through
a future; writes go to the transport in slices, waiting after each for the
transport's buffer to drain (``pause_writing``/``resume_writing``), so a
slow reader is waited for per block (RFC 5321's data-block wait) and a large
message is never copied whole into the transport's buffer. Timeouts are
timer callbacks on those futures (no ``wait_for`` task per read), so a
cancelled read or write leaves nothing behind.

The streams on top map every ``OSError`` to :mod:`smtplug.errors` as
:mod:`smtplug_plugins._sockets` does: a read or write that times out raises
:class:`ConnectionLostError` with ``timed_out=True``, ``read(n, 0)`` never
waits, ``read`` returns ``b""`` once the peer closed (after what it sent),
and a write after the connection failed raises ``ConnectionLostError``.

TLS is a :class:`~smtplug.interfaces.TLSEngine` from the chosen backend
(either built-in one) over the same TCP transport: records move between the
connection's buffer and the engine, one code path for both backends and for
STARTTLS and implicit TLS. (asyncio's own ``loop.start_tls`` is the same
thing, an ``ssl.SSLObject`` over memory buffers driven in Python, for the
stdlib backend only.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
from collections.abc import Coroutine
from typing import Any, cast

from smtplug.errors import ConnectError, ConnectionLostError, InvalidInputError, TLSError
from smtplug.interfaces import (
    AsyncTLSStream,
    EngineTLSBackend,
    TLSBackend,
    TLSEngine,
    TLSInfo,
    TLSOptions,
)

__all__ = [
    "AsyncPlainStream",
    "AsyncStartTLSStream",
    "AsyncTLSEngineStream",
    "engine_backend",
    "open_connection",
    "open_unix_connection",
    "secure",
]

# The most bytes handed to the transport (or the TLS engine) at once: the
# transport's default high-water mark, so a write waits for every block.
_CHUNK = 1 << 16


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _wake(waiter: asyncio.Future[bool] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(True)


class _Connection(asyncio.Protocol):
    """One TCP connection's bytes: what arrived, its state, flow control.

    The peer's end of file keeps the transport open for writing (as a
    socket does), so a reply the server sent before it closed is still read,
    and a write after it fails only once the peer resets the connection.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, peer: str) -> None:
        self.loop = loop
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self._paused = False
        self._reader: asyncio.Future[bool] | None = None
        self._writer: asyncio.Future[bool] | None = None
        # One timer per connection for the waits' deadlines, moved lazily: a
        # timer per read (armed, then cancelled at once nearly every time)
        # costs a heap push and leaves cancelled handles in the loop's heap.
        self._deadlines: dict[str, tuple[float, asyncio.Future[bool]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._poll: select.poll | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                poll = select.poll()
                poll.register(sock.fileno(), select.POLLIN)
                self._poll = poll
            # A command and the message's final "." must not wait for a delayed
            # ACK; not every socket family has it (without it Nagle is slower).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        _wake(self._reader)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self._reader)
        return True  # keep writing possible, as a half-closed socket does

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._poll = None  # the descriptor may be another socket's from now
        self._stop_timer()
        _wake(self._reader)
        _wake(self._writer)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        _wake(self._writer)

    # -- for the streams -----------------------------------------------------------

    async def _wait(self, which: str, timeout: float | None) -> bool:
        """Wait for a wake-up of the reader or writer: False after ``timeout``."""
        loop = self.loop
        waiter: asyncio.Future[bool] = loop.create_future()
        setattr(self, which, waiter)
        if timeout is not None:
            deadline = loop.time() + timeout
            self._deadlines[which] = (deadline, waiter)
            timer = self._timer
            if timer is None or deadline < self._timer_at:
                if timer is not None:
                    timer.cancel()
                self._timer_at = deadline
                self._timer = loop.call_at(deadline, self._on_timer)
        try:
            return await waiter
        finally:
            setattr(self, which, None)
            self._deadlines.pop(which, None)

    def _on_timer(self) -> None:
        """The earliest deadline may have passed: expire those waits, and arm
        the timer again for the next deadline (a wait that ended early has
        none: the timer then just lapses)."""
        self._timer = None
        now = self.loop.time()
        upcoming = None
        for which, (deadline, waiter) in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[which]
                _expire(waiter)
            elif upcoming is None or deadline < upcoming:
                upcoming = deadline
        if upcoming is not None:
            self._timer_at = upcoming
            self._timer = self.loop.call_at(upcoming, self._on_timer)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    async def readable(self, timeout: float | None) -> bool:
        """True once there is something to take (bytes, end of file or a
        failure); False when ``timeout`` seconds passed first (0: at once)."""
        if self.buffer or self.eof or self.lost:
            return True
        if timeout is not None and timeout <= 0:
            return await self._kernel_readable()
        return await self._wait("_reader", timeout)

    async def _kernel_readable(self) -> bool:
        """Whether something waits for this connection, without waiting.

        What the kernel holds reaches the protocol only when the loop runs
        the transport's reader, and that runs *after* a task resumed from
        ``sleep(0)`` in the same turn (the task was queued first): one turn
        is not enough, two are. The kernel is asked first (a zero-timeout
        ``poll``), so the common case, nothing there, costs no turn at all.
        """
        poll = self._poll
        if poll is not None:
            try:
                if not poll.poll(0):
                    return False
            except OSError:  # the socket is gone: let the loop report it
                pass
        for _ in range(2):
            await asyncio.sleep(0)
            if self.buffer or self.eof or self.lost:
                return True
        return False

    def take(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` of what arrived (all of it for None)."""
        buffer = self.buffer
        if max_bytes is None or max_bytes >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        return data

    def read_error(self) -> ConnectionLostError:
        """Why nothing more can be read (the connection failed, or was closed here)."""
        if self.error is not None:
            return ConnectionLostError(f"read from {self.peer} failed: {self.error}")
        return ConnectionLostError(f"connection to {self.peer} is closed")

    def timed_out(self, timeout: float | None) -> ConnectionLostError:
        return ConnectionLostError(
            f"read from {self.peer} timed out after {timeout} s", timed_out=True
        )

    async def send(self, data: bytes, timeout: float | None) -> None:
        """Hand all of ``data`` to the transport; fail when its buffer does not
        drain for ``timeout`` seconds."""
        view = memoryview(data).cast("B")
        while view:
            transport = self.transport
            if self.lost or transport is None or transport.is_closing():
                detail = self.error or "the connection is closed"
                raise ConnectionLostError(f"write to {self.peer} failed: {detail}")
            transport.write(view[:_CHUNK])
            view = view[_CHUNK:]
            if self._paused and not self.lost:
                if not await self._wait("_writer", timeout):
                    raise ConnectionLostError(
                        f"write to {self.peer} made no progress for {timeout} s",
                        timed_out=True,
                    )
            elif view:
                # The kernel took it all: still let the loop run between slices
                # (replies arrive, other connections get their turn).
                await asyncio.sleep(0)

    def close(self) -> None:
        """Close the transport (what is written still goes); idempotent."""
        self._stop_timer()
        self._poll = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                if transport.get_write_buffer_size():
                    transport.abort()  # a peer that reads nothing must not keep it
                else:
                    transport.close()


_timeout = getattr(asyncio, "timeout", None)  # Python 3.11 and later


async def open_connection(host: str, port: int, timeout: float | None) -> _Connection:
    """Connect over TCP (IPv4 or IPv6, as the name resolves) with TCP_NODELAY;
    :class:`ConnectError` as :func:`smtplug_plugins._sockets.open_socket` raises it."""
    loop = asyncio.get_running_loop()
    peer = f"{host}:{port}"
    connecting = loop.create_connection(lambda: _Connection(loop, peer), host, port)
    return await _connected(connecting, peer, timeout)


async def open_unix_connection(path: str, timeout: float | None) -> _Connection:
    """Connect to the Unix domain socket ``path``; :class:`ConnectError` as
    :func:`open_connection` raises it."""
    loop = asyncio.get_running_loop()
    connecting = loop.create_unix_connection(lambda: _Connection(loop, path), path)
    return await _connected(connecting, path, timeout)


async def _connected(
    connecting: Coroutine[Any, Any, tuple[asyncio.BaseTransport, _Connection]],
    peer: str,
    timeout: float | None,
) -> _Connection:
    try:
        if _timeout is not None:
            # (asyncio.timeout costs no task of its own, as wait_for does.)
            async with _timeout(timeout):
                _, protocol = await connecting
        else:  # Python 3.10
            _, protocol = await _connecting_310(connecting, timeout)
    except (TimeoutError, asyncio.TimeoutError) as exc:
        raise ConnectError(f"connecting to {peer} timed out after {timeout} s") from exc
    except OSError as exc:
        # asyncio's own text ("Connect call failed (...)") hides the reason.
        reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        raise ConnectError(f"cannot connect to {peer}: {reason}") from exc
    except UnicodeError as exc:  # (a name the resolver's IDNA step refuses)
        raise ConnectError(f"cannot connect to {peer}: {exc}") from exc
    return protocol


def _close_made(task: asyncio.Task[tuple[asyncio.BaseTransport, _Connection]]) -> None:
    """(A connection attempt given up.) Close what it made, if it made it."""
    if task.cancelled():
        return
    if task.exception() is None:  # (retrieved either way: never logged as lost)
        task.result()[0].close()


async def _connecting_310(
    connecting: Coroutine[Any, Any, tuple[asyncio.BaseTransport, _Connection]],
    timeout: float | None,
) -> tuple[asyncio.BaseTransport, _Connection]:
    """``connecting`` within ``timeout`` seconds, for Python 3.10: its
    ``wait_for`` returns the result when a cancel and the connection come
    in the same loop turn, so the cancel is lost (bpo-42130). Here a cancel
    always wins, and a connection made meanwhile is closed."""
    task = asyncio.ensure_future(connecting)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_close_made)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_close_made)
        raise asyncio.TimeoutError
    return task.result()


class AsyncPlainStream:
    """An :class:`smtplug.interfaces.AsyncStream` over a TCP connection."""

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self._peer = connection.peer
        self._broken = False  # a write was cancelled half done

    @property
    def tls(self) -> bool:
        return False

    @property
    def peer(self) -> str:
        return self._peer

    def _live(self) -> _Connection:
        if self._connection is None or self._broken:
            raise ConnectionLostError(f"connection to {self._peer} is closed")
        return self._connection

    async def read(self, max_bytes: int, timeout: float | None) -> bytes:
        connection = self._live()
        if max_bytes <= 0:
            return b""
        if not await connection.readable(timeout):
            raise connection.timed_out(timeout)
        if connection.buffer:
            return connection.take(max_bytes)
        if connection.eof:
            return b""
        raise connection.read_error()

    async def write(self, data: bytes, timeout: float | None) -> None:
        connection = self._live()
        try:
            await connection.send(data, timeout)
        except asyncio.CancelledError:
            self._broken = True
            raise

    def detach(self) -> _Connection:
        """Hand the connection over (to TLS); this stream is then closed."""
        connection = self._live()
        self._connection = None
        return connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class AsyncTLSEngineStream:
    """An :class:`smtplug.interfaces.AsyncResumableStream`: a
    :class:`TLSEngine` over a TCP connection whose handshake is complete."""

    def __init__(self, connection: _Connection, engine: TLSEngine) -> None:
        self._connection: _Connection | None = connection
        self._engine = engine
        self._peer = connection.peer
        self._tls_info = engine.info()
        self._broken = False  # a TLS error, or a write cancelled half done
        # A write failed (the server reset the connection): no close_notify
        # may follow, but what the server sent before is still read (a
        # refusal that the drivers report instead of the failed write).
        self._write_failed = False

    @property
    def tls(self) -> bool:
        return True

    @property
    def tls_info(self) -> TLSInfo:
        return self._tls_info

    @property
    def peer(self) -> str:
        return self._peer

    def tls_session(self) -> object | None:
        """The session to resume on the next connection (None once closed)."""
        if self._connection is None:
            return None
        return self._engine.session()

    def _live(self) -> _Connection:
        if self._connection is None or self._broken:
            raise ConnectionLostError(f"connection to {self._peer} is closed")
        return self._connection

    async def _flush(self, connection: _Connection, timeout: float | None) -> None:
        records = self._engine.outgoing()
        if records:
            await connection.send(records, timeout)

    async def read(self, max_bytes: int, timeout: float | None) -> bytes:
        """Decrypted bytes; records are read from the connection only when the
        engine has none buffered, so what it holds comes without waiting."""
        connection = self._live()
        if max_bytes <= 0:
            return b""
        loop = connection.loop
        deadline = None if timeout is None else loop.time() + timeout
        engine = self._engine
        try:
            while True:
                data = engine.read(max_bytes)
                # Reading may have made records (a TLS 1.2 alert, a key update).
                await self._flush(connection, timeout)
                if data is not None:
                    return data
                left = None if deadline is None else deadline - loop.time()
                if not await connection.readable(left):
                    raise connection.timed_out(timeout)
                if connection.buffer:
                    engine.receive(connection.take())
                elif connection.eof:
                    engine.receive(b"")
                else:
                    raise connection.read_error()
        except ConnectionLostError as exc:
            if not exc.timed_out:
                self._broken = True
            raise

    async def write(self, data: bytes, timeout: float | None) -> None:
        connection = self._live()
        view = memoryview(data).cast("B")
        try:
            while view:
                self._engine.write(view[:_CHUNK].tobytes())
                view = view[_CHUNK:]
                await self._flush(connection, timeout)
        except asyncio.CancelledError:
            self._broken = True
            raise
        except ConnectionLostError as exc:
            if not exc.timed_out:
                self._write_failed = True
            raise

    def close(self) -> None:
        """Queue close_notify (without waiting for the peer's) and close."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        self._engine.close()
        if not (self._broken or self._write_failed):
            records = self._engine.outgoing()
            transport = connection.transport
            if records and transport is not None and not transport.is_closing():
                with contextlib.suppress(Exception):
                    transport.write(records)
        connection.close()


def engine_backend(backend: TLSBackend) -> EngineTLSBackend:
    """``backend``, if it can run over memory buffers (the asyncio API needs
    that); otherwise :class:`InvalidInputError` naming it."""
    if not isinstance(backend, EngineTLSBackend):
        name = getattr(backend, "name", None) or type(backend).__name__
        raise InvalidInputError(
            f"the TLS backend {name!r} cannot be used from the asyncio API: "
            "it has no engine() (memory-buffer TLS), only wrap()"
        )
    return backend


async def secure(
    connection: _Connection,
    backend: EngineTLSBackend,
    *,
    server_hostname: str,
    options: TLSOptions,
    timeout: float | None,
    session: object | None,
) -> AsyncTLSEngineStream:
    """Run a TLS handshake over ``connection`` within ``timeout`` seconds,
    with ``wrap``'s guarantees and errors; the connection is closed on failure.

    Bytes that arrived before the handshake are handed to the engine as the
    first records, as a socket would hand them to ``wrap``.
    """
    peer = server_hostname
    loop = connection.loop
    deadline = None if timeout is None else loop.time() + timeout
    engine: TLSEngine | None = None
    try:
        engine = backend.engine(server_hostname=server_hostname, options=options, session=session)
        while True:
            done = engine.handshake()
            records = engine.outgoing()
            if records:
                await connection.send(records, timeout)
            if done:
                return AsyncTLSEngineStream(connection, engine)
            left = None if deadline is None else deadline - loop.time()
            if not await connection.readable(left):
                raise TLSError(f"TLS handshake with {peer} timed out after {timeout} s")
            if connection.buffer:
                engine.receive(connection.take())
            elif connection.eof:
                engine.receive(b"")
            else:
                raise TLSError(f"TLS handshake with {peer} failed: {connection.read_error()}")
    except TLSError:
        _give_up(connection, engine)
        raise
    except ConnectionLostError as exc:
        _give_up(connection, engine)
        raise TLSError(f"TLS handshake with {peer} failed: {exc.diagnostic}") from exc
    except BaseException:
        _give_up(connection, engine)
        raise


def _give_up(connection: _Connection, engine: TLSEngine | None) -> None:
    """After a failed handshake: send the engine's alert if any, close."""
    if engine is not None:
        records = engine.outgoing()
        transport = connection.transport
        if records and transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.write(records)
        engine.close()
    connection.close()


class AsyncStartTLSStream(AsyncPlainStream):
    """A plain asyncio stream that can be secured in place (STARTTLS)."""

    def __init__(
        self,
        connection: _Connection,
        *,
        backend: EngineTLSBackend,
        tls_options: TLSOptions,
        server_hostname: str,
        session: object | None = None,
    ) -> None:
        super().__init__(connection)
        self._backend = backend
        self._tls_options = tls_options
        self._server_hostname = server_hostname
        self._session = session

    async def start_tls(self, timeout: float | None) -> AsyncTLSStream:
        return await secure(
            self.detach(),
            self._backend,
            server_hostname=self._server_hostname,
            options=self._tls_options,
            timeout=timeout,
            session=self._session,
        )
