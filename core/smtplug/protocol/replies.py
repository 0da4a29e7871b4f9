"""SMTP replies: the value type and an incremental, bounded parser.

Theory of operation
-------------------
A server speaks in *replies* (RFC 5321 section 4.2). A reply is one or more
lines, each ending in CRLF and starting with the same three-digit code; every
line but the last has a ``-`` after the code, the last a space (or nothing at
all). :class:`ReplyParser` is a sans-IO state machine: the caller feeds it
whatever bytes the network produced, in pieces of any size, and pops complete
:class:`Reply` values with :meth:`ReplyParser.next_reply`. It never reads or
writes anything itself.

The parser works line by line. :meth:`ReplyParser.feed` appends the new bytes
to a buffer holding at most one incomplete line, cuts every complete line off
the front, validates it and adds it to the reply being assembled; a final line
closes that reply and queues it. All of this happens eagerly, so a violation is
reported by the ``feed`` call that delivered the offending byte (or, when
complete replies came before it, by the ``next_reply`` call after them).

The server is not trusted. Every quantity is bounded by :class:`ReplyLimits`
(octets per line, lines per reply, octets per reply); an overlong line is
refused as soon as the buffer proves it too long, without waiting for its end.
Any violation raises :class:`~smtplug.errors.ProtocolError` and *poisons* the
parser: once the byte stream is out of step there is no safe way to resync, so
every later call raises again. Replies completed before the violation are not
lost: ``feed`` then keeps quiet and :meth:`ReplyParser.next_reply` returns them
first, raising once they are gone. Whatever the bytes, nothing but
``ProtocolError`` escapes.

Reply text is decoded as UTF-8 (invalid bytes become ``\\xNN``) and every
control character except TAB is replaced with a visible ``\\xNN`` escape, so
the text can be logged, shown and put into exception messages safely.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from smtplug.errors import ProtocolError

__all__ = [
    "Reply",
    "ReplyLimits",
    "ReplyParser",
    "enhanced_status",
    "escape_text",
]


# C0 controls except TAB, DEL, and the C1 controls (U+0080..U+009F, which
# include the 8-bit CSI that terminals honour): all shown as "\xNN".
_ESCAPES: dict[int, str] = {
    i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0)) if i != 0x09
}

# RFC 3463: class "." subject "." detail, ASCII digits only (``\d`` would
# accept other scripts' digits), followed by whitespace or the end of the text.
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=[ \t]|\Z)")

_DIGITS = b"0123456789"
_FIRST_DIGITS = b"2345"
_SHOW = 100  # characters of an offending line shown in an error message

# Servers say the same few things over and over ("250 2.1.5 Ok"): a line, or a
# whole read of complete replies, that parsed cleanly before is looked up
# rather than parsed again. Both memos are bounded (emptied when full) and
# shared by every parser; a Reply is immutable, so sharing one is safe.
_KNOWN_LINES: dict[bytes, Reply] = {}  # one-line replies, by their line (without LF)
_KNOWN_BLOCKS: dict[bytes, tuple[Reply, ...]] = {}  # reads of whole replies (default limits)
_KNOWN_LINES_MAX = 256
_KNOWN_BLOCKS_MAX = 32
_KNOWN_BLOCK_SIZE = 8192  # octets; longer reads are not remembered


def escape_text(text: str) -> str:
    """Return ``text`` with control characters (except TAB) shown as ``\\xNN``."""
    return text.translate(_ESCAPES)


# Printable ASCII and TAB: text that needs neither decoding care nor escapes.
_PLAIN_TEXT = re.compile(rb"[\t\x20-\x7e]*")


def _decode(raw: bytes) -> str:
    if _PLAIN_TEXT.fullmatch(raw) is not None:  # the common case, fast
        return raw.decode("ascii")
    return raw.decode("utf-8", "backslashreplace").translate(_ESCAPES)


def _show(raw: bytes | bytearray) -> str:
    """A printable, truncated rendering of wire bytes for an error message."""
    if len(raw) > _SHOW:
        return repr(bytes(raw[:_SHOW]))[:-1] + "'..."
    return repr(bytes(raw))


def enhanced_status(code: int, text: str) -> str | None:
    """The RFC 3463 enhanced status code that ``text`` starts with, or None.

    Only a code whose class digit equals the reply code's first digit counts:
    ``enhanced_status(250, "2.1.0 ok")`` is ``"2.1.0"``, but
    ``enhanced_status(250, "5.1.1 x")`` is None.
    """
    match = _ENHANCED.match(text)
    if match is None or int(match.group(1)) != code // 100:
        return None
    return match.group(0)


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """Bounds on what a server may send, all in octets on the wire."""

    max_line_length: int = 2048
    """Octets per line, including its CRLF."""
    max_lines: int = 256
    """Lines per reply."""
    max_reply_size: int = 65536
    """Octets per reply, including every CRLF."""

    def __post_init__(self) -> None:
        # 5 octets is the shortest possible line: "250\r\n".
        if self.max_line_length < 5 or self.max_lines < 1 or self.max_reply_size < 5:
            raise ValueError(f"unusable reply limits: {self!r}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete server reply.

    ``lines`` holds the text of each line after ``"NNN "`` / ``"NNN-"``,
    decoded and with control characters escaped. ``enhanced`` is the RFC 3463
    status code the first line starts with, when its class matches ``code``.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None

    @property
    def text(self) -> str:
        """All lines' text, joined with newlines."""
        return "\n".join(self.lines)

    @property
    def diagnostic(self) -> str:
        """The first line's text, stripped (Tcllib's ``diagnostic``)."""
        return self.lines[0].strip() if self.lines else ""

    @property
    def args(self) -> tuple[str, ...]:
        """The lines after the first, stripped (Tcllib's ``args``: EHLO keywords)."""
        return tuple(line.strip() for line in self.lines[1:])

    @property
    def is_positive(self) -> bool:
        """A 2xx reply: the command succeeded."""
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        """A 3xx reply: go on (354 to DATA, 334 to AUTH)."""
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        """A 4xx reply: a temporary failure."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """A 5xx reply: a permanent failure."""
        return 500 <= self.code < 600

    def __str__(self) -> str:
        """The reply as on the wire, lines joined by newlines, without CRLF."""
        if not self.lines:
            return f"{self.code} "
        last = len(self.lines) - 1
        return "\n".join(
            f"{self.code}{' ' if i == last else '-'}{line}" for i, line in enumerate(self.lines)
        )


_DEFAULT_LIMITS = ReplyLimits()


class ReplyParser:
    """Turns received bytes into :class:`Reply` values; performs no I/O.

    >>> parser = ReplyParser()
    >>> parser.feed(b"250-mail.example.org\\r\\n250 SIZE 1000\\r\\n")
    >>> parser.next_reply()
    Reply(code=250, lines=('mail.example.org', 'SIZE 1000'), enhanced=None)
    """

    __slots__ = (
        "_buffer",
        "_code",
        "_error",
        "_limits",
        "_lines",
        "_ready",
        "_remember",
        "_size",
    )

    def __init__(self, limits: ReplyLimits | None = None) -> None:
        self._limits = limits if limits is not None else _DEFAULT_LIMITS
        self._buffer = bytearray()  # at most one incomplete line
        self._code: int | None = None  # code of the reply being assembled
        self._lines: list[str] = []  # its lines so far
        self._size = 0  # its octets so far
        self._ready: deque[Reply] = deque()
        self._error: str | None = None
        # Whole reads are remembered only under the default limits (a line's
        # own bounds are checked again on every use of a remembered line).
        self._remember = limits is None or limits == _DEFAULT_LIMITS

    @property
    def broken(self) -> bool:
        """True once a :class:`ProtocolError` was raised: the parser is unusable."""
        return self._error is not None

    @property
    def limits(self) -> ReplyLimits:
        """The limits this parser enforces."""
        return self._limits

    def has_pending(self) -> bool:
        """True if any received byte is not part of a reply already returned
        (bytes that broke the parser included)."""
        return bool(self._buffer or self._lines or self._ready or self._error)

    def peek_reply(self) -> Reply | None:
        """The next complete reply without taking it, or None."""
        return self._ready[0] if self._ready else None

    def next_reply(self) -> Reply | None:
        """Pop the next complete reply, or None if none is complete yet.

        Replies completed before a violation are still returned, in order;
        the violation is raised once they are gone.
        """
        if self._ready:
            return self._ready.popleft()
        self._check()
        return None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes and parse every complete line in them.

        Raises :class:`ProtocolError` on any violation; the parser is then
        broken for good.
        """
        self._check()
        try:
            self._feed(data)
        except ProtocolError as exc:
            self._fail(exc.diagnostic)
            if not self._ready:
                raise
        except Exception as exc:  # a bug must not let anything else escape
            self._fail(f"internal error while parsing a reply: {exc!r}")
            raise ProtocolError(f"internal error while parsing a reply: {exc!r}") from exc

    def _fail(self, diagnostic: str) -> None:
        """Break the parser for good; keep only the replies already complete
        (a reply to a pipelined QUIT gone wrong must not hide the 250 before it)."""
        self._error = diagnostic
        self._buffer.clear()
        self._lines = []

    def _check(self) -> None:
        if self._error is not None:
            raise ProtocolError(f"reply parser unusable after an earlier error: {self._error}")

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        buffer = self._buffer
        # A read that starts a reply may have been seen whole before.
        block: bytes | None = None
        before = 0
        if (
            self._remember
            and not buffer
            and self._code is None
            and type(data) is bytes
            and len(data) <= _KNOWN_BLOCK_SIZE
        ):
            known = _KNOWN_BLOCKS.get(data)
            if known is not None:
                self._ready.extend(known)
                return
            block, before = data, len(self._ready)
        # The buffered bytes hold no LF: search only the new ones.
        search = len(buffer)
        buffer += data
        limit = self._limits.max_line_length
        start = 0
        while True:
            end = buffer.find(b"\n", search)
            if end < 0:
                break
            if end + 1 - start > limit:
                raise ProtocolError(
                    f"reply line longer than {limit} octets: {_show(buffer[start : end + 1])}"
                )
            self._line(bytes(buffer[start:end]), end + 1 - start)
            start = search = end + 1
        del buffer[:start]
        # The rest has no LF yet; with its LF it would be at least one longer.
        if len(buffer) + 1 > limit:
            raise ProtocolError(
                f"reply line longer than {limit} octets (no end of line after "
                f"{len(buffer)} octets): {_show(buffer)}"
            )
        if block is not None and not buffer and self._code is None:
            if len(_KNOWN_BLOCKS) >= _KNOWN_BLOCKS_MAX:
                _KNOWN_BLOCKS.clear()
            _KNOWN_BLOCKS[block] = tuple(self._ready)[before:]

    def _line(self, raw: bytes, size: int) -> None:
        """Validate one line (``raw`` without its LF) and add it to the reply."""
        if self._code is None:
            known = _KNOWN_LINES.get(raw)
            if known is not None and size <= self._limits.max_reply_size:
                self._ready.append(known)
                return
        key = raw
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if (
            len(raw) < 3
            or raw[0] not in _FIRST_DIGITS
            or raw[1] not in _DIGITS
            or raw[2] not in _DIGITS
            or raw[3:4] not in (b"", b" ", b"-")
        ):
            raise ProtocolError(f"malformed reply line: {_show(raw)}")
        code = int(raw[:3])
        if self._code is not None and code != self._code:
            raise ProtocolError(
                f"reply line with code {code} inside a multi-line reply with code "
                f"{self._code}: {_show(raw)}"
            )
        limits = self._limits
        if len(self._lines) + 1 > limits.max_lines:
            raise ProtocolError(f"reply with more than {limits.max_lines} lines")
        if self._size + size > limits.max_reply_size:
            raise ProtocolError(f"reply longer than {limits.max_reply_size} octets")
        self._code = code
        self._lines.append(_decode(raw[4:]))
        self._size += size
        if raw[3:4] != b"-":
            lines = tuple(self._lines)
            reply = Reply(code, lines, enhanced_status(code, lines[0]))
            self._ready.append(reply)
            if len(lines) == 1:
                if len(_KNOWN_LINES) >= _KNOWN_LINES_MAX:
                    _KNOWN_LINES.clear()
                _KNOWN_LINES[key] = reply
            self._code = None
            self._lines = []
            self._size = 0
