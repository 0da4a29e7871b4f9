"""The synchronous driver: runs :mod:`smtplug.session` steps over a stream.

It owns the stream and the reply parser of one connection, performs the
:class:`~smtplug.session.Send` and :class:`~smtplug.session.Receive` actions a
step yields, tells observers about every command and reply, and throws I/O
errors into the step at the point they happened. Any error poisons the
connection: a broken connection is closed and never used again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from typing import TypeVar

from smtplug.errors import (
    AuthenticationError,
    ConnectionLostError,
    ProtocolError,
    ResponseError,
    SMTPError,
    TLSError,
)
from smtplug.interfaces import (
    ConnectionInfo,
    ResumableStream,
    Stream,
    TLSInfo,
    TLSStream,
    UpgradableStream,
)
from smtplug.observe import Observers, logger
from smtplug.protocol import Reply, ReplyParser
from smtplug.session import Action, Poll, Receive, Send, Upgrade

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
        self._parser = ReplyParser()
        self._hook = hook
        self.info = info
        self.broken = False
        self._closed = False
        self._tls_info = self._tls_of(stream)
        self._sessions = sessions
        self._watching = True
        self._write_error: ConnectionLostError | None = None

    def event(self, text: str) -> None:
        self._hook.smtplug_on_event(info=self.info, event=text)

    @property
    def tls_info(self) -> TLSInfo | None:
        """What TLS negotiated, or None on a plain connection."""
        return self._tls_info

    @staticmethod
    def _tls_of(stream: Stream) -> TLSInfo | None:
        return stream.tls_info if stream.tls and isinstance(stream, TLSStream) else None

    def run(self, step: Generator[Action, Reply | None, T]) -> T:
        """Run one session step to completion and return its result.

        An :class:`SMTPError` from the step or the I/O below it marks the
        connection broken before it propagates.
        """
        if self.broken:
            raise ConnectionLostError(f"connection to {self.info.server} is no longer usable")
        self._watching = self._hook.watching()  # once per step: observers cost only when used
        try:
            action = next(step)
            while True:
                try:
                    result = self._perform(action)
                except SMTPError as exc:
                    action = step.throw(exc)
                else:
                    action = step.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except (ResponseError, AuthenticationError) as exc:
            # A negative reply (a refused command, a failed AUTH exchange)
            # leaves the connection in a known state, except 421: the server
            # is closing it.
            if exc.code == 421:
                self.broken = True
            raise
        except BaseException:
            self.broken = True
            raise

    def _perform(self, action: Action) -> Reply | None:
        if type(action) is Receive:
            # Pipelined replies often arrived together: take one already parsed.
            reply = self._parser.next_reply()
            if reply is None:
                if self._write_error is not None:
                    # Every reply the server sent before the write failed is read.
                    raise self._lost_after_write()
                reply = self._read_reply(action.timeout, action.command)
            if self._watching:
                self._hook.smtplug_on_reply(info=self.info, reply=reply)
            return reply
        if isinstance(action, Send):
            if self._write_error is not None:
                raise self._lost_after_write()
            if not action.replies_due and self._parser.has_pending():
                self._unsolicited(action.display)
            # Observers first: one that raises stops the send before its bytes go.
            if action.display and self._watching:
                for line in action.display.split("\n"):
                    self._hook.smtplug_on_command(info=self.info, command=line)
            try:
                self._stream.write(action.data, action.timeout)
            except ConnectionLostError as exc:
                # The server may have answered (a refusal, a 421) and closed:
                # keep what it sent, so that the session reports its reply
                # rather than the broken pipe it caused.
                self._write_error = exc
                self._drain()
                raise self._lost_after_write() from exc
            return None
        if isinstance(action, Upgrade):
            self._upgrade(action.timeout)
            return None
        if isinstance(action, Poll):
            return self._poll()
        raise TypeError(f"unknown session action {action!r}")

    def _unsolicited(self, command: str) -> None:
        """Bytes the server sent that answer nothing we asked, found before a
        command: never paired with it. A 421 is the server closing (RFC 5321
        section 3.8 allows it at any time): it is raised as that reply.
        Anything else breaks the protocol (RFC 5321 has no other unsolicited
        replies)."""
        reply = self._parser.peek_reply()
        if reply is not None and reply.code == 421:
            self._parser.next_reply()
            if self._watching:
                self._hook.smtplug_on_reply(info=self.info, reply=reply)
            raise ResponseError(
                reply.diagnostic, reply.code, command="(unsolicited)", enhanced=reply.enhanced
            )
        raise ProtocolError(f"{self.info.server} sent data before the command {command!r}")

    def _poll(self) -> Reply | None:
        """A reply the server has sent, without waiting for one."""
        reply = self._parser.next_reply()
        if reply is None and self._write_error is None:
            try:
                data = self._stream.read(_READ_SIZE, 0)
            except ConnectionLostError as exc:
                if not exc.timed_out:  # reset: nothing more can be written
                    self._write_error = exc
                return None
            if not data:
                self._write_error = ConnectionLostError(
                    f"{self.info.server} closed the connection while the message was sent"
                )
                return None
            self._parser.feed(data)
            reply = self._parser.next_reply()
        if reply is not None and self._watching:
            self._hook.smtplug_on_reply(info=self.info, reply=reply)
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
                self._parser.feed(data)
            except ProtocolError:
                return  # the replies completed before the violation are kept

    def _lost_after_write(self) -> ConnectionLostError:
        """The error of the failed write, saying whether replies wait unread."""
        exc = self._write_error
        assert exc is not None
        return ConnectionLostError(
            exc.diagnostic,
            exc.code,
            timed_out=exc.timed_out,
            replies_pending=self._parser.peek_reply() is not None,
        )

    def _upgrade(self, timeout: float | None) -> None:
        if self._parser.has_pending():
            # RFC 3207 section 5 / CVE-2011-0411 and the 2021 STARTTLS study: bytes
            # sent before the handshake would be read as if they came over TLS.
            raise TLSError(
                f"{self.info.server}:{self.info.port} sent data after its 220 reply to "
                "STARTTLS, before the TLS handshake: a response injection attack; "
                "the connection is abandoned",
                attack=True,
            )
        stream = self._stream
        if not isinstance(stream, UpgradableStream):
            raise TLSError("this connection's transport cannot start TLS")
        self._stream = stream.start_tls(timeout)
        self._tls_info = self._tls_of(self._stream)
        self._parser = ReplyParser()
        self.info = dataclasses.replace(self.info, tls=True)

    def _read_reply(self, timeout: float | None, what: str) -> Reply:
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        while True:
            reply = self._parser.next_reply()
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
                raise ConnectionLostError(
                    f"no reply to {what} from {self.info.server}:{self.info.port} "
                    f"within {timeout:g} s",
                    timed_out=True,
                ) from exc
            if not data:
                raise ConnectionLostError(
                    f"{self.info.server} closed the connection while smtplug waited "
                    f"for the reply to {what}"
                )
            self._parser.feed(data)

    def peer_closed(self) -> bool:
        """Whether the server closed this idle connection, or sent something
        unasked (a 421 before closing it): a look without waiting.

        A kept connection is checked before a transaction that puts the whole
        message in its first write (BDAT in the MAIL flight): a connection found
        dead only after that write would leave the delivery unknown.
        """
        if self._parser.has_pending():
            return True
        try:
            data = self._stream.read(_READ_SIZE, 0)
        except ConnectionLostError as exc:
            return not exc.timed_out  # timed out at once: nothing to read, alive
        if data:
            self._parser.feed(data)  # unsolicited bytes: the session ends here
        return True

    def close(self) -> None:
        """Close the stream (idempotent); the connection is unusable afterwards."""
        self.broken = True
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
