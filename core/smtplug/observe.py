"""Telling observers what a session does: the transcript, the logger, plugins.

:class:`Observers` has the observation hooks' names and signatures, so the
driver calls it as it would call ``manager.hook``; it writes Tcllib's
``-debug`` transcript to stderr when asked, the same lines to the ``smtplug``
logger at DEBUG level (each record carrying its data as attributes, for JSON
log handlers: ``smtplug_direction`` ("sent", "received" or "event"),
``smtplug_server``, ``smtplug_port``, ``smtplug_connection``, ``smtplug_tls``,
``smtplug_verb`` for a command, ``smtplug_code`` and ``smtplug_enhanced`` for
a reply line; credentials already redacted), and calls the plugins' observation hooks (skipped when
no plugin implements one).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from smtplug.interfaces import ConnectionInfo
from smtplug.protocol import Reply

__all__ = ["Observers", "logger"]

logger = logging.getLogger("smtplug")


class Observers:
    """The transcript plus every plugin implementing an observation hook."""

    def __init__(self, hook: Any, *, debug: bool, stream: TextIO | None = None) -> None:
        self._debug = debug
        self._stream = stream
        self._event = hook.smtplug_on_event if hook.smtplug_on_event.get_hookimpls() else None
        self._command = hook.smtplug_on_command if hook.smtplug_on_command.get_hookimpls() else None
        self._reply = hook.smtplug_on_reply if hook.smtplug_on_reply.get_hookimpls() else None

    def watching(self) -> bool:
        """Whether anyone listens to commands and replies (the driver asks at
        every step: the logger's level may change at any time); when nobody
        does, it skips the calls."""
        return (
            self._debug
            or self._command is not None
            or self._reply is not None
            or logger.isEnabledFor(logging.DEBUG)
        )

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

    def smtplug_on_event(self, *, info: ConnectionInfo, event: str) -> None:
        self._emit(info, f"    ... {event}", {"smtplug_direction": "event"})
        if self._event is not None:
            self._event(info=info, event=event)

    def smtplug_on_command(self, *, info: ConnectionInfo, command: str) -> None:
        verb = command.split(" ", 1)[0].upper()
        self._emit(info, f"--> {command}", {"smtplug_direction": "sent", "smtplug_verb": verb})
        if self._command is not None:
            self._command(info=info, command=command)

    def smtplug_on_reply(self, *, info: ConnectionInfo, reply: Reply) -> None:
        if self._debug or logger.isEnabledFor(logging.DEBUG):
            for line in str(reply).split("\n"):
                self._emit(
                    info,
                    f"<-- {line}",
                    {
                        "smtplug_direction": "received",
                        "smtplug_code": reply.code,
                        "smtplug_enhanced": reply.enhanced,
                    },
                )
        if self._reply is not None:
            self._reply(info=info, reply=reply)
