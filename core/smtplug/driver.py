"""The synchronous driver: runs :mod:`smtplug.session` steps over a blocking stream.

It performs the actions a step yields (:class:`~smtplug.session.Send`,
:class:`~smtplug.session.Receive`, :class:`~smtplug.session.Upgrade`,
:class:`~smtplug.session.Poll`) and throws I/O errors into the step at the
point they happened. What the bytes mean for the connection (replies,
unsolicited data, a failed write, injection before TLS, when a connection is
broken) is the :class:`~smtplug.wire.Wire`'s: this module only moves bytes
and keeps time.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TypeVar

from smtplug.errors import ConnectionLostError, ProtocolError, SMTPError, TLSError
from smtplug.interfaces import (
    ConnectionInfo,
    ResumableStream,
    Stream,
    TLSInfo,
    TLSStream,
    UpgradableStream,
)
from smtplug.observe import Observers, logger
from smtplug.protocol import Reply
from smtplug.session import Action, Poll, Receive, Send, Upgrade
from smtplug.wire import Wire

__all__ = ["Connection"]

T = TypeVar("T")

_READ_SIZE = 65536
#: Reads at most made to collect what the server sent before a write failed.
_DRAIN_READS = 16


class Connection:
    """One open connection to one server, driven synchronously."""

    def __init__(
        self,
        stream: Stream,
        info: ConnectionInfo,
        hook: Observers,
        *,
        sessions: dict[tuple[str, int], object] | None = None,
    ) -> None:
        self._stream = stream
        self.wire = Wire(info, hook, self._tls_of(stream))
        self._closed = False
        self._sessions = sessions

    @property
    def info(self) -> ConnectionInfo:
        return self.wire.info

    @property
    def broken(self) -> bool:
        return self.wire.broken

    @property
    def tls_info(self) -> TLSInfo | None:
        """What TLS negotiated, or None on a plain connection."""
        return self.wire.tls_info

    def event(self, text: str) -> None:
        self.wire.event(text)

    @staticmethod
    def _tls_of(stream: Stream) -> TLSInfo | None:
        return stream.tls_info if stream.tls and isinstance(stream, TLSStream) else None

    def run(self, step: Generator[Action, Reply | None, T]) -> T:
        """Run one session step to completion and return its result.

        An error from the step or the I/O below it may mark the connection
        broken (:meth:`Wire.failed`) before it propagates.
        """
        wire = self.wire
        if wire.broken:
            raise ConnectionLostError(f"connection to {wire.info.server} is no longer usable")
        wire.watch()
        try:
            action = next(step)
            while True:
                try:
                    result = self._perform(action)
                except SMTPError as exc:
                    wire.io_failed(exc)
                    action = step.throw(exc)
                else:
                    action = step.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except BaseException as exc:
            wire.failed(exc)
            raise

    def _perform(self, action: Action) -> Reply | None:
        wire = self.wire
        if type(action) is Receive:
            # Pipelined replies often arrived together: take one already parsed.
            reply = wire.reply()
            if reply is None:
                if not wire.readable:
                    # Every reply the server sent before the write failed is read.
                    raise wire.lost_after_write()
                reply = self._read_reply(action.timeout, action.command)
            return reply
        if isinstance(action, Send):
            wire.before_send(action)
            try:
                self._stream.write(action.data, action.timeout)
            except ConnectionLostError as exc:
                # The server may have answered (a refusal, a 421) and closed.
                wire.write_failed(exc)
                self._drain()
                raise wire.lost_after_write() from exc
            return None
        if isinstance(action, Upgrade):
            self._upgrade(action.timeout)
            return None
        if isinstance(action, Poll):
            return self._poll()
        raise TypeError(f"unknown session action {action!r}")

    def _poll(self) -> Reply | None:
        """A reply the server has sent, without waiting for one."""
        wire = self.wire
        reply = wire.reply()
        if reply is None and wire.readable:
            try:
                data = self._stream.read(_READ_SIZE, 0)
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

    def _drain(self) -> None:
        """After a failed write: whatever the server sent, without waiting."""
        for _ in range(_DRAIN_READS):
            try:
                data = self._stream.read(_READ_SIZE, 0)
            except ConnectionLostError:
                return
            if not data:
                return
            try:
                self.wire.feed(data)
            except ProtocolError:
                return  # the replies completed before the violation are kept

    def _upgrade(self, timeout: float | None) -> None:
        self.wire.before_tls()
        stream = self._stream
        if not isinstance(stream, UpgradableStream):
            raise TLSError("this connection's transport cannot start TLS")
        self._stream = stream.start_tls(timeout)
        self.wire.after_tls(self._tls_of(self._stream))

    def _read_reply(self, timeout: float | None, what: str) -> Reply:
        wire = self.wire
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        while True:
            reply = wire.reply()
            if reply is not None:
                return reply
            # The first read waits the whole timeout (the same value read after
            # read, so the stream need not change it); later ones what is left.
            remaining = (
                timeout if first else None if deadline is None else deadline - time.monotonic()
            )
            first = False
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                data = self._stream.read(_READ_SIZE, remaining)
            except (TimeoutError, ConnectionLostError) as exc:
                if isinstance(exc, ConnectionLostError) and not exc.timed_out:
                    raise
                raise wire.no_reply(what, timeout) from exc
            if not data:
                raise wire.closed_while_waiting(what)
            wire.feed(data)

    def peer_closed(self) -> bool:
        """Whether the server closed this idle connection, or sent something
        unasked (a 421 before closing it): a look without waiting.

        A kept connection is checked before a transaction that puts the whole
        message in its first write (BDAT in the MAIL flight): a connection found
        dead only after that write would leave the delivery unknown.
        """
        if self.wire.pending:
            return True
        try:
            data = self._stream.read(_READ_SIZE, 0)
        except ConnectionLostError as exc:
            return not exc.timed_out  # timed out at once: nothing to read, alive
        if data:
            self.wire.feed(data)  # unsolicited bytes: the session ends here
        return True

    def close(self) -> None:
        """Close the stream (idempotent); the connection is unusable afterwards."""
        self.wire.broken = True
        if not self._closed:
            self._closed = True
            # (A protocol isinstance check is slow: only a TLS stream can resume.)
            stream = self._stream
            if self._sessions is not None and stream.tls and isinstance(stream, ResumableStream):
                session = stream.tls_session()
                if session is not None:
                    self._sessions[(self.info.server, self.info.port)] = session
            self._stream.close()
            try:
                self.event("closed")
            except Exception as exc:  # an observer's: closing never raises
                logger.error("observer failed at close: %s", type(exc).__name__, exc_info=exc)
