"""One connection's protocol bookkeeping, without I/O: what every driver needs.

Theory of operation. A driver (:mod:`smtplug.drivers`: blocking or asyncio)
moves bytes; a :class:`Wire` decides what they mean for
the connection, so that no driver makes a protocol decision:

* replies: the driver feeds what it read (:meth:`Wire.feed`) and takes
  parsed replies (:meth:`Wire.reply`), observers told of each;
* before a command (:meth:`Wire.before_send`): a write that failed earlier
  makes every later one fail the same way; bytes the server sent unasked are
  never paired with the command (a complete 421 is the server closing,
  RFC 5321 section 3.8; anything else is a protocol violation, unless the
  command is one of a pipeline whose earlier replies are due); observers are
  told of the command before its bytes go;
* after a failed write (:meth:`Wire.write_failed`): the driver feeds what the
  server had sent, and replies still unread are served before the failure is
  raised (:meth:`Wire.lost_after_write` says whether any wait), so that the
  session reports the server's refusal rather than the broken pipe;
* before TLS (:meth:`Wire.before_tls`): any unread byte is a response
  injection attack; after it (:meth:`Wire.after_tls`) a fresh parser;
* errors: any error but a refused command or login (not 421) poisons the
  connection (:meth:`Wire.failed`): a broken connection is never used again.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Generator
from typing import Any, TypeVar

from smtplug.actions import Action, Send
from smtplug.errors import (
    AuthenticationError,
    ConnectionLostError,
    ProtocolError,
    ResponseError,
    TLSError,
    UnsolicitedReplyError,
)
from smtplug.events import Event
from smtplug.interfaces import ConnectionInfo, TLSInfo
from smtplug.observe import Observers
from smtplug.protocol import Reply, ReplyParser

__all__ = ["Wire"]

T = TypeVar("T")


class Wire:
    """The sans-IO state of one connection to one server."""

    __slots__ = (
        "_hook",
        "_parser",
        "_phases",
        "_watching",
        "_write_error",
        "broken",
        "can_start_tls",
        "info",
        "phase",
        "tls_info",
    )

    def __init__(
        self,
        info: ConnectionInfo,
        hook: Observers,
        tls_info: TLSInfo | None,
        *,
        can_start_tls: bool = False,
    ) -> None:
        self.info = info
        self.tls_info = tls_info  # what TLS negotiated, None on a plain connection
        self.broken = False
        #: The transport's stream can be secured in place (STARTTLS).
        self.can_start_tls = can_start_tls
        self._hook = hook
        self._parser = ReplyParser()
        self._watching = True
        self._write_error: ConnectionLostError | None = None
        #: What the session is doing, for observers (kept only while someone
        #: watches): the phase of the last command, "greeting" before any.
        self.phase = "greeting"
        self._phases: deque[str] = deque()  # of the commands whose reply is due

    # -- steps -------------------------------------------------------------------

    def step(self, body: Generator[Action, Reply | None, T]) -> Generator[Action, Any, T]:
        """Run one session step on this connection, as part of a program
        (``yield from wire.step(session.hello(...))``).

        A broken connection runs no step. Whether anyone watches is asked once
        per step (the logger's level may change at any time): observers cost
        nothing when nobody does. An error leaving the step may mark the
        connection broken (:meth:`failed`).
        """
        self.begin_step()
        try:
            return (yield from body)
        except BaseException as exc:
            self.failed(exc)
            raise

    def begin_step(self) -> None:
        """What :meth:`step` does before the step's first action, for a
        program that runs a step inline instead (the per-message transaction:
        one generator layer less on each of its actions); that program calls
        :meth:`failed` with any error leaving the step, as :meth:`step` does."""
        if self.broken:
            raise ConnectionLostError(f"connection to {self.info.server} is no longer usable")
        self._watching = self._hook.watching()

    # -- observers ---------------------------------------------------------------

    def event(self, event: Event) -> None:
        """Tell the observers of ``event`` (:mod:`smtplug.events`)."""
        self._hook.smtplug_on_event(info=self.info, event=event, phase=self.phase)

    # -- replies -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes read from the server (:class:`ProtocolError` on a violation)."""
        self._parser.feed(data)

    def reply(self) -> Reply | None:
        """The next reply already received, observers told; None if none is."""
        reply = self._parser.next_reply()
        if reply is not None and self._watching:
            phase = self._phases.popleft() if self._phases else self.phase
            self._hook.smtplug_on_reply(info=self.info, reply=reply, phase=phase)
        return reply

    @property
    def pending(self) -> bool:
        """Whether any received byte is not part of a reply already taken."""
        return self._parser.has_pending()

    @property
    def readable(self) -> bool:
        """False once a write failed: nothing more will be read (what the server
        had sent was fed after the failure)."""
        return self._write_error is None

    # -- commands ----------------------------------------------------------------

    def before_send(self, action: Send) -> None:
        """What must hold before ``action``'s bytes go (see the module doc)."""
        if self._write_error is not None:
            raise self.lost_after_write()
        if self.broken:
            raise ConnectionLostError(f"connection to {self.info.server} is no longer usable")
        if not action.replies_due and self._parser.has_pending():
            self._unsolicited(action.display)
        # Observers first: one that raises stops the send before its bytes go.
        if action.display and self._watching:
            self.told(action.display)

    def told(self, display: str) -> None:
        """Tell observers of commands (``display``: one per line); for
        commands written before, behind an earlier message, when the
        transaction they belong to starts (its replies come after)."""
        if self._watching:
            for line in display.split("\n"):
                self.phase = phase = _phase_of(line, self.phase)
                self._phases.append(phase)
                self._hook.smtplug_on_command(info=self.info, command=line, phase=phase)

    def _unsolicited(self, command: str) -> None:
        reply = self._parser.peek_reply()
        if reply is not None and reply.code == 421:
            self.reply()
            raise ResponseError(
                reply.diagnostic, reply.code, command="(unsolicited)", enhanced=reply.enhanced
            )
        message = f"{self.info.server} sent data before the command {command!r}"
        if reply is not None:
            raise UnsolicitedReplyError(message, reply)
        raise ProtocolError(message)

    def write_failed(self, exc: ConnectionLostError) -> None:
        """A write failed: no later write is tried; the driver feeds what the
        server had sent (without waiting), then raises :meth:`lost_after_write`."""
        self._write_error = exc

    def closed_by_peer(self) -> None:
        """The server closed the connection while the client was still sending."""
        self._write_error = ConnectionLostError(
            f"{self.info.server} closed the connection while the message was sent"
        )

    def lost_after_write(self) -> ConnectionLostError:
        """The error of the failed write, saying whether replies wait unread."""
        exc = self._write_error
        assert exc is not None
        return ConnectionLostError(
            exc.diagnostic,
            exc.code,
            timed_out=exc.timed_out,
            replies_pending=self._parser.peek_reply() is not None,
        )

    # -- TLS ---------------------------------------------------------------------

    def before_tls(self) -> None:
        """RFC 3207 section 5 / CVE-2011-0411 and the 2021 STARTTLS study: bytes
        sent before the handshake would be read as if they came over TLS."""
        if self._parser.has_pending():
            raise TLSError(
                f"{self.info.server}:{self.info.port} sent data after its 220 reply to "
                "STARTTLS, before the TLS handshake: a response injection attack; "
                "the connection is abandoned",
                attack=True,
            )

    def after_tls(self, tls_info: TLSInfo | None) -> None:
        """The handshake is done: a fresh parser for the encrypted stream."""
        self.tls_info = tls_info
        self._parser = ReplyParser()
        self._phases.clear()
        self.info = dataclasses.replace(self.info, tls=True)

    # -- failures ----------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """An error left a step: a negative reply (a refused command or login)
        leaves the connection in a known state, except 421 (the server is
        closing it); anything else poisons it."""
        if not isinstance(exc, ResponseError | AuthenticationError) or exc.code == 421:
            self.broken = True

    def io_failed(self, exc: BaseException) -> None:
        """The driver throws an error of its own into the step: a lost or timed
        out connection, or a broken reply, leaves replies that may still come
        and would answer a later command. Whatever the step makes of it, the
        connection is never used for another command (a refusal read after a
        failed write is still read: reading is not a command)."""
        if isinstance(exc, ConnectionLostError | ProtocolError):
            self.broken = True

    def no_reply(self, what: str, timeout: float | None) -> ConnectionLostError:
        """The error for a wait that ran out."""
        return ConnectionLostError(
            f"no reply to {what} from {self.info.server}:{self.info.port} within {timeout:g} s",
            timed_out=True,
        )

    def closed_while_waiting(self, what: str) -> ConnectionLostError:
        """The error for the server closing the connection during a wait."""
        return ConnectionLostError(
            f"{self.info.server} closed the connection while smtplug waited for the reply to {what}"
        )


#: Commands whose phase is not their verb in lower case.
_PHASES = {"HELO": "ehlo", "<MESSAGE:": "data", ".": "data"}


def _phase_of(line: str, current: str) -> str:
    """The phase of a command line as observers see it: its verb (``mail``,
    ``rcpt``, ``bdat`` ...; HELO is ``ehlo``, the message is ``data``); a SASL
    response (``<redacted>``, ``*``) stays in the current phase (``auth``)."""
    verb = line.split(" ", 1)[0].upper()
    phase = _PHASES.get(verb)
    if phase is not None:
        return phase
    return verb.lower() if verb.isalpha() else current
