"""The blocking driver: runs a program (:mod:`smtplug.actions`) over blocking streams.

It performs each action a program yields on its one current connection and
sends back the result, or throws the error the action raised into the
program at that yield (the program decides what it means). An exception
that is not an ``Exception`` (``KeyboardInterrupt``) closes the current
connection and ends the program.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from smtplug.actions import Close, Open, Poll, Probe, Receive, Send, Sleep, Upgrade
from smtplug.drivers import CurrentConnection
from smtplug.errors import ConnectionLostError, ProtocolError, TLSError
from smtplug.interfaces import (
    Stream,
    Transport,
    UpgradableStream,
)
from smtplug.protocol import Reply
from smtplug.wire import Wire

__all__ = ["BlockingDriver"]

T = TypeVar("T")

_READ_SIZE = 65536
#: Reads at most made to collect what the server sent before a write failed.
_DRAIN_READS = 16

#: How a :class:`~smtplug.actions.Sleep` waits (a test may replace it).
_sleep: Callable[[float], None] = time.sleep


class BlockingDriver(CurrentConnection[Transport, Stream]):
    """Performs actions with one transport, on one current connection at a time.

    ``sessions`` keeps TLS sessions by ``(server, port)``: a connection's is
    saved when it closes, for the transport to resume next time.
    """

    def run(self, program: Generator[Any, Any, T]) -> T:
        """Run ``program`` to its end and return its value (or raise its error)."""
        try:
            action = next(program)
            while True:
                try:
                    # Pipelined replies often arrived together: one already
                    # parsed is taken here (what _receive would do first).
                    wire = self.wire
                    if type(action) is not Receive or wire is None:
                        result = self._perform(action)
                    else:
                        result = wire.reply()
                        if result is None:
                            result = self._receive(action)
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
            self.close()
            program.close()
            raise

    def _perform(self, action: object) -> Any:
        kind = type(action)
        if kind is Receive:
            return self._receive(action)  # type: ignore[arg-type]
        if kind is Send:
            self._send(action)  # type: ignore[arg-type]
            return None
        if kind is Poll:
            return self._poll()
        if kind is Open:
            return self._open(action)  # type: ignore[arg-type]
        if kind is Close:
            self.close()
            return None
        if kind is Probe:
            return self._probe()
        if kind is Upgrade:
            self._upgrade(action.timeout)  # type: ignore[attr-defined]
            return None
        if kind is Sleep:
            _sleep(action.seconds)  # type: ignore[attr-defined]
            return None
        raise TypeError(f"unknown action {action!r}")

    # -- opening and closing ---------------------------------------------------------

    def _open(self, action: Open) -> Wire:
        self.close()
        info = action.info
        stream = self._transport.connect(
            info.server, info.port, timeout=action.timeout, options=self._options
        )
        return self._attach(info, stream)

    # -- bytes -------------------------------------------------------------------------

    def _receive(self, action: Receive) -> Reply:
        wire, stream = self._current()
        # Pipelined replies often arrived together: take one already parsed.
        reply = wire.reply()
        if reply is not None:
            return reply
        if not wire.readable:
            # Every reply the server sent before the write failed is read.
            raise wire.lost_after_write()
        timeout = action.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = timeout  # the first read waits it all; later ones what is left
        while True:
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                data = stream.read(_READ_SIZE, remaining)
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

    def _send(self, action: Send) -> None:
        wire, stream = self._current()
        wire.before_send(action)
        try:
            stream.write(action.data, action.timeout)
        except ConnectionLostError as exc:
            # The server may have answered (a refusal, a 421) and closed.
            wire.write_failed(exc)
            self._drain(wire, stream)
            raise wire.lost_after_write() from exc

    def _poll(self) -> Reply | None:
        """A reply the server has sent, without waiting for one."""
        wire, stream = self._current()
        reply = wire.reply()
        if reply is None and wire.readable:
            try:
                data = stream.read(_READ_SIZE, 0)
            except ConnectionLostError as exc:
                if not exc.timed_out:  # reset: nothing more can be written
                    wire.write_failed(exc)
                return None
            if not data:
                wire.closed_by_peer()
                return None
            wire.feed(data)
            reply = wire.reply()
        return reply

    def _drain(self, wire: Wire, stream: Stream) -> None:
        """After a failed write: whatever the server sent, without waiting."""
        for _ in range(_DRAIN_READS):
            try:
                data = stream.read(_READ_SIZE, 0)
            except ConnectionLostError:
                return
            if not data:
                return
            try:
                wire.feed(data)
            except ProtocolError:
                return  # the replies completed before the violation are kept

    def _probe(self) -> bool:
        wire, stream = self._current()
        if wire.pending:
            return True
        try:
            data = stream.read(_READ_SIZE, 0)
        except ConnectionLostError as exc:
            return not exc.timed_out  # timed out at once: nothing to read, alive
        if data:
            wire.feed(data)  # unsolicited bytes: the session ends here
        return True

    def _upgrade(self, timeout: float | None) -> None:
        wire, stream = self._current()
        wire.before_tls()
        if not isinstance(stream, UpgradableStream):
            raise TLSError("this connection's transport cannot start TLS")
        self._upgraded(wire, stream.start_tls(timeout))
