"""The asyncio driver: runs a program (:mod:`smtplug.actions`) over asyncio streams.

The twin of :mod:`smtplug.drivers.blocking`, with every I/O awaited: the same
programs, the same actions in the same order, the same results and errors.
Cancelling the task that runs a program closes the current connection (its
wire is then broken, so it is never reused) and ends the program; the
``CancelledError`` goes on to the caller.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, TypeVar

from smtplug.actions import Close, Open, Poll, Probe, Receive, Send, Sleep, Upgrade
from smtplug.drivers import CurrentConnection
from smtplug.errors import ConnectionLostError, InvalidInputError, ProtocolError, TLSError
from smtplug.interfaces import (
    AsyncStream,
    AsyncTransport,
    AsyncUpgradableStream,
    EngineTLSBackend,
)
from smtplug.protocol import Reply
from smtplug.wire import Wire

if TYPE_CHECKING:
    from smtplug.connect import ConnectionPlan

__all__ = ["AsyncDriver", "asyncio_transport"]

T = TypeVar("T")

_READ_SIZE = 65536
#: Reads at most made to collect what the server sent before a write failed.
_DRAIN_READS = 16


async def _sleep(seconds: float) -> None:
    """How a :class:`~smtplug.actions.Sleep` waits (a test may replace it)."""
    import asyncio  # (not at import: a blocking program does not need it)

    await asyncio.sleep(seconds)


def asyncio_transport(plan: ConnectionPlan, instead: str) -> AsyncTransport:
    """The plan's asyncio transport, or a clear :class:`InvalidInputError`
    (naming ``instead``, the blocking API to use) when the transport or the TLS
    backend cannot serve the asyncio API."""
    transport = plan.async_transport
    if transport is None:
        raise InvalidInputError(
            f"the {plan.transport.name!r} transport has no asyncio variant (no plugin "
            f"registers one with smtplug_register_async_transports): use {instead}"
        )
    backend = plan.transport_options.get("tls_backend")
    if backend is not None and not isinstance(backend, EngineTLSBackend):
        raise InvalidInputError(
            f"the TLS backend {backend.name!r} cannot serve the asyncio API (it has no "
            f"engine() for memory buffers): use {instead}, or another tls_backend"
        )
    return transport


class AsyncDriver(CurrentConnection[AsyncTransport, AsyncStream]):
    """Performs actions with one async transport, on one current connection."""

    async def run(self, program: Generator[Any, Any, T]) -> T:
        """Run ``program`` to its end and return its value (or raise its error)."""
        try:
            action = next(program)
            while True:
                try:
                    kind = type(action)
                    if kind is Receive:
                        # Pipelined replies often arrived together: one already
                        # parsed is taken without making a coroutine for it.
                        wire = self.wire
                        result: Any = None if wire is None else wire.reply()
                        if result is None:
                            result = await self._receive(action)
                    elif kind is Send:
                        # (_send, inline: a coroutine less for each write.)
                        wire, stream = self._current()
                        wire.before_send(action)
                        try:
                            await stream.write(action.data, action.timeout)
                        except ConnectionLostError as exc:
                            wire.write_failed(exc)  # the server may have answered and closed
                            await self._drain(wire, stream)
                            raise wire.lost_after_write() from exc
                        result = None
                    elif kind is Probe:  # (a pool's, before each message on a kept connection)
                        result = await self._probe()
                    elif kind is Poll:
                        result = await self._poll()
                    elif kind is Open:
                        result = await self._open(action)
                    elif kind is Close:
                        self.close()
                        result = None
                    elif kind is Upgrade:
                        await self._upgrade(action.timeout)
                        result = None
                    elif kind is Sleep:
                        await _sleep(action.seconds)
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

    # -- opening and closing ---------------------------------------------------------

    async def _open(self, action: Open) -> Wire:
        self.close()
        info = action.info
        stream = await self._transport.connect(
            info.server, info.port, timeout=action.timeout, options=self._options
        )
        return self._attach(info, stream)

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
        self._upgraded(wire, await stream.start_tls(timeout))
