"""The DATA payload: line-ending normalisation, dot-stuffing and termination.

Theory of operation
-------------------
After a 354 to DATA the client sends the message and ends it with a line
holding a single dot: ``CRLF . CRLF`` (RFC 5321 section 4.1.1.4). Two
transformations make sure no byte of the message can be mistaken for that
terminator, by this server or by any server behind it:

1. **Line endings.** Every CRLF, bare CR and bare LF becomes CRLF, so the wire
   carries exactly one kind of line ending. This is what defeats SMTP
   smuggling: a body holding ``LF . LF`` or ``CR . CR`` - which some server
   might read as the end of data - is sent as an ordinary line ``..``.
2. **Dot-stuffing.** A line starting with ``.`` gets one more (section 4.5.2),
   so the only line on the wire that is a single dot is the terminator.

:class:`DataEncoder` does both on a stream of chunks, carrying state across
chunk boundaries: whether the output stands at the start of a line (so the next
``.`` must be doubled) and whether the last chunk ended in a CR (held back
until the next byte shows whether it was half of a CRLF). Each chunk is
processed with a handful of ``bytes.replace`` calls, never a Python loop per
byte. Any split of a body into chunks yields the same bytes as
:func:`encode_data` on the whole body.

:func:`decode_data` is the inverse, for tests and servers.
"""

from __future__ import annotations

import re

from smtplug.errors import InvalidInputError

__all__ = [
    "MAX_LINE",
    "BodyEncoder",
    "DataEncoder",
    "LineCheck",
    "decode_data",
    "encode_data",
    "normalise_line_endings",
]

#: Octets in a line of message text, line ending not counted (RFC 5321 4.5.3.1.6).
MAX_LINE = 998

_TERMINATOR = b".\r\n"
_UNSTUFFED_DOT = re.compile(rb"(?:\A|\r\n)\.(?!\.)")


