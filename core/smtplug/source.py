"""Reading a message: its header block now, its body later, chunk by chunk.

Theory of operation. The envelope needs the message's header fields before
anything is sent; the body is needed only when the DATA (or BDAT) phase
starts. :func:`read_message` therefore reads just far enough to find where the
header block ends, and returns the header bytes and a :class:`Body` that
produces the rest in chunks:

* ``bytes``, ``bytearray``, ``memoryview``: the body is a view into the
  caller's buffer, no copy; ``str`` and ``email.message.Message`` are
  serialised once (the one in-memory copy);
* a binary file object: read in chunks of :data:`CHUNK` octets; the size is
  known from ``os.fstat`` for real files, and a seekable file can be read
  again (so a transaction can be retried after a reconnect);
* any other iterable of bytes: consumed once, size unknown.

The header block ends at the first empty line, or at the first line that is
neither a header field nor a continuation (then there is no blank line and
the body starts with that line). Nothing here is I/O on the network.
"""

from __future__ import annotations

import copy
import email.message
import email.policy
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from smtplug.errors import InvalidInputError

__all__ = ["CHUNK", "FIELD_LINE", "MAX_HEADER", "Body", "MessageInput", "read_message"]

#: Octets read from a file or handed to the encoder at a time.
CHUNK = 1 << 20
#: The largest header block accepted from a stream.
MAX_HEADER = 1 << 20

MessageInput = (
    email.message.Message | bytes | bytearray | memoryview | str | IO[bytes] | Iterable[bytes]
)

#: A header field's first line: its name (group 1, RFC 5322 ftext) and the colon.
FIELD_LINE = re.compile(rb"([!-9;-~]+)[ \t]*:")
#: Whole header fields (a first line and its continuation lines, each ending
#: in LF): what a header block normally consists of, up to its empty line.
FIELDS = re.compile(rb"(?:[!-9;-~]+[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*)*")


class Body:
    """The message body as a sequence of chunks.

    ``size`` is its length in octets when known; ``restartable`` says whether
    :meth:`chunks` may be called again; ``ascii`` is True or False when known
    (memory-backed bodies), None when not (streams). ``whole``: the body
    itself when it is in memory and no longer than one chunk (what
    :meth:`chunks` would give in one piece, without a generator to run), else
    None.
    """

    def __init__(
        self,
        produce: Callable[[], Iterator[bytes | memoryview]],
        *,
        size: int | None,
        restartable: bool,
        ascii: bool | None,
        whole: memoryview | None = None,
    ) -> None:
        self._produce = produce
        self.whole = whole
        self.size = size
        self.restartable = restartable
        self.ascii = ascii
        self.started = False
        #: True once the whole body was checked before sending (memory bodies)
        self.checked = False

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The body's chunks; a one-shot body can be read only once."""
        if self.started and not self.restartable:
            raise InvalidInputError(
                "the message stream was already sent once and cannot be re-read"
            )
        self.started = True
        return self._produce()

    def __repr__(self) -> str:
        return f"<Body size={self.size} restartable={self.restartable}>"


def scan_header(buffer: bytes | memoryview, final: bool) -> tuple[int, int] | None:
    """Where the header block ends: ``(header_end, body_start)``, or None when
    ``buffer`` does not yet tell (more input is needed and ``final`` is False).

    ``buffer[:header_end]`` holds the header lines; the body starts at
    ``body_start`` (after the empty line, or at the first non-header line).
    """
    data = bytes(buffer) if isinstance(buffer, memoryview) else buffer
    # The usual case in one match: fields, then an empty line.
    end = FIELDS.match(data).end()  # type: ignore[union-attr]  # matches the empty string
    if data.startswith(b"\r\n", end):
        return end, end + 2
    if data.startswith(b"\n", end):
        return end, end + 1
    return _scan_lines(data, final)


def _scan_lines(data: bytes, final: bool) -> tuple[int, int] | None:
    """:func:`scan_header` line by line: the general case."""
    pos = 0
    length = len(data)
    seen_field = False
    while pos < length:
        end = data.find(b"\n", pos)
        if end < 0:
            if not final:
                return None
            end = length
        else:
            end += 1
        line = data[pos:end]
        if line in (b"\r\n", b"\n", b"\r"):
            return pos, end
        if line[:1] in (b" ", b"\t") and seen_field:
            pass
        elif FIELD_LINE.match(line) is None:
            return pos, pos
        else:
            seen_field = True
        pos = end
    return (pos, pos) if final else None


def _serialise(message: email.message.Message, utf8: bool) -> bytes:
    # The generator sets a boundary on a multipart part that lacks one: work
    # on a copy then, so the caller's object is never modified.
    if any(part.is_multipart() and not part.get_boundary() for part in message.walk()):
        message = copy.deepcopy(message)
    try:
        policy = message.policy.clone(linesep="\r\n")
        if utf8 and isinstance(policy, email.policy.EmailPolicy):  # RFC 6532, as smtplib
            policy = policy.clone(utf8=True)
        return message.as_bytes(policy=policy)
    except Exception as exc:
        raise InvalidInputError(f"the message cannot be serialised: {exc}") from exc


