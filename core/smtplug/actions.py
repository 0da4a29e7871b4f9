"""What a program asks its driver to do: the actions, and nothing else.

Theory of operation. Everything smtplug does on a connection is a program: a
generator that *yields* these actions and is *sent* each one's result (or
has the I/O error that it caused *thrown* into it at that yield). The
session steps of :mod:`smtplug.session` yield the four that move bytes
(:class:`Send`, :class:`Receive`, :class:`Upgrade`, :class:`Poll`); the
programs of :mod:`smtplug.connect` and :mod:`smtplug.program`, which choose
servers and keep a client's connection, also yield :class:`Open`,
:class:`Close` and :class:`Probe`; :mod:`smtplug.retry` yields :class:`Sleep`
between the attempts of a send. A driver (:mod:`smtplug.drivers`) performs
them on one *current* connection: :class:`Open` makes a new one current,
:class:`Close` closes it. A driver makes no decision: the same program runs
under the blocking and the asyncio driver, with the same actions in the same
order.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtplug.interfaces import ConnectionInfo

__all__ = [
    "CLOSE",
    "POLL",
    "PROBE",
    "Action",
    "Close",
    "Open",
    "Poll",
    "Probe",
    "Receive",
    "Send",
    "Sleep",
    "Upgrade",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data``; ``display`` is what observers are shown (secrets redacted).

    ``timeout``: seconds the peer may go without taking any of the bytes.
    """

    data: bytes
    display: str
    timeout: float
    replies_due: bool = False
    """Replies to commands already sent may be arriving (pipelining): bytes
    the server sent are theirs, not unsolicited."""


@dataclass(frozen=True, slots=True)
class Receive:
    """Read one complete reply within ``timeout`` seconds (``None``: no limit)."""

    timeout: float | None
    command: str  # what the reply answers, for error messages


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Secure the connection with TLS now (after a 220 to STARTTLS).

    The driver refuses if any byte from the server is still unread (response
    injection), runs the handshake within ``timeout`` seconds and starts a
    fresh reply parser on the encrypted stream.
    """

    timeout: float | None


@dataclass(frozen=True, slots=True)
class Poll:
    """Look, without waiting, whether the server has sent a reply: sent back
    the next complete reply, or None.

    Asked between the chunks of a message: a server may refuse it (and stop
    reading) before its end, and no more of it should be uploaded then.
    """


POLL = Poll()


@dataclass(frozen=True, slots=True)
class Open:
    """Connect to ``info.server``:``info.port`` with the driver's transport,
    within ``timeout`` seconds; sent back the new connection's
    :class:`~smtplug.wire.Wire`, which becomes the current connection (a
    current one is closed first). Connection and TLS errors are thrown in.
    """

    info: ConnectionInfo
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Close:
    """Close the current connection (idempotent: nothing when there is none).
    A TLS session is kept for resumption; observers are told ``closed``."""


CLOSE = Close()


@dataclass(frozen=True, slots=True)
class Probe:
    """Look, without waiting, whether the server closed the current idle
    connection or sent something unasked: sent back True when it did (the
    connection must not carry a transaction), False when it is quiet."""


PROBE = Probe()


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (the backoff between two attempts of a send,
    :mod:`smtplug.retry`): ``time.sleep`` in the blocking driver,
    ``asyncio.sleep`` (cancellable) in the asyncio one. Sent back None."""

    seconds: float


Action = Send | Receive | Upgrade | Poll | Open | Close | Probe | Sleep
