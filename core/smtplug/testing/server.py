"""The scripted server itself: an asyncio server in a thread of its own.

See :mod:`smtplug.testing` for what it does and how a script is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence

from smtplug.testing.script import (
    CLOSE,
    GREETING,
    RESET,
    STALL,
    Action,
    Answer,
    Command,
    Rule,
    Session,
    Transaction,
    _bdat,
    _check_drip,
    _key,
    _text,
    _with_tail,
)

__all__ = ["ScriptedServer"]

_HANDSHAKE_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_CLOSE_WAIT = 2.0  # seconds a closed session waits for its socket to be closed


class _Connection(asyncio.Protocol):
    """One client connection: buffers what arrives, runs the script on it."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.session = Session(index=-1)
        self.task: asyncio.Task[None] | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._sasl = False  # the next line answers a 334
        self._ends = 0  # ends of messages seen
        self._counts: dict[str, int] = {}  # commands seen, by verb
        # A plain TCP transport, never handed to TLS: closing it closes the
        # socket a loop turn later (a TLS close waits for the peer, and a
        # failed upgrade takes the transport away from this protocol).
        self.plain = not server.implicit_tls

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.session = self.server._new_session(self)
        self.session.tls = self.server.implicit_tls
        self.task = self.loop.create_task(self._serve())
        # The server holds this connection until both its socket is closed and
        # its task is done: stop() aborts the one and cancels the other (a
        # session may still wait for its socket to close, or a TLS close for
        # the peer, after its task or its socket is gone).
        self.task.add_done_callback(self._forget)
        self.lost.add_done_callback(self._forget)

    def data_received(self, data: bytes) -> None:
        self.session._received += data
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return not self.session.tls  # keep a plain socket open to answer; TLS cannot

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()
        self._resume()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._resume()

    # -- helpers ------------------------------------------------------------

    def _forget(self, _: object) -> None:
        if self.lost.done() and self.task is not None and self.task.done():
            self.server._connections.discard(self)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _resume(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        await self._waiter

    @property
    def closed(self) -> bool:
        return self.lost.done() or self.transport is None or self.transport.is_closing()

    def abort(self, *, rst: bool = False) -> None:
        if self.transport is None:
            return
        if rst:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    async def _line(self) -> bytes | None:
        """The next line (up to LF), or None at the end of the connection."""
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            if self.eof:
                return None
            start = len(self.buffer)
            await self._wait()

    async def _exactly(self, size: int) -> bytes:
        """``size`` octets, or fewer if the connection ends first."""
        while len(self.buffer) < size and not self.eof:
            await self._wait()
        chunk = bytes(self.buffer[:size])
        del self.buffer[:size]
        return chunk

    async def _message(self) -> bytes:
        """DATA octets up to and including CR LF "." CR LF (or to the end of
        the connection)."""
        searched = 0
        while True:
            if self.buffer.startswith(b".\r\n"):
                end = 3
                break
            found = self.buffer.find(b"\r\n.\r\n", max(0, searched - 4))
            if found >= 0:
                end = found + 5
                break
            if self.eof:
                end = len(self.buffer)
                break
            searched = len(self.buffer)
            await self._wait()
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    async def _until_closed(self) -> None:
        while not self.eof:
            await self._wait()

    # -- writing ------------------------------------------------------------

    async def _write(self, answer: Answer, tail: bytes = b"") -> bytes:
        """Send ``answer``'s data (and ``tail`` in the same write as its end);
        return its first three octets (the reply code, if well formed)."""
        drip = answer.drip if answer.drip is not None else self.server.drip
        data = answer.data
        chunks: Iterable[bytes] = (
            (bytes(data),) if isinstance(data, bytes | bytearray | memoryview) else data
        )
        head = b""
        first = True
        for chunk in _with_tail(chunks, tail):
            if drip is None:
                pieces: Iterable[bytes] = (chunk,)
            else:
                pieces = (chunk[i : i + drip[0]] for i in range(0, len(chunk), drip[0]))
            for piece in pieces:
                if not first:
                    # Between pieces, never after the last (after a 220 to
                    # STARTTLS the handshake must start with no pause): the
                    # drip's delay, flow control, a look at the connection.
                    if drip is not None:
                        await asyncio.sleep(drip[1])
                    if self._paused:
                        self._drain_waiter = self.loop.create_future()
                        await self._drain_waiter
                    elif drip is None:
                        await asyncio.sleep(0)
                first = False
                if self.closed:
                    raise ConnectionResetError("the client closed the connection")
                assert self.transport is not None
                self.transport.write(piece)
                self.session._sent += piece
                head = (head + piece)[:3]
        return head

    # -- the script ---------------------------------------------------------

    def _command(self, raw: bytes, verb: str | None = None) -> Command:
        text = _text(raw.rstrip(b"\r\n"))
        if verb is None:
            verb, _, args = text.partition(" ")
            verb = verb.upper()
        else:
            args = text
        occurrence = self._counts[verb] = self._counts.get(verb, 0) + 1
        return Command(raw, verb, args.strip(), occurrence, self.session.tls, self.session)

    def _resolve(self, rule: Rule | None, command: Command) -> Answer | Action:
        while True:
            if rule is None:
                rule = self.server._default(command)
            if isinstance(rule, Action | Answer):
                return rule
            if isinstance(rule, bytes | bytearray | memoryview):
                return Answer(bytes(rule))
            if callable(rule):
                rule = rule(command)
                continue
            if isinstance(rule, Iterable):
                return Answer(rule)
            raise TypeError(f"not a rule: {rule!r}")

    async def _answer(
        self, command: Command, keys: Sequence[str | tuple[str, int]], tail: bytes = b""
    ) -> bytes | None:
        """Answer ``command`` with the first scripted rule among ``keys`` (or
        the default); return the reply code sent (b"" for none), or None when
        the session is over."""
        script = self.server.script
        rule = next((script[key] for key in keys if key in script), None)
        if command.verb == "GREETING":
            rule = self.server.greeting
        answer = self._resolve(rule, command)
        code = b""
        if isinstance(answer, Answer):
            code = await self._write(answer, tail)
            then = answer.then
        else:
            then = answer
        if then is CLOSE:
            assert self.transport is not None
            self.transport.close()
        elif then is RESET:
            self.abort(rst=True)
        elif then is STALL:
            await self._until_closed()
        else:
            return code
        return None

    def _current(self) -> Transaction:
        transactions = self.session.transactions
        if not transactions or transactions[-1].complete:
            transactions.append(Transaction())
        return transactions[-1]

    async def _serve(self) -> None:
        session = self.session
        cancelled = False
        try:
            greeting = Command(b"", "GREETING", "", 1, session.tls, session)
            if await self._answer(greeting, ()) is None:
                return
            while (raw := await self._line()) is not None:
                command = self._command(raw, "SASL" if self._sasl else None)
                session.commands.append(command)
                if not await self._handle(command):
                    return
        except asyncio.CancelledError:
            cancelled = True
            raise
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            session.error = exc
        except Exception as exc:  # a script's callable or generator failed
            session.error = exc
            self.server.errors.append(exc)
        finally:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()
            if self.plain and not cancelled:
                # Ended means closed: asyncio closes the socket a loop turn
                # after close(); once wait_idle returns, the client can see
                # that the server hung up.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.lost), _CLOSE_WAIT)
            self.server._session_ended(session)

    async def _handle(self, command: Command) -> bool:
        """Answer one command; False when the session is over."""
        verb, occurrence = command.verb, command.occurrence
        keys: list[str | tuple[str, int]] = [(verb, occurrence), verb]
        if verb == "MAIL":
            self.session.transactions.append(Transaction(mail=command))
        elif verb == "RCPT":
            self._current().rcpts.append(command)
        elif verb == "BDAT" and (bdat := _bdat(command.args)) is not None:
            size, last = bdat
            transaction = self._current()
            chunk = await self._exactly(size)
            transaction.chunks.append(chunk)
            if len(chunk) < size:
                return False
            if last:
                transaction.complete = True
                self._ends += 1
                keys = [(".", self._ends), ".", *keys]
        tail = self.server.starttls_inject if verb == "STARTTLS" else b""
        code = await self._answer(command, keys, tail)
        if code is None:
            return False
        if verb == "DATA" and code == b"354":
            transaction = self._current()
            transaction.data = await self._message()
            if not transaction.data.endswith(b".\r\n"):
                return False
            transaction.complete = True
            self._ends += 1
            end = self._command(b".\r\n", ".")
            self.session.commands.append(end)
            code = await self._answer(end, ((".", self._ends), "."))
        elif verb == "STARTTLS" and code == b"220" and self.server._can_start_tls(self.session):
            await self._start_tls()
        elif verb in ("AUTH", "SASL"):
            self._sasl = code == b"334"
        return code is not None

    async def _start_tls(self) -> None:
        context = self.server.tls_context
        assert context is not None and self.transport is not None
        # Whatever the client sent before the handshake is never read as if it
        # came over TLS. No await between the 220 and start_tls, which pauses
        # reading at once: the handshake cannot be read as plain text, and what
        # arrives over TLS (even before start_tls returns) is kept.
        self.buffer.clear()
        self.plain = False
        try:
            transport = await self.loop.start_tls(
                self.transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=_HANDSHAKE_TIMEOUT,
            )
        except BaseException:
            # The failed upgrade closes the connection, and this protocol may
            # never hear of it (Python 3.10 gives it to the TLS layer): it is lost.
            if not self.lost.done():
                self.lost.set_result(None)
            raise
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.session.tls = True


class ScriptedServer:
    """A fake SMTP server on 127.0.0.1 that answers as scripted (see the module doc).

    ``script`` maps verbs, or ``(verb, occurrence)``, to rules; ``greeting``
    is the greeting's rule. ``capabilities`` are the EHLO keywords (default
    ``["8BITMIME"]``, plus ``STARTTLS`` when a ``tls_context`` is given and
    TLS is not implicit); ``tls_capabilities`` those offered after TLS
    (default: ``capabilities`` without ``STARTTLS``). ``tls_context`` (a
    server-side :class:`ssl.SSLContext`) is used after a 220 to STARTTLS, or
    from the first byte with ``implicit_tls=True``. ``starttls_inject`` is
    written together with the 220 to STARTTLS, before the handshake (a
    response injection attack). ``drip=(octets, seconds)`` slows every reply.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        script: Mapping[str | tuple[str, int], Rule] | None = None,
        *,
        greeting: Rule = GREETING,
        capabilities: Sequence[str] | None = None,
        tls_capabilities: Sequence[str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        starttls_inject: bytes = b"",
        drip: tuple[int, float] | None = None,
        hostname: str = "scripted.test",
    ) -> None:
        self.script = {_key(key): rule for key, rule in (script or {}).items()}
        self.greeting = greeting
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        if drip is not None:
            _check_drip(drip)
        if capabilities is None:
            capabilities = ["8BITMIME"]
            if tls_context is not None and not implicit_tls:
                capabilities.append("STARTTLS")
        self.capabilities = list(capabilities)
        self.tls_capabilities = (
            [c for c in self.capabilities if c.upper() != "STARTTLS"]
            if tls_capabilities is None
            else list(tls_capabilities)
        )
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.starttls_inject = starttls_inject
        self.drip = drip
        self.hostname = hostname
        self.host = "127.0.0.1"
        #: every connection, in the order they were accepted
        self.sessions: list[Session] = []
        #: exceptions raised by the script's callables and generators
        self.errors: list[BaseException] = []
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._changed = threading.Condition()

    # -- public -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (once started)."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        return len(self.sessions)

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every session seen so far has ended (a plain one: its
        socket closed); TimeoutError if not within ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: all(s.ended.is_set() for s in self.sessions), timeout
            ):
                raise TimeoutError(f"sessions still open after {timeout} s")

    def start(self) -> ScriptedServer:
        """Start listening; returns self."""
        if self._thread is not None:
            raise RuntimeError("the server is already started")
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda loop, context: None)  # failed handshakes ...
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                loop.create_server(
                    lambda: _Connection(self),
                    self.host,
                    0,
                    ssl=self.tls_context if self.implicit_tls else None,
                    ssl_handshake_timeout=_HANDSHAKE_TIMEOUT if self.implicit_tls else None,
                )
            )
        except BaseException:
            loop.close()
            self._loop = None
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, name=f"ScriptedServer:{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, stop the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_STOP_TIMEOUT)
        self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ScriptedServer {self.host}:{self._port} ({self.connections} connections)>"

    # -- internals ----------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        tasks = [c.task for c in connections if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lost = [c.lost for c in connections]
        if lost:
            await asyncio.wait(lost, timeout=_STOP_TIMEOUT)
        # A task cancelled before it ran, or while it waited in its finally for
        # the socket to close, never marked its session ended; now it is closed.
        for connection in connections:
            self._session_ended(connection.session)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), _STOP_TIMEOUT)

    def _new_session(self, connection: _Connection) -> Session:
        self._connections.add(connection)
        with self._changed:
            session = Session(index=len(self.sessions))
            self.sessions.append(session)
            self._changed.notify_all()
        return session

    def _session_ended(self, session: Session) -> None:
        with self._changed:
            session.ended.set()
            self._changed.notify_all()

    def _can_start_tls(self, session: Session) -> bool:
        return self.tls_context is not None and not session.tls

    def _default(self, command: Command) -> Rule:
        verb = command.verb
        if verb == "GREETING":
            return GREETING
        if verb == "EHLO":
            keywords = self.tls_capabilities if command.session.tls else self.capabilities
            lines = [self.hostname, *keywords]
            return b"".join(
                f"250{' ' if i == len(lines) - 1 else '-'}{line}\r\n".encode()
                for i, line in enumerate(lines)
            )
        if verb == "STARTTLS":
            if self._can_start_tls(command.session):
                return b"220 2.0.0 Ready to start TLS\r\n"
            return b"454 4.7.0 TLS not available\r\n"
        if verb == "QUIT":
            return Answer(b"221 2.0.0 Bye\r\n", then=CLOSE)
        if verb == "BDAT":
            bdat = _bdat(command.args)
            if bdat is None:
                return b"501 5.5.4 Syntax: BDAT <size> [LAST]\r\n"
            if bdat[1]:
                return f"250 2.0.0 OK: {bdat[0]} octets, message queued\r\n".encode()
            return f"250 2.0.0 OK: {bdat[0]} octets\r\n".encode()
        if verb == "HELO":
            return f"250 {self.hostname}\r\n".encode()
        if verb == "SASL" and command.args == "*":
            return b"501 5.7.0 Authentication cancelled\r\n"
        return _DEFAULTS.get(verb, b"502 5.5.2 Command not recognized\r\n")


_DEFAULTS: dict[str, bytes] = {
    "MAIL": b"250 2.1.0 OK\r\n",
    "RCPT": b"250 2.1.5 OK\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    ".": b"250 2.0.0 OK: queued\r\n",
    "RSET": b"250 2.0.0 OK\r\n",
    "NOOP": b"250 2.0.0 OK\r\n",
    "AUTH": b"235 2.7.0 Authentication successful\r\n",
    "SASL": b"235 2.7.0 Authentication successful\r\n",
}