_FIRST_WINDOW = 1 << 16


def _scan_memory(view: memoryview) -> tuple[int, int]:
    """``scan_header`` on a large buffer, copying only growing prefixes of it."""
    window = _FIRST_WINDOW
    while True:
        final = window >= len(view)
        scanned = scan_header(bytes(view[:window]), final=final)
        if scanned is not None:
            return scanned
        if window > MAX_HEADER:
            raise InvalidInputError(f"the header block is longer than {MAX_HEADER} octets")
        window *= 4


def _from_memory(data: bytes | bytearray | memoryview) -> tuple[bytes, Body]:
    view = memoryview(data).cast("B")
    if type(data) is bytes and len(data) <= _FIRST_WINDOW:
        # (What _scan_memory does first, on the bytes themselves: no copy.)
        scanned = scan_header(data, final=True)
        assert scanned is not None  # (final: there is always an answer)
        header_end, body_start = scanned
    else:
        header_end, body_start = _scan_memory(view)
    body = view[body_start:]
    ascii = data.isascii() if isinstance(data, bytes | bytearray) else None

    def produce() -> Iterator[memoryview]:
        for offset in range(0, len(body), CHUNK):
            yield body[offset : offset + CHUNK]

    whole = body if len(body) <= CHUNK else None
    header = bytes(view[:header_end])
    return header, Body(produce, size=len(body), restartable=True, ascii=ascii, whole=whole)


def _chunk(piece: object, what: str) -> bytes:
    if isinstance(piece, bytes):
        return piece
    if isinstance(piece, bytearray | memoryview):
        return bytes(piece)
    raise InvalidInputError(f"{what} produced {type(piece).__name__}, not bytes")


def _from_stream(pieces: Iterator[object], what: str) -> tuple[bytes, int, bytes, Iterator[object]]:
    """Read until the header block ends.

    Returns the header, the offset in the stream where the body starts, the
    body octets already read, and the rest of the stream.
    """
    buffer = bytearray()
    for piece in pieces:
        buffer += _chunk(piece, what)
        scanned = scan_header(bytes(buffer), final=False)
        if scanned is not None:
            return bytes(buffer[: scanned[0]]), scanned[1], bytes(buffer[scanned[1] :]), pieces
        if len(buffer) > MAX_HEADER:
            raise InvalidInputError(f"{what}: the header block is longer than {MAX_HEADER} octets")
    scanned = scan_header(bytes(buffer), final=True)
    assert scanned is not None
    return bytes(buffer[: scanned[0]]), scanned[1], bytes(buffer[scanned[1] :]), iter(())


def _file_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        piece = stream.read(CHUNK)
        if not piece:
            return
        yield _chunk(piece, "the message file")


def _from_file(stream: IO[bytes]) -> tuple[bytes, Body]:
    if isinstance(stream, io.TextIOBase):
        raise InvalidInputError("a message file must be opened in binary mode ('rb')")
    start: int | None = None
    end: int | None = None
    try:
        if stream.seekable():
            start = stream.tell()
            end = stream.seek(0, os.SEEK_END)
            stream.seek(start)
    except (OSError, ValueError):
        start = end = None
    header, body_start, first, rest = _from_stream(_file_chunks(stream), "the message file")
    if start is not None and end is not None:
        offset = start + body_start

        def produce_again() -> Iterator[bytes]:
            stream.seek(offset)
            yield from _file_chunks(stream)

        return header, Body(produce_again, size=end - offset, restartable=True, ascii=None)

    def produce_once() -> Iterator[bytes]:
        yield first
        yield from (_chunk(piece, "the message file") for piece in rest)

    return header, Body(produce_once, size=None, restartable=False, ascii=None)


def read_message(message: object, *, utf8: bool = False) -> tuple[bytes, Body]:
    """The header block (without the empty line after it) and the body.

    ``utf8``: an ``email.message.Message`` (with an ``email.policy.EmailPolicy``)
    is serialised with ``utf8=True``: its header fields in UTF-8 (RFC 6532),
    not as encoded words.
    """
    if isinstance(message, bytes | bytearray | memoryview):
        return _from_memory(message)
    if isinstance(message, str):
        try:
            return _from_memory(message.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidInputError(f"message text is not encodable as UTF-8: {exc}") from exc
    if isinstance(message, email.message.Message):
        return _from_memory(_serialise(message, utf8))
    if hasattr(message, "read"):
        return _from_file(message)  # type: ignore[arg-type]
    if isinstance(message, Iterable):
        header, _, first, rest = _from_stream(iter(message), "the message iterable")

        def produce() -> Iterator[bytes]:
            yield first
            yield from (_chunk(piece, "the message iterable") for piece in rest)

        return header, Body(produce, size=None, restartable=False, ascii=None)
    raise InvalidInputError(
        "message must be an email.message.Message, bytes, str, a binary file or an "
        f"iterable of bytes, not {type(message).__name__}"
    )