def normalise_line_endings(body: bytes) -> bytes:
    """Turn every CRLF, bare CR and bare LF into CRLF."""
    if b"\r" not in body:
        return body.replace(b"\n", b"\r\n")
    if body.count(b"\r\n") == body.count(b"\n") == body.count(b"\r"):
        # Every CR is half of a CRLF, and every LF: nothing to change. (A slice:
        # the same object for bytes, a copy of a caller's mutable bytearray.)
        return body[:]
    return body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class DataEncoder:
    """Feed body chunks, get wire bytes; :meth:`finish` returns the tail
    including the end-of-data ``.\\r\\n``.

    >>> encoder = DataEncoder()
    >>> encoder.encode(b".hidden\\n") + encoder.encode(b"last") + encoder.finish()
    b'..hidden\\r\\nlast\\r\\n.\\r\\n'
    """

    __slots__ = ("_at_line_start", "_bytes_in", "_bytes_out", "_finished", "_held_cr")

    def __init__(self) -> None:
        self._at_line_start = True  # the output so far ends a line (or is empty)
        self._held_cr = False  # the input so far ends in a CR not yet written
        self._finished = False
        self._bytes_in = 0
        self._bytes_out = 0

    @property
    def bytes_in(self) -> int:
        """Octets of body given to :meth:`encode` so far."""
        return self._bytes_in

    @property
    def bytes_out(self) -> int:
        """Octets of wire data returned so far, terminator included once finished."""
        return self._bytes_out

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` was called."""
        return self._finished

    def _check(self) -> None:
        if self._finished:
            raise ValueError("DataEncoder already finished")

    _STUFF = True  # dot-stuffing (DATA); BDAT carries the octets as they are

    def encode(self, chunk: bytes) -> bytes:
        """Return the wire bytes for the next piece of the body.

        A CR at the end of ``chunk`` is held back until the next call (or
        :meth:`finish`) shows whether an LF follows it.
        """
        self._check()
        self._bytes_in += len(chunk)
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._held_cr = True
        if not chunk:
            return b""
        out = normalise_line_endings(chunk)
        if self._STUFF:
            if b"\n." in out:
                out = out.replace(b"\r\n.", b"\r\n..")
            if self._at_line_start and out.startswith(b"."):
                out = b"." + out
        self._at_line_start = out.endswith(b"\n")
        self._bytes_out += len(out)
        return out

    _TAIL = _TERMINATOR

    def finish(self) -> bytes:
        """Return the tail: a pending line end if needed, then ``.\\r\\n``."""
        self._check()
        self._finished = True
        tail = self._TAIL if self._at_line_start and not self._held_cr else b"\r\n" + self._TAIL
        self._held_cr = False
        self._at_line_start = True
        self._bytes_out += len(tail)
        return tail


class BodyEncoder(DataEncoder):
    """For BDAT (RFC 3030): line endings made CRLF and a final CRLF ensured,
    but no dot-stuffing and no terminator (BDAT counts octets instead).

    >>> encoder = BodyEncoder()
    >>> encoder.encode(b".kept\\n") + encoder.encode(b"last") + encoder.finish()
    b'.kept\\r\\nlast\\r\\n'
    """

    __slots__ = ()
    _STUFF = False
    _TAIL = b""


class LineCheck:
    """Refuses, chunk by chunk, what SMTP cannot carry as message text.

    NUL octets (RFC 5321 section 4.5.2), lines longer than :data:`MAX_LINE`
    octets (never silently wrapped: that would change the message), and, when
    ``eight_bit`` is False, octets above 127 (a server without 8BITMIME).
    CR, LF and CRLF all end a line, as the encoders treat them. A line may
    span chunks: its length is carried over.
    """

    __slots__ = ("_carry", "_eight_bit", "_max_line")

    def __init__(self, *, eight_bit: bool = True, max_line: int = MAX_LINE) -> None:
        self._carry = 0
        self._eight_bit = eight_bit
        self._max_line = max_line

    def feed(self, chunk: bytes) -> None:
        """Check the next piece; raises :class:`InvalidInputError`."""
        if b"\0" in chunk:
            raise InvalidInputError("the message contains a NUL octet, which SMTP cannot carry")
        if not self._eight_bit and not chunk.isascii():
            raise InvalidInputError(
                "the message has 8-bit octets and the server does not offer 8BITMIME: "
                "encode it (quoted-printable or base64), or use a server that offers 8BITMIME"
            )
        if self._carry + len(chunk) <= self._max_line:
            # No line can be longer than the chunk and what came before it.
            end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            self._carry = self._carry + len(chunk) if end < 0 else len(chunk) - end - 1
            return
        # Then split on LF only. A CR (of a CRLF, or a bare one, which
        # also ends a line) can only make these lengths longer than the truth,
        # so when even they fit, the chunk is fine.
        lines = chunk.split(b"\n")
        last = lines[-1]
        cr = last.rfind(b"\r")
        if cr >= 0:  # the line ended at that CR (alone, or half of a split CRLF)
            carry = len(last) - cr - 1
        else:
            carry = len(last) + (self._carry if len(lines) == 1 else 0)
        bound = max(self._carry + len(lines[0]), max(map(len, lines)), carry)
        if bound > self._max_line:
            # Exact: every CR, LF and CRLF ends a line.
            exact = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            longest = self._carry + len(exact[0])
            if len(exact) > 1:
                longest = max(longest, max(map(len, exact[1:])))
            if longest > self._max_line:
                raise InvalidInputError(
                    f"the message has a line longer than {self._max_line} octets, which "
                    "SMTP does not allow (RFC 5321 4.5.3.1.6); wrap it or encode the part "
                    "(quoted-printable or base64)"
                )
        self._carry = carry


def encode_data(body: bytes) -> bytes:
    """The whole DATA payload for ``body``, terminator included."""
    encoder = DataEncoder()
    return encoder.encode(body) + encoder.finish()


def decode_data(wire: bytes) -> bytes:
    """Undo :func:`encode_data`: strip the terminator and the stuffed dots.

    Returns the body with CRLF line endings, including the CRLF that precedes
    the terminating dot (``b""`` for the empty body, sent as ``b".\\r\\n"``).
    Raises :class:`ValueError` if the terminator is missing, anything follows
    an earlier terminator, a line other than the terminator starts with a
    single dot, or a bare CR or LF appears.
    """
    if wire == _TERMINATOR:
        return b""
    if not wire.endswith(b"\r\n" + _TERMINATOR):
        raise ValueError("no end-of-data terminator (CRLF . CRLF) at the end")
    body = wire[: -len(_TERMINATOR)]
    crlf = body.count(b"\r\n")
    if body.count(b"\r") != crlf or body.count(b"\n") != crlf:
        raise ValueError("bare CR or LF in the data")
    match = _UNSTUFFED_DOT.search(body)
    if match is not None:
        line_end = body.find(b"\r\n", match.end())
        if line_end == match.end():
            raise ValueError(f"data after an end-of-data terminator at offset {match.start()}")
        raise ValueError(f"line starting with a single '.' at offset {match.start()}")
    if body.startswith(b".."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")
