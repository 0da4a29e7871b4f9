"""Telling observers what a session does: the transcript, the logger, plugins.

:class:`Observers` has the observation hooks' names and signatures, so the
driver calls it as it would call ``manager.hook``; it writes Tcllib's
``-debug`` transcript to stderr when asked, keeps the same lines for the
result when ``transcript=True`` (:meth:`Observers.recording`), writes them to
the ``smtplug`` logger at DEBUG level, and calls the plugins' observation
hooks (skipped when no plugin implements one).

Each log record carries its data as attributes, for JSON log handlers
(credentials already redacted):

* every record: ``smtplug_direction`` (``"sent"``, ``"received"`` or
  ``"event"``), ``smtplug_phase`` (what the session was doing: ``connect``,
  ``greeting``, ``ehlo``, ``starttls``, ``auth``, ``mail``, ``rcpt``,
  ``data``, ``bdat``, ``rset``, ``quit``, ``close`` ...), ``smtplug_server``,
  ``smtplug_port``, ``smtplug_connection``, ``smtplug_tls``;
* a command: ``smtplug_verb``; a reply line: ``smtplug_code`` and
  ``smtplug_enhanced``;
* an event: ``smtplug_event`` (its kind, :mod:`smtplug.events`) and its
  fields (:meth:`smtplug.events.Event.log_fields`) as ``smtplug_<field>``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from smtplug.errors import SMTPError
from smtplug.events import Event
from smtplug.interfaces import ConnectionInfo
from smtplug.protocol import Reply

__all__ = ["Observers", "logger"]

logger = logging.getLogger("smtplug")

#: The lines of the send in progress in this thread or task, when its client
#: keeps a transcript (``transcript=True``): (whose observers, the lines).
_RECORDING: contextvars.ContextVar[tuple[Observers, list[str]] | None] = contextvars.ContextVar(
    "smtplug_transcript", default=None
)

#: What :meth:`Observers.recording` is when no transcript is kept.
_NOT_RECORDING: contextlib.nullcontext[None] = contextlib.nullcontext(None)


class Observers:
    """The transcript plus every plugin implementing an observation hook."""

    def __init__(
        self,
        hook: Any,
        *,
        debug: bool,
        stream: TextIO | None = None,
        transcript: bool = False,
    ) -> None:
        self._debug = debug
        self._stream = stream
        self._transcript = transcript
        self._event = hook.smtplug_on_event if hook.smtplug_on_event.get_hookimpls() else None
        self._command = hook.smtplug_on_command if hook.smtplug_on_command.get_hookimpls() else None
        self._reply = hook.smtplug_on_reply if hook.smtplug_on_reply.get_hookimpls() else None

    def watching(self) -> bool:
        """Whether anyone listens to commands and replies (the driver asks at
        every step: the logger's level may change at any time); when nobody
        does, it skips the calls."""
        return (
            self._debug
            or self._transcript
            or self._command is not None
            or self._reply is not None
            or logger.isEnabledFor(logging.DEBUG)
        )

    def hears_events(self) -> bool:
        """Whether anyone listens to events (asked before one is built: an
        event nobody hears costs nothing)."""
        return (
            self._debug
            or self._transcript
            or self._event is not None
            or logger.isEnabledFor(logging.DEBUG)
        )

    def recording(self) -> contextlib.AbstractContextManager[list[str] | None]:
        """Keep the transcript lines of one send (when ``transcript=True``;
        otherwise the block gets None and it costs nothing: one shared
        null context). An :class:`SMTPError` leaving the block carries them
        as ``error.transcript``. Inside a block of the same observers (a
        one-shot call recording its close too), the outer block's lines are
        kept."""
        if not self._transcript:
            return _NOT_RECORDING
        return self._recording()

    @contextlib.contextmanager
    def _recording(self) -> Iterator[list[str] | None]:
        current = _RECORDING.get()
        if current is not None and current[0] is self:
            yield current[1]
            return
        lines: list[str] = []
        token = _RECORDING.set((self, lines))
        try:
            yield lines
        except SMTPError as exc:
            exc.transcript = tuple(lines)
            raise
        finally:
            _RECORDING.reset(token)

    def _emit(self, info: ConnectionInfo, text: str, extra: dict[str, object]) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            extra["smtplug_server"] = info.server
            extra["smtplug_port"] = info.port
            extra["smtplug_connection"] = info.connection
            extra["smtplug_tls"] = info.tls
            logger.debug("%s:%s %s", info.server, info.port, text, extra=extra)
        if self._debug:
            out = self._stream or sys.stderr
            out.write(text + "\n")
            out.flush()
        if self._transcript:
            recording = _RECORDING.get()
            if recording is not None and recording[0] is self:
                recording[1].append(text)

    def smtplug_on_event(
        self, *, info: ConnectionInfo, event: Event, phase: str | None = None
    ) -> None:
        if not self.hears_events():
            return
        extra: dict[str, object] = {
            "smtplug_direction": "event",
            "smtplug_phase": event.phase or phase,
        }
        if logger.isEnabledFor(logging.DEBUG):
            extra["smtplug_event"] = event.kind
            for name, value in event.log_fields().items():
                extra[f"smtplug_{name}"] = value
        self._emit(info, f"    ... {event}", extra)
        if self._event is not None:
            self._event(info=info, event=event)

    def smtplug_on_command(
        self, *, info: ConnectionInfo, command: str, phase: str | None = None
    ) -> None:
        verb = command.split(" ", 1)[0].upper()
        self._emit(
            info,
            f"--> {command}",
            {"smtplug_direction": "sent", "smtplug_verb": verb, "smtplug_phase": phase},
        )
        if self._command is not None:
            self._command(info=info, command=command)

    def smtplug_on_reply(
        self, *, info: ConnectionInfo, reply: Reply, phase: str | None = None
    ) -> None:
        if self._debug or self._transcript or logger.isEnabledFor(logging.DEBUG):
            for line in str(reply).split("\n"):
                self._emit(
                    info,
                    f"<-- {line}",
                    {
                        "smtplug_direction": "received",
                        "smtplug_phase": phase,
                        "smtplug_code": reply.code,
                        "smtplug_enhanced": reply.enhanced,
                    },
                )
        if self._reply is not None:
            self._reply(info=info, reply=reply)
