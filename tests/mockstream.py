"""A socket-free SMTP peer: streams for both drivers over an in-memory server.

``MockServer(script)`` answers the commands written to it as a simple ESMTP
server does (220 greeting, EHLO with ``capabilities``, 250 to MAIL/RCPT/RSET,
354 to DATA then 250 after the final ".", 250 to BDAT, 221 to QUIT), except
where ``script`` maps a verb (or ``"."``) to other reply bytes. Its
``plugin()`` is a plugin object registering a ``plain`` transport and its
asyncio variant, both opening a fresh in-memory session with it: pass
``plugins=[server.plugin()], block_plugins=["plain"], usetls=False``. Nothing
touches a socket or a thread; everything the client wrote is in
``server.received``, one bytes per connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smtplug import hookimpl
from smtplug.errors import ConnectionLostError


class MockSession:
    """One connection's server side: client bytes in, reply bytes out."""

    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.incoming = bytearray()
        self.outgoing = bytearray(server.greeting)
        self.received = bytearray()
        self.in_data = False
        self.bdat_left = 0
        self.closed = False
        self.recipients = 0  # accepted in the current transaction

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionLostError("write to mock failed: the peer closed")
        self.received += data
        self.incoming += data
        while not self.closed:
            if self.bdat_left:
                taken = min(self.bdat_left, len(self.incoming))
                del self.incoming[:taken]
                self.bdat_left -= taken
                if self.bdat_left:
                    return
                self.answer(self.pending_bdat)
                continue
            if self.in_data:
                # (The data starts at the beginning of a line: an empty message is ".".)
                end = (b"\r\n" + self.incoming).find(b"\r\n.\r\n")
                if end < 0:
                    return
                del self.incoming[: end + 3]
                self.in_data = False
                self.answer(".")
                continue
            end = self.incoming.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self.incoming[:end])
            del self.incoming[: end + 2]
            verb = line.split(b" ", 1)[0].decode("ascii", "replace").upper()
            if verb == "BDAT":
                size, *rest = line.split()[1:]
                self.bdat_left = int(size)
                self.pending_bdat = "." if rest and rest[0].upper() == b"LAST" else "BDAT"
                if not self.bdat_left:
                    self.answer(self.pending_bdat)
                continue
            self.answer(verb)

    def answer(self, verb: str) -> None:
        script = self.server.script
        if verb in script:
            reply = script[verb]
        elif verb in ("EHLO",):
            lines = ["mock.test", *self.server.capabilities]
            reply = b"".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n".encode()
                for i, text in enumerate(lines)
            )
        elif verb == "DATA":
            # As Postfix does: no DATA without an accepted recipient.
            reply = b"354 go ahead\r\n" if self.recipients else b"554 5.5.1 no valid recipients\r\n"
        elif verb == "QUIT":
            reply = b"221 bye\r\n"
        else:
            reply = b"250 ok\r\n"
        if verb == "DATA" and reply.startswith(b"354"):
            self.in_data = True
        if verb == "RCPT" and reply.startswith(b"25"):
            self.recipients += 1
        if verb in ("MAIL", "RSET", "."):
            self.recipients = 0  # a new transaction, or none
        self.outgoing += reply
        if verb == "QUIT":
            self.closed = True

    def read(self, max_bytes: int) -> bytes:
        if not self.outgoing:
            if self.closed:
                return b""
            raise ConnectionLostError("read from mock timed out", timed_out=True)
        data = bytes(self.outgoing[:max_bytes])
        del self.outgoing[:max_bytes]
        return data


class MockStream:
    """A blocking :class:`smtplug.interfaces.Stream` over a :class:`MockSession`."""

    tls = False

    def __init__(self, session: MockSession) -> None:
        self.session = session

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        return self.session.read(max_bytes)

    def write(self, data: bytes, timeout: float | None) -> None:
        self.session.write(data)

    def close(self) -> None:
        self.session.closed = True


class AsyncMockStream(MockStream):
    """The same, as an :class:`smtplug.interfaces.AsyncStream` (never suspends)."""

    async def read(self, max_bytes: int, timeout: float | None) -> bytes:  # type: ignore[override]
        return self.session.read(max_bytes)

    async def write(self, data: bytes, timeout: float | None) -> None:  # type: ignore[override]
        self.session.write(data)


class MockServer:
    """See the module docstring."""

    def __init__(
        self,
        script: Mapping[str, bytes] | None = None,
        *,
        capabilities: Sequence[str] = ("PIPELINING", "8BITMIME"),
        greeting: bytes = b"220 mock.test ESMTP\r\n",
    ) -> None:
        self.script = dict(script or {})
        self.capabilities = list(capabilities)
        self.greeting = greeting
        self.sessions: list[MockSession] = []

    @property
    def received(self) -> list[bytes]:
        return [bytes(session.received) for session in self.sessions]

    def open(self) -> MockSession:
        session = MockSession(self)
        self.sessions.append(session)
        return session

    def plugin(self) -> object:
        server = self

        class Plain:
            name = "plain"

            def connect(self, host: str, port: int, *, timeout: Any, options: Any) -> MockStream:
                return MockStream(server.open())

        class AsyncPlain:
            name = "plain"

            async def connect(
                self, host: str, port: int, *, timeout: Any, options: Any
            ) -> AsyncMockStream:
                return AsyncMockStream(server.open())

        class Plugin:
            @hookimpl
            def smtplug_register_transports(self) -> list[object]:
                return [Plain()]

            @hookimpl
            def smtplug_register_async_transports(self) -> list[object]:
                return [AsyncPlain()]

        return Plugin()
