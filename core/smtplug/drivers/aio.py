"""The asyncio driver: runs a program (:mod:`smtplug.actions`) over asyncio streams.

The twin of :mod:`smtplug.drivers.blocking`, with every I/O awaited: the same
programs, the same actions in the same order, the same results and errors.
Cancelling the task that runs a program closes the current connection (its
wire is then broken, so it is never reused) and ends the program; the
``CancelledError`` goes on to the caller.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Mapping, MutableMapping
from typing import Any, TypeVar

from smtplug.actions import Close, Open, Poll, Probe, Receive, Send, Upgrade
from smtplug.errors import ConnectionLostError, ProtocolError, TLSError
from smtplug.interfaces import (
    AsyncResumableStream,
    AsyncStream,
    AsyncTLSStream,
    AsyncTransport,
    AsyncUpgradableStream,
    TLSInfo,
)
from smtplug.observe import Observers, logger
from smtplug.protocol import Reply
from smtplug.wire import Wire

__all__ = ["AsyncDriver"]

T = TypeVar("T")

_READ_SIZE = 65536
#: Reads at most made to collect what the server sent before a write failed.
_DRAIN_READS = 16


def _tls_of(stream: AsyncStream) -> TLSInfo | None:
    return stream.tls_info if stream.tls and isinstance(stream, AsyncTLSStream) else None


class AsyncDriver:
    """Performs actions with one async transport, on one current connection."""

    def __init__(
        self,
        transport: AsyncTransport,
        options: Mapping[str, Any],
        hook: Observers,
        sessions: MutableMapping[tuple[str, int], object],
    ) -> None:
        self._transport = transport
        self._options = options
        self._hook = hook
        self._sessions = sessions
        self._stream: AsyncStream | None = None
        self.wire: Wire | None = None

    async def run(self, program: Generator[Any, Any, T]) -> T:
        """Run ``program`` to its end and return its value (or raise its error)."""
        try:
            action = next(program)
            while True:
                try:
                    kind = type(action)
                    if kind is Receive:
                        result: Any = await self._receive(action)
                    elif kind is Send:
                        await self._send(action)
                        result = None
                    elif kind is Poll:
                        result = await self._poll()
                    elif kind is Open:
                        result = await self._open(action)
                    elif kind is Close:
                        self.close()
                        result = None
                    elif kind is Probe:
                        result = await self._probe()
                    elif kind is Upgrade:
                        await self._upgrade(action.timeout)
                        result = None
                    else:
                        raise TypeError(f"unknown action {action!r}")
                except Exception as exc:
                    wire = self.wire
                    if wire is not None:
                        wire.io_failed(exc)
                    action = program.throw(exc)
                else:
                    action = program.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except Exception:
            raise
        except BaseException:
            # Cancelled (or interrupted): the connection is in an unknown
            # state, so it goes; the program ends without another action.
            self.close()
            program.close()
            raise

    def _current(self) -> tuple[Wire, AsyncStream]:
        if self.wire is None or self._stream is None:
            raise ConnectionLostError("no connection is open")
        return self.wire, self._stream

    # -- opening and closing ---------------------------------------------------------

    async def _open(self, action: Open) -> Wire:
        self.close()
        info = action.info
        stream = await self._transport.connect(
            info.server, info.port, timeout=action.timeout, options=self._options
        )
        if stream.tls:
            info = dataclasses.replace(info, tls=True)
        self._stream = stream
        self.wire = Wire(
            info,
            self._hook,
            _tls_of(stream),
            can_start_tls=hasattr(stream, "start_tls"),  # (a Protocol isinstance is slow)
        )
        return self.wire

    def close(self) -> None:
        """Close the current connection (idempotent); its wire is broken after."""
        wire, stream = self.wire, self._stream
        self.wire = self._stream = None
        if wire is None or stream is None:
            return
        wire.broken = True
        if stream.tls and isinstance(stream, AsyncResumableStream):
            session = stream.tls_session()
            if session is not None:
                self._sessions[(wire.info.server, wire.info.port)] = session
        stream.close()
        try:
            wire.event("closed")
        except Exception as exc:  # an observer's: closing never raises
            logger.error("observer failed at close: %s", type(exc).__name__, exc_info=exc)

    # -- bytes -------------------------------------------------------------------------

    async def _receive(self, action: Receive) -> Reply:
        wire, stream = self._current()
        reply = wire.reply()  # pipelined replies often arrive together
        if reply is not None:
            return reply
        if not wire.readable:
            raise wire.lost_after_write()
        timeout = action.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = timeout
        while True:
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                data = await stream.read(_READ_SIZE, remaining)
            except (TimeoutError, ConnectionLostError) as exc:
                if isinstance(exc, ConnectionLostError) and not exc.timed_out:
                    raise
                raise wire.no_reply(action.command, timeout) from exc
            if not data:
                raise wire.closed_while_waiting(action.command)
            wire.feed(data)
            reply = wire.reply()
            if reply is not None:
                return reply
            remaining = None if deadline is None else deadline - time.monotonic()

    async def _send(self, action: Send) -> None:
        wire, stream = self._current()
        wire.before_send(action)
        try:
            await stream.write(action.data, action.timeout)
        except ConnectionLostError as exc:
            wire.write_failed(exc)  # the server may have answered and closed
            await self._drain(wire, stream)
            raise wire.lost_after_write() from exc

    async def _poll(self) -> Reply | None:
        wire, stream = self._current()
        reply = wire.reply()
        if reply is None and wire.readable:
            try:
                data = await stream.read(_READ_SIZE, 0)
            except ConnectionLostError as exc:
                if not exc.timed_out:
                    wire.write_failed(exc)
                return None
            if not data:
                wire.closed_by_peer()
                return None
            wire.feed(data)
            reply = wire.reply()
        return reply

    async def _drain(self, wire: Wire, stream: AsyncStream) -> None:
        for _ in range(_DRAIN_READS):
            try:
                data = await stream.read(_READ_SIZE, 0)
            except ConnectionLostError:
                return
            if not data:
                return
            try:
                wire.feed(data)
            except ProtocolError:
                return

    async def _probe(self) -> bool:
        wire, stream = self._current()
        if wire.pending:
            return True
        try:
            data = await stream.read(_READ_SIZE, 0)
        except ConnectionLostError as exc:
            return not exc.timed_out
        if data:
            wire.feed(data)
        return True

    async def _upgrade(self, timeout: float | None) -> None:
        wire, stream = self._current()
        wire.before_tls()
        if not isinstance(stream, AsyncUpgradableStream):
            raise TLSError("this connection's transport cannot start TLS")
        self._stream = await stream.start_tls(timeout)
        wire.after_tls(_tls_of(self._stream))
