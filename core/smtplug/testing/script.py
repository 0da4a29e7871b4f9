"""The scripts of :class:`~smtplug.testing.ScriptedServer`: rules, and what it records.

See :mod:`smtplug.testing` for how a script is written.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "CLOSE",
    "GREETING",
    "RESET",
    "SILENT",
    "STALL",
    "Action",
    "Answer",
    "Command",
    "Rule",
    "Session",
    "Transaction",
]

#: The default greeting.
GREETING = b"220 scripted.test ESMTP ready\r\n"


class Action(enum.Enum):
    """What the server does instead of (or after) answering."""

    CLOSE = "close"  #: close the connection, after flushing what was written
    RESET = "reset"  #: abort the connection with a TCP RST
    STALL = "stall"  #: never answer again; keep recording until the client leaves
    SILENT = "silent"  #: send no answer, read the next command


CLOSE = Action.CLOSE
RESET = Action.RESET
STALL = Action.STALL
SILENT = Action.SILENT


@dataclass(frozen=True)
class Answer:
    """Raw reply data, what to do after sending it, and how fast to send it.

    ``data`` is bytes or an iterable of bytes chunks (read lazily, so it may
    be endless). ``then`` is an :class:`Action` done after the data is sent
    (None: read the next command). ``drip=(octets, seconds)`` sends the data
    in pieces of ``octets`` with ``seconds`` between them (the server-wide
    ``drip`` applies when None).
    """

    data: bytes | Iterable[bytes] = b""
    then: Action | None = None
    drip: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        if self.drip is not None:
            _check_drip(self.drip)


Rule: TypeAlias = "bytes | Answer | Action | Iterable[bytes] | Callable[[Command], Rule | None]"


def _key(key: object) -> str | tuple[str, int]:
    """A script key, verb upper-cased; ValueError if it is not one."""
    if isinstance(key, str):
        return key.upper()
    if isinstance(key, tuple) and len(key) == 2:
        verb, occurrence = key
        if isinstance(verb, str) and isinstance(occurrence, int) and occurrence >= 1:
            return verb.upper(), occurrence
    raise ValueError(f"script keys are verbs or (verb, occurrence >= 1), not {key!r}")


def _check_drip(drip: tuple[int, float]) -> None:
    octets, seconds = drip
    if octets < 1 or seconds < 0:
        raise ValueError(f"drip must be (octets >= 1, seconds >= 0), not {drip!r}")


@dataclass(frozen=True, eq=False)
class Command:
    """One line the client sent, as the server parsed it.

    ``verb`` is the first word, upper-cased, or a pseudo-verb: ``"."`` for
    the end of DATA, ``"SASL"`` for an answer to a 334 challenge,
    ``"GREETING"`` for the greeting (never recorded). ``occurrence`` counts
    the commands with this verb on the connection, from 1.
    """

    raw: bytes  # the line as received, line ending included
    verb: str
    args: str  # the rest of the line, stripped
    occurrence: int
    tls: bool  # received over TLS
    session: Session = field(repr=False)

    @property
    def line(self) -> str:
        """The line without its ending, decoded (invalid UTF-8 as ``\\xNN``)."""
        return _text(self.raw.rstrip(b"\r\n"))


@dataclass(eq=False)
class Transaction:
    """One mail transaction: started by MAIL (or by DATA/RCPT/BDAT without one)."""

    mail: Command | None = None
    rcpts: list[Command] = field(default_factory=list)
    #: DATA: every octet after the 354 as on the wire (dot-stuffed), up to
    #: and including the final ".\r\n".
    data: bytes = b""
    #: BDAT: each chunk's octets, exactly as received.
    chunks: list[bytes] = field(default_factory=list)
    #: True once the end of the message arrived (the final "." or BDAT LAST).
    complete: bool = False

    @property
    def bdat(self) -> bytes:
        """Every BDAT chunk, joined."""
        return b"".join(self.chunks)

    @property
    def content(self) -> bytes:
        """The message as the server would store it: DATA without the final
        "." and with the leading dots un-stuffed, or the BDAT octets."""
        if self.chunks:
            return self.bdat
        body = self.data[:-3] if self.complete else self.data
        if body.startswith(b"."):
            body = body[1:]
        return body.replace(b"\r\n.", b"\r\n")


@dataclass(eq=False)
class Session:
    """What happened on one client connection (``index`` counts from 0)."""

    index: int
    tls: bool = False  # TLS is on (now, or when the session ended)
    commands: list[Command] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    #: the exception that ended the session, if any (a failed handshake, a reset ...)
    error: BaseException | None = None
    ended: threading.Event = field(default_factory=threading.Event, repr=False)
    _received: bytearray = field(default_factory=bytearray, repr=False)
    _sent: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def received(self) -> bytes:
        """Every byte the client sent (after TLS: decrypted), as received."""
        return bytes(self._received)

    @property
    def sent(self) -> bytes:
        """Every byte the server wrote (before encryption)."""
        return bytes(self._sent)

    @property
    def verbs(self) -> list[str]:
        """The verbs of :attr:`commands`, in order."""
        return [command.verb for command in self.commands]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _bdat(args: str) -> tuple[int, bool] | None:
    """BDAT's arguments: (size, last), or None when malformed."""
    words = args.split()
    if (
        len(words) in (1, 2)
        and words[0].isdigit()
        and [w.upper() for w in words[1:]] in ([], ["LAST"])
    ):
        return int(words[0]), len(words) == 2
    return None


def _with_tail(chunks: Iterable[bytes], tail: bytes) -> Iterator[bytes]:
    """``chunks`` with ``tail`` appended to the last one (so both go in one write)."""
    if not tail:
        yield from chunks
        return
    previous = b""
    for chunk in chunks:
        if previous:
            yield previous
        previous = bytes(chunk)
    yield previous + tail
