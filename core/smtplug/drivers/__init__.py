"""The drivers: they perform a program's actions (:mod:`smtplug.actions`).

:mod:`~smtplug.drivers.blocking` over blocking streams (:class:`smtplug.Client`,
:func:`smtplug.sendmessage`), :mod:`~smtplug.drivers.aio` over asyncio streams
(:class:`smtplug.AsyncClient`, :func:`smtplug.asendmessage`). Each owns one
current connection at a time and only moves bytes and keeps time: what the
bytes mean is the :class:`~smtplug.wire.Wire`'s, what to do next the
program's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping
from typing import Any, Generic, TypeVar

from smtplug.errors import ConnectionLostError
from smtplug.events import Closed
from smtplug.interfaces import ConnectionInfo, TLSInfo
from smtplug.observe import Observers, logger
from smtplug.wire import Wire

__all__ = ["CurrentConnection"]

CLOSED = Closed()
S = TypeVar("S")  # a driver's stream type
X = TypeVar("X")  # its transport type


class CurrentConnection(Generic[X, S]):
    """What both drivers keep, without I/O: the transport, its options, the
    observers, the TLS sessions to resume, and the current connection (its
    stream and its :class:`~smtplug.wire.Wire`)."""

    def __init__(
        self,
        transport: X,
        options: Mapping[str, Any],
        hook: Observers,
        sessions: MutableMapping[tuple[str, int], object],
    ) -> None:
        self._transport = transport
        self._options = options
        self._hook = hook
        self._sessions = sessions
        self._stream: S | None = None
        self.wire: Wire | None = None

    def _current(self) -> tuple[Wire, S]:
        if self.wire is None or self._stream is None:
            raise ConnectionLostError("no connection is open")
        return self.wire, self._stream

    def _attach(self, info: ConnectionInfo, stream: S) -> Wire:
        """``stream``, just opened, becomes the current connection."""
        tls = bool(getattr(stream, "tls", False))
        if tls:
            info = dataclasses.replace(info, tls=True)
        self._stream = stream
        # (hasattr, not a runtime Protocol isinstance: that is slow.)
        self.wire = Wire(
            info, self._hook, tls_of(stream), can_start_tls=hasattr(stream, "start_tls")
        )
        return self.wire

    def _upgraded(self, wire: Wire, stream: S) -> None:
        """The handshake made ``stream`` the current connection's stream."""
        self._stream = stream
        wire.after_tls(tls_of(stream))

    def close(self) -> None:
        """Close the current connection (idempotent); its wire is broken after.
        A TLS session is kept for the next connection to resume."""
        wire, stream = self.wire, self._stream
        self.wire = self._stream = None
        if wire is None or stream is None:
            return
        wire.broken = True
        saved = getattr(stream, "tls_session", None) if getattr(stream, "tls", False) else None
        if saved is not None:
            session = saved()
            if session is not None:
                self._sessions[(wire.info.server, wire.info.port)] = session
        stream.close()  # type: ignore[attr-defined]
        try:
            wire.event(CLOSED)
        except Exception as exc:  # an observer's: closing never raises
            logger.error("observer failed at close: %s", type(exc).__name__, exc_info=exc)


def tls_of(stream: object) -> TLSInfo | None:
    """What TLS negotiated on ``stream``, None when it is plain."""
    return getattr(stream, "tls_info", None) if getattr(stream, "tls", False) else None
