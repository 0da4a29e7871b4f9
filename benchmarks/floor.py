"""The floor: a minimal pipelined SMTP client, the least a Python client can do.

Blocking socket, TCP_NODELAY, RFC 2920 flights and nothing else: read the
greeting; EHLO (PIPELINING must be offered); then per message one write of
MAIL + every RCPT + DATA, the replies to all of them, one write of the
dot-stuffed message and its final "." (with QUIT behind it for the last
message of a connection), and the replies to those. Every reply is read in
full (multi-line replies too) and its code checked, so a refusal or a
server that hangs up is an error, never a fast run.

A kept connection sends its next message straight after the 250 to the
final ".": a successful transaction needs no RSET (RFC 5321 4.1.1.10; nor
does smtplug.Client send one). The floor does not recover from a refusal
(it raises, and the connection is dropped).

What it leaves out, and smtplug does not: option and address validation,
header handling (Bcc, Date, Message-ID), line-length and NUL checks, line
ending normalisation (the benchmark's messages are CRLF already), SIZE,
CHUNKING, TLS, AUTH, observers. It is a yardstick for benchmarks/run.py,
not a client to use.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from types import TracebackType

MAX_LINE = 4096  # a reply line longer than this is an error (RFC 5321 says 512)


class FloorError(Exception):
    """An unexpected reply, a malformed one, or a connection lost."""


def dot_stuff(message: bytes) -> bytes:
    """``message`` (CRLF line endings) as DATA sends it, without the final "."."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed


class Connection:
    """One SMTP session: greeting and EHLO at construction, then :meth:`send`."""

    def __init__(self, host: str, port: int, *, timeout: float, helo: str = "localhost") -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""
        self._pos = 0
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._expect(b"220")
            self._sock.sendall(b"EHLO " + helo.encode("ascii") + b"\r\n")
            lines = self._expect(b"250")
            keywords = {line[4:].split(b" ", 1)[0].strip().upper() for line in lines[1:]}
            if b"PIPELINING" not in keywords:
                raise FloorError("the server does not offer PIPELINING")
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(
        self, sender: str, recipients: Sequence[str], message: bytes, *, quit: bool = False
    ) -> None:
        """One transaction in two flights; ``quit``: QUIT behind the final "."."""
        if not recipients:
            raise FloorError("no recipients")
        commands = [b"MAIL FROM:<" + sender.encode("ascii") + b">\r\n"]
        commands += [b"RCPT TO:<" + rcpt.encode("ascii") + b">\r\n" for rcpt in recipients]
        commands.append(b"DATA\r\n")
        self._sock.sendall(b"".join(commands))
        self._expect(b"250", "MAIL")
        for _ in recipients:
            self._expect(b"25", "RCPT")  # 250 or 251
        self._expect(b"354", "DATA")
        self._sock.sendall(dot_stuff(message) + (b".\r\nQUIT\r\n" if quit else b".\r\n"))
        self._expect(b"250", "end of data")
        if quit:
            self._expect(b"221", "QUIT")
            self.close()

    def quit(self) -> None:
        self._sock.sendall(b"QUIT\r\n")
        self._expect(b"221", "QUIT")
        self.close()

    # --- replies -------------------------------------------------------------------------

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n", self._pos)
            if end >= 0:
                line = self._buffer[self._pos : end]
                self._pos = end + 2
                return line
            if len(self._buffer) - self._pos > MAX_LINE:
                raise FloorError("reply line too long")
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise FloorError(f"connection lost: {exc}") from exc
            if not data:
                raise FloorError("the server closed the connection")
            self._buffer = self._buffer[self._pos :] + data
            self._pos = 0

    def _expect(self, prefix: bytes, command: str = "greeting/EHLO") -> list[bytes]:
        """Read one whole reply; FloorError unless its code starts with ``prefix``."""
        lines = []
        while True:
            line = self._line()
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise FloorError(f"malformed reply to {command}: {line!r}")
            if lines and line[:3] != lines[0][:3]:
                raise FloorError(f"reply code changed within a reply to {command}: {line!r}")
            lines.append(line)
            if line[3:4] != b"-":
                break
        if not lines[0].startswith(prefix):
            raise FloorError(f"{command}: {b' / '.join(lines).decode(errors='replace')}")
        return lines


def send_per_connection(
    host: str,
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    timeout: float,
) -> None:
    """One message on a new connection, QUIT pipelined behind its end."""
    with Connection(host, port, timeout=timeout) as connection:
        connection.send(sender, recipients, message, quit=True)


def send_kept(
    host: str,
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    count: int,
    *,
    timeout: float,
) -> None:
    """``count`` messages over one connection; QUIT behind the last one."""
    with Connection(host, port, timeout=timeout) as connection:
        for number in range(count):
            connection.send(sender, recipients, message, quit=number == count - 1)
