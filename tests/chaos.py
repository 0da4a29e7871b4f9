"""Chaos soak harness: a recording server, a fault-injecting proxy, a checker.

The promise checked, per message (each carries a header ``X-Chaos-Id: <n>``):

* reported sent (a result with ``accepted`` True): the server has it exactly
  once, for the recipients the result names;
* reported not sent (any :class:`smtplug.SMTPError` but
  :class:`smtplug.DeliveryUnknownError`, or ``accepted`` False): the server
  never has it;
* delivery unknown (:class:`smtplug.DeliveryUnknownError`): counted; the
  server has it at most once.

With retry on (a scenario's ``retry``: ``"fail"`` is ``smtplug.Retry()``'s
default, ``"retry"`` adds ``unknown="retry"``), the same promises hold, but a
result flagged ``may_be_duplicate`` (an earlier attempt ended unknown) means
"at least once", and a delivery unknown after retries allows as many copies
as attempts.

No other exception may escape, what the server stores is the message that
was sent (never another one's octets), no socket or thread is left behind,
and the client still sends once the faults stop.

:class:`ChaosServer` is :class:`smtplug.testing.ScriptedServer` with a
callable for every verb: a strict state machine (MAIL, then RCPT, then DATA
or BDAT; RSET; a failed BDAT fails the transaction) that refuses at random
with random codes (421 then closes) and commits a message only when its end
(the final "." or ``BDAT n LAST``) arrived complete in a sound transaction
and the server answers it 250. Every reply to the end of a message carries
the marker ``chaos-end``, so the proxy can tell when that reply went by.

:class:`ChaosProxy` sits on 127.0.0.1 between client and server and, per
connection, draws a plan from ``random.Random(f"proxy:{seed}:{index}")``:
cuts (FIN or RST, both sides) at a byte count in either direction, often
right around the end of a message or in the reply after it; stalls of one
direction (some shorter, some longer than the client's timeout); and an
unsolicited ``421`` sent to the client, then both sides closed. A 421 is
injected only while no end of a message the proxy passed to the server is
still unanswered: otherwise the proxy, not the client, would be lying about
a message the server may have stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import re
import socket
import struct
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import apis
import smtplug
from smtplug.testing import CLOSE, Answer, Command, Rule, ScriptedServer

END_MARK = b"chaos-end"
INJECTED_421 = b"421 4.3.2 chaos: service shutting down\r\n"
_ID = re.compile(rb"^X-Chaos-Id: (\d+)\r$", re.MULTILINE)
_BDAT_LAST = re.compile(rb"BDAT (\d+) LAST\r\n", re.IGNORECASE)
_DATA_END = b"\r\n.\r\n"


# --- the recording server ------------------------------------------------------------


@dataclass
class Delivery:
    """A message the server committed (answered its end with 250)."""

    session: int
    chaos_id: int | None
    content: bytes
    rcpts: list[str]
    sender: str = ""


@dataclass
class _State:
    """One connection's transaction state, as a strict server keeps it."""

    rng: random.Random
    mail: bool = False  # a MAIL was accepted and the transaction is open
    failed: bool = False  # a BDAT chunk was refused: discard up to BDAT LAST
    sender: str = ""
    rcpts: list[str] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.mail = False
        self.failed = False
        self.sender = ""
        self.rcpts = []
        self.chunks = []


# Codes a refusal may carry, by command; 421 always closes the connection.
_REFUSALS: dict[str, tuple[int, ...]] = {
    "GREETING": (421, 554),
    "EHLO": (421, 502, 550),
    "HELO": (421, 550),
    "MAIL": (421, 451, 452, 550, 553),
    "RCPT": (421, 450, 451, 452, 550, 551, 553),
    "DATA": (421, 451, 554),
    "BDAT": (421, 451, 452, 552, 554),
    ".": (421, 450, 451, 452, 552, 554),
    "RSET": (421,),
}


class ChaosServer(ScriptedServer):
    """A ScriptedServer that keeps a strict state machine, refuses at random
    (probability ``refuse`` per command, while :attr:`faults` is True) and
    records what it committed in :attr:`deliveries`."""

    def __init__(
        self, *, seed: str, pipelining: bool, chunking: bool, refuse: float = 0.04
    ) -> None:
        capabilities = ["8BITMIME"]
        if pipelining:
            capabilities.append("PIPELINING")
        if chunking:
            capabilities.append("CHUNKING")
        verbs = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", ".", "RSET", "NOOP", "QUIT"]
        script: dict[str | tuple[str, int], Rule] = {verb: self._rule for verb in verbs}
        super().__init__(script, greeting=self._rule, capabilities=capabilities)
        self.seed = seed
        self.refuse = refuse
        self.faults = True
        self.deliveries: list[Delivery] = []
        self.states: dict[int, _State] = {}

    # Everything below runs in the server's thread.

    def _state(self, command: Command) -> _State:
        index = command.session.index
        state = self.states.get(index)
        if state is None:
            state = _State(random.Random(f"server:{self.seed}:{index}"))
            self.states[index] = state
        return state

    def _refusal(self, state: _State, verb: str, often: bool = False) -> Rule | None:
        """A random refusal of ``verb``, or None; ``often``: for a rare command
        (a BDAT chunk before the last), ten times as likely."""
        codes = _REFUSALS.get(verb)
        chance = self.refuse * (10 if often else 1)
        if not codes or not self.faults or state.rng.random() >= chance:
            return None
        code = state.rng.choice(codes)
        mark = " " + END_MARK.decode() if verb == "." else ""
        line = f"{code} {code // 100}.0.0 chaos refuses {verb}{mark}\r\n".encode()
        if code == 421:
            return Answer(line, then=CLOSE)
        return line

    def _rule(self, command: Command) -> Rule | None:
        state = self._state(command)
        verb = command.verb
        if verb == "BDAT":
            words = command.args.split()
            if len(words) == 2 and words[1].upper() == "LAST":
                verb = "."
        rule = self._answer(state, verb, command)
        name = command.verb
        if name == "MAIL":
            found = re.search(r"<chaos(\d+)@", command.args)
            name += f"<{found.group(1)}>" if found else ""
        if isinstance(rule, Answer):
            code = bytes(rule.data)[:3] if isinstance(rule.data, bytes) else b"..."
            then = f" then {rule.then.value}" if rule.then is not None else ""
            state.log.append(f"{name}->{code.decode()}{then}")
        elif isinstance(rule, bytes):
            state.log.append(f"{name}->{rule[:3].decode()}")
        else:
            state.log.append(f"{name}->default")
        return rule

    def _answer(self, state: _State, verb: str, command: Command) -> Rule | None:
        if verb == "GREETING":
            return self._refusal(state, verb)
        if verb in ("EHLO", "HELO"):
            state.reset()
            return self._refusal(state, verb)
        if verb == "RSET":
            state.reset()
            return self._refusal(state, verb) or b"250 2.0.0 OK\r\n"
        if verb == "MAIL":
            if state.mail:
                return b"503 5.5.1 nested MAIL command\r\n"
            refused = self._refusal(state, verb)
            if refused is not None:
                return refused
            state.reset()
            state.mail = True
            state.sender = _address(command.args)
            return b"250 2.1.0 OK\r\n"
        if verb == "RCPT":
            if not state.mail:
                return b"503 5.5.1 need MAIL before RCPT\r\n"
            refused = self._refusal(state, verb)
            if refused is not None:
                return refused
            state.rcpts.append(_address(command.args))
            return b"250 2.1.5 OK\r\n"
        if verb == "DATA":
            if not state.mail or not state.rcpts or state.failed:
                return b"554 5.5.1 no valid recipients\r\n"
            refused = self._refusal(state, verb)
            if refused is not None:
                return refused
            if self.faults and state.rng.random() < self.refuse / 2:
                # Refused in the middle of the message: 354, a while later
                # 554, and the connection closed (the message is never read).
                pause = state.rng.uniform(0.0, 0.05)
                return Answer(
                    (b"354 go ahead\r\n", b"554 5.3.4 chaos: message refused mid-body\r\n"),
                    drip=(64, pause),
                    then=CLOSE,
                )
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == "BDAT":
            chunk = command.session.transactions[-1].chunks[-1]
            if not state.mail:
                return b"503 5.5.1 need MAIL before BDAT\r\n"
            if state.failed:
                return b"503 5.5.1 discarded after a failed BDAT\r\n"
            if not state.rcpts:
                # Nothing consumed: the envelope stays open (as Postfix does).
                return b"554 5.5.1 no valid recipients\r\n"
            refused = self._refusal(state, verb, often=True)
            if refused is not None:
                state.failed = True
                return refused
            state.chunks.append(chunk)
            return f"250 2.0.0 {len(chunk)} octets\r\n".encode()
        if verb == ".":
            return self._end(state, command)
        if verb == "NOOP":
            return b"250 2.0.0 OK\r\n"
        return None  # QUIT: 221 and close

    def _end(self, state: _State, command: Command) -> Rule:
        transaction = command.session.transactions[-1]
        if command.verb == ".":
            content = transaction.content
        else:  # BDAT ... LAST: its chunk was read whole
            content = b"".join([*state.chunks, transaction.chunks[-1]])
        if not state.mail:
            return b"503 5.5.1 need MAIL before BDAT " + END_MARK + b"\r\n"
        if not state.rcpts:
            # Nothing consumed: the envelope stays open (as Postfix does).
            return b"554 5.5.1 no valid recipients " + END_MARK + b"\r\n"
        if state.failed:
            state.reset()
            return b"554 5.5.1 discarded after a failed BDAT " + END_MARK + b"\r\n"
        refused = self._refusal(state, ".")
        if refused is not None:
            state.reset()
            return refused
        found = _ID.findall(content)
        chaos_id = int(found[0]) if len(found) == 1 else None
        self.deliveries.append(
            Delivery(command.session.index, chaos_id, content, list(state.rcpts), state.sender)
        )
        state.reset()
        return b"250 2.0.0 queued " + END_MARK + b"\r\n"

    def session_log(self, index: int, chaos_id: int | None = None) -> str:
        """What session ``index`` was sent and answered; with ``chaos_id``,
        from the MAIL of the message before it to the MAIL of the one after."""
        state = self.states.get(index)
        if state is None:
            return "(no session)"
        log = state.log
        if chaos_id is not None:
            starts = {
                entry.split("->")[0]: number
                for number, entry in reversed(list(enumerate(log)))
                if entry.startswith("MAIL<")
            }
            first = starts.get(f"MAIL<{chaos_id - 1}>", starts.get(f"MAIL<{chaos_id}>", 0))
            after = [n for key, n in starts.items() if key == f"MAIL<{chaos_id + 1}>"]
            last = after[0] + 1 if after else len(log)
            prefix = "... " if first > 0 else ""
            return prefix + " ".join(log[first:last]) + (" ..." if last < len(log) else "")
        return " ".join(log)


def _address(args: str) -> str:
    """The address of ``FROM:<a> ...`` or ``TO:<a>``."""
    start, end = args.find("<"), args.find(">")
    return args[start + 1 : end] if 0 <= start < end else args


# --- the fault-injecting proxy --------------------------------------------------------


@dataclass
class Fault:
    """One fault of a connection's plan.

    ``kind``: "cut", "stall" or "inject". ``direction``: "c2s" or "s2c" (the
    stream whose byte count triggers it). ``at``: an absolute byte offset,
    or, with ``end`` set, an offset relative to the end of the ``end``-th
    message (c2s: to the end's position; s2c: to the moment the end was
    passed to the server). ``timer``: fire that many seconds after connecting
    instead (inject only).
    """

    kind: str
    direction: str
    at: int = 0
    end: int | None = None
    how: str = "close"
    duration: float = 0.0
    timer: float | None = None
    position: int | None = None  # resolved absolute offset
    done: bool = False

    def describe(self) -> str:
        where = (
            f"after {self.timer:.2f}s"
            if self.timer is not None
            else f"{self.direction}@end{self.end}{self.at:+d}"
            if self.end is not None
            else f"{self.direction}@{self.at}"
        )
        extra = (
            f" {self.how}"
            if self.kind == "cut"
            else f" {self.duration:.2f}s"
            if self.kind == "stall"
            else ""
        )
        return f"{self.kind} {where}{extra}"


def draw_plan(rng: random.Random, timeout: float, kept: bool, ends: int = 4) -> list[Fault]:
    """A connection's faults: none, one or two (near one of its first ``ends``
    message ends, when it carries more than one: ``kept``)."""
    faults: list[Fault] = []
    count = rng.choices([0, 1, 2], weights=[1 if kept else 3, 6, 2])[0]
    for _ in range(count):
        kind = rng.choices(["cut", "stall", "inject"], weights=[5, 2, 3])[0]
        direction = rng.choice(["c2s", "s2c"])
        end = rng.randint(1, ends if kept else 1) if rng.random() < 0.6 else None
        if end is None:
            at = rng.randint(0, 3000 if direction == "c2s" else 400)
        elif direction == "c2s":
            at = rng.randint(-8, 8)
        else:
            at = rng.randint(0, 60)
        fault = Fault(kind, direction, at, end, how=rng.choice(["close", "reset"]))
        if kind == "stall":
            fault.duration = rng.uniform(0.1, 1.6) * timeout
        elif kind == "inject":
            # c2s: at a byte count of what the client sent, or near an end;
            # s2c with an end: in the same write as the reply to that end.
            if direction == "s2c" and end is None:
                fault.direction = "c2s"
                fault.timer = rng.uniform(0.0, 0.3)
            elif direction == "s2c":
                fault.at = 0
            elif end is not None:
                fault.at = rng.randint(-8, 8)
        faults.append(fault)
    return faults


@dataclass
class LinkLog:
    """What the proxy planned and did on one connection."""

    index: int
    plan: list[Fault]
    events: list[str] = field(default_factory=list)

    def describe(self) -> str:
        plan = ", ".join(f.describe() for f in self.plan) or "clean"
        return f"conn {self.index} [plan: {plan}] " + " ".join(self.events)


def _hard_close(writer: asyncio.StreamWriter, how: str) -> None:
    transport = writer.transport
    if how == "reset":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


class _Link:
    """One proxied connection: two pumps, the plan, the byte counts."""

    def __init__(
        self,
        proxy: ChaosProxy,
        log: LinkLog,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.log = log
        self.creader, self.cwriter = client
        self.sreader, self.swriter = server
        self.dead = False
        self.c2s = 0  # octets passed to the server
        self.s2c = 0  # octets passed to the client
        self.read_c2s = 0  # octets read from the client (scanned)
        self.ends: list[int] = []  # c2s offsets just past each end of a message
        self.ends_passed = 0
        self.end_replies = 0  # replies to an end passed to the client
        self.line_start = True  # what went to the client ends with a whole reply
        self._reply_tail = b""
        self.server_eof = False
        self.inject_wanted: str | None = None
        self._scan_tail = b""
        self._mark_tail = b""
        self._bdat_seen: set[int] = set()
        for fault in log.plan:
            if fault.end is None and fault.timer is None:
                fault.position = fault.at

    def event(self, text: str) -> None:
        self.log.events.append(f"{text} (c2s={self.c2s} s2c={self.s2c})")

    # -- bookkeeping --------------------------------------------------------

    def _scan(self, data: bytes) -> None:
        """Find the ends of messages in what the client sent (before passing it)."""
        base = self.read_c2s - len(self._scan_tail)
        window = self._scan_tail + data
        start = 0
        while (found := window.find(_DATA_END, start)) >= 0:
            position = base + found + len(_DATA_END)
            if position > self.read_c2s:
                self._add_end(position)
            start = found + 1
        for match in _BDAT_LAST.finditer(window):
            position = base + match.end()
            if position > self.read_c2s and position not in self._bdat_seen:
                self._bdat_seen.add(position)
                self._add_end(position + int(match.group(1)))
        self.read_c2s += len(data)
        self._scan_tail = window[-32:]

    def _add_end(self, position: int) -> None:
        self.ends.append(position)
        self.ends.sort()
        number = len(self.ends)
        for fault in self.log.plan:
            if fault.end == number and fault.direction == "c2s" and fault.position is None:
                fault.position = max(position + fault.at, 0)

    def _pass_c2s(self, data: bytes) -> None:
        if not data:
            return
        self.swriter.write(data)
        self.c2s += len(data)
        while self.ends_passed < len(self.ends) and self.ends[self.ends_passed] <= self.c2s:
            self.ends_passed += 1
            for fault in self.log.plan:
                if (
                    fault.end == self.ends_passed
                    and fault.direction == "s2c"
                    and fault.position is None
                ):
                    if fault.kind == "inject":
                        # Sent along with the reply to this end, once it passes.
                        fault.done = True
                        if self.proxy.faults and self.inject_wanted is None:
                            self.inject_wanted = fault.how
                    else:
                        fault.position = self.s2c + fault.at

    def _pass_s2c(self, data: bytes) -> None:
        if not data:
            return
        self.s2c += len(data)
        window = self._mark_tail + data
        self.end_replies += window.count(END_MARK) - self._mark_tail.count(END_MARK)
        self._mark_tail = window[-(len(END_MARK) - 1) :]
        # Between replies: after a line, and not a line of a multi-line reply
        # ("250-..."), or the 421 would land inside that reply.
        self._reply_tail = (self._reply_tail + data)[-1024:]
        last = self._reply_tail[:-1].rsplit(b"\n", 1)[-1]
        self.line_start = data.endswith(b"\n") and last[3:4] != b"-"
        if self._may_inject():
            # The 421 in the same write as the reply it follows: both reach
            # the client at once.
            self._inject_now(data)
        else:
            self.cwriter.write(data)

    # -- faults -------------------------------------------------------------

    def teardown(self, how: str) -> None:
        if self.dead:
            return
        self.dead = True
        _hard_close(self.cwriter, how)
        _hard_close(self.swriter, how)

    def _next(self, direction: str) -> Fault | None:
        pending = [
            f
            for f in self.log.plan
            if not f.done and f.direction == direction and f.position is not None
        ]
        return min(pending, key=lambda f: f.position or 0, default=None)

    async def _fire(self, fault: Fault) -> None:
        fault.done = True
        if not self.proxy.faults or self.dead:
            return
        if fault.kind == "cut":
            self.event(f"cut {fault.how}")
            self.teardown(fault.how)
        elif fault.kind == "stall":
            self.event(f"stall {fault.direction} {fault.duration:.2f}s")
            await asyncio.sleep(fault.duration)
        else:
            await self._inject(fault.how)

    async def _inject(self, how: str) -> None:
        """421 to the client, then both sides closed; only while every end of a
        message passed to the server has had its reply passed back (then at
        once, in the same burst as that reply)."""
        self.inject_wanted = how
        deadline = time.monotonic() + 1.5
        while not self.dead and self.inject_wanted is not None:
            if self.try_inject():
                return
            if self.server_eof or time.monotonic() > deadline:
                self.inject_wanted = None
                self.event("inject 421 given up")
                return
            await asyncio.sleep(0.005)

    def _may_inject(self) -> bool:
        return (
            self.inject_wanted is not None
            and not self.dead
            and self.ends_passed == self.end_replies
            and self.line_start
        )

    def try_inject(self) -> bool:
        if not self._may_inject():
            return False
        self._inject_now(b"")
        return True

    def _inject_now(self, before: bytes) -> None:
        how = self.inject_wanted or "close"
        self.inject_wanted = None
        self.event("inject 421" + (" with a reply" if before else ""))
        self.cwriter.write(before + INJECTED_421)
        self.dead = True
        self.cwriter.transport.close()  # the 421 flushed, then FIN
        _hard_close(self.swriter, how)

    async def timer(self, fault: Fault) -> None:
        assert fault.timer is not None
        await asyncio.sleep(fault.timer)
        if not fault.done:
            await self._fire(fault)

    # -- pumps --------------------------------------------------------------

    async def _pump(self, direction: str) -> None:
        reader = self.creader if direction == "c2s" else self.sreader
        writer = self.swriter if direction == "c2s" else self.cwriter
        passing = self._pass_c2s if direction == "c2s" else self._pass_s2c
        while not self.dead:
            data = await reader.read(65536)
            if self.dead:
                return
            if not data:
                if direction == "s2c":
                    self.server_eof = True
                self.event(f"{'client' if direction == 'c2s' else 'server'} eof")
                if writer.can_write_eof() and not writer.transport.is_closing():
                    writer.write_eof()
                return
            if direction == "c2s":
                self._scan(data)
            offset = self.c2s if direction == "c2s" else self.s2c
            view = memoryview(data)
            while view and not self.dead:
                fault = self._next(direction)
                if fault is None or fault.position is None or fault.position >= offset + len(view):
                    passing(bytes(view))
                    break
                take = max(fault.position - offset, 0)
                passing(bytes(view[:take]))
                view = view[take:]
                offset += take
                await self._fire(fault)
                offset = self.c2s if direction == "c2s" else self.s2c
            if not self.dead:
                await writer.drain()

    async def pump(self, direction: str) -> None:
        try:
            await self._pump(direction)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.event(f"{direction} {type(exc).__name__}")
            self.teardown("close")


class ChaosProxy:
    """A TCP proxy on 127.0.0.1 to ``target_port`` that injects faults (while
    :attr:`faults` is True) as each connection's plan says."""

    def __init__(
        self, target_port: int, *, seed: str, timeout: float, kept: bool, ends: int = 4
    ) -> None:
        self.target_port = target_port
        self.seed = seed
        self.timeout = timeout
        self.kept = kept
        self.ends = ends  # (a fault near a message end: one of the first ``ends``)
        self.faults = True
        self.links: list[LinkLog] = []
        self.errors: list[BaseException] = []
        self._active = 0
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def __enter__(self) -> ChaosProxy:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda loop, context: None)
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"ChaosProxy:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop, thread = self._loop, self._thread
        assert loop is not None and thread is not None
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def wait_idle(self, timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._active == 0, timeout):
                raise TimeoutError(f"proxy connections still open after {timeout} s")

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._changed:
            self._active += 1
        index = len(self.links)
        rng = random.Random(f"proxy:{self.seed}:{index}")
        plan = draw_plan(rng, self.timeout, self.kept, self.ends) if self.faults else []
        log = LinkLog(index, plan)
        self.links.append(log)
        swriter: asyncio.StreamWriter | None = None
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
            link = _Link(self, log, (creader, cwriter), (sreader, swriter))
            jobs = [link.pump("c2s"), link.pump("s2c")]
            jobs += [link.timer(f) for f in log.plan if f.timer is not None]
            pumps = [asyncio.ensure_future(job) for job in jobs]
            await asyncio.wait(pumps[:2])  # both directions ended
            for job in pumps[2:]:
                job.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug of the proxy: reported by the test
            self.errors.append(exc)
            log.events.append("proxy error: " + "".join(traceback.format_exception_only(exc)))
        finally:
            cwriter.transport.abort() if cwriter.transport.is_closing() else cwriter.close()
            if swriter is not None:
                swriter.close()
            with contextlib.suppress(Exception):
                await cwriter.wait_closed()
            if swriter is not None:
                with contextlib.suppress(Exception):
                    await swriter.wait_closed()
            self._tasks.discard(task)
            with self._changed:
                self._active -= 1
                self._changed.notify_all()


# --- messages, reports and the checker -----------------------------------------------


@dataclass
class Report:
    """What the client said about one message."""

    chaos_id: int
    kind: str  # "sent", "not sent", "unknown", "escaped"
    detail: str
    recipients: tuple[str, ...] = ()
    links: tuple[int, ...] = ()  # proxy connections the send may have used
    errors: tuple[str, ...] = ()  # the exception's type, and its failures' (ConnectError)
    flagged: bool = False  # sent, ``may_be_duplicate``: at least once
    at_most: int = 1  # copies a delivery unknown may have left on the server


@dataclass
class Violation:
    chaos_id: int | None
    what: str
    wire: str = ""

    def __str__(self) -> str:
        head = f"message {self.chaos_id}: " if self.chaos_id is not None else ""
        return head + self.what + (f"\n      wire: {self.wire}" if self.wire else "")


_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed")


def sender(chaos_id: int) -> str:
    """Each message has its own sender, so a stored envelope names its message."""
    return f"chaos{chaos_id}@example.com"


def make_message(chaos_id: int, rng: random.Random) -> tuple[EmailMessage, bytes]:
    """A message with ``X-Chaos-Id`` and a random body (some lines start with
    a dot, a few messages exceed one BDAT chunk); returns it and its body as
    the server must store it (CRLF)."""
    recipients = [f"rcpt{n}@example.org" for n in range(rng.choice([1, 1, 2]))]
    big = rng.random() < 0.06  # over 1 MiB: several BDAT chunks
    count = 15_000 if big else rng.randint(1, 80)
    lines = []
    for number in range(count):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 10)))
        line = f"{chaos_id} {number} {words}".ljust(76 if big else 0, "x")[:76]
        if rng.random() < 0.1:
            line = rng.choice([".", "..", ". "]) + line
        lines.append(line)
    text = "\n".join(lines) + "\n"
    msg = EmailMessage()
    msg["From"] = sender(chaos_id)
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = f"chaos {chaos_id}"
    msg["X-Chaos-Id"] = str(chaos_id)
    msg.set_content(text)
    return msg, text.replace("\n", "\r\n").encode()


def check(
    reports: list[Report],
    deliveries: list[Delivery],
    bodies: dict[int, bytes],
    describe: Callable[[Report], str] = lambda report: "",
) -> list[Violation]:
    """Every broken promise in one run."""
    violations: list[Violation] = []
    stored: dict[int, list[Delivery]] = {}
    for delivery in deliveries:
        if delivery.chaos_id is None or delivery.chaos_id not in bodies:
            violations.append(
                Violation(
                    None,
                    f"the server stored something that is not one of the messages sent "
                    f"(session {delivery.session}, {len(delivery.content)} octets: "
                    f"{delivery.content[:120]!r})",
                )
            )
            continue
        stored.setdefault(delivery.chaos_id, []).append(delivery)
    for report in reports:
        copies = stored.get(report.chaos_id, [])
        wire = describe(report) if copies or report.kind != "unknown" else ""
        said = f"reported {report.kind} ({report.detail})"
        if "ProtocolError" in report.errors:
            violations.append(
                Violation(
                    report.chaos_id,
                    f"{said}: a ProtocolError, although neither the server nor the proxy "
                    f"broke the protocol (they only refuse, cut, stall, and send 421 "
                    f"unasked, which RFC 5321 section 3.8 allows)",
                    describe(report),
                )
            )
        if report.kind == "escaped":
            violations.append(Violation(report.chaos_id, f"a non-SMTPError escaped: {said}", wire))
        elif report.kind == "sent" and report.flagged and not copies:
            violations.append(
                Violation(report.chaos_id, f"{said} (flagged) but the server has 0 copies", wire)
            )
        elif report.kind == "sent" and not report.flagged and len(copies) != 1:
            violations.append(
                Violation(report.chaos_id, f"{said} but the server has {len(copies)} copies", wire)
            )
        elif report.kind == "not sent" and copies:
            violations.append(
                Violation(report.chaos_id, f"{said} but the server has {len(copies)}", wire)
            )
        elif report.kind == "unknown" and len(copies) > report.at_most:
            violations.append(
                Violation(report.chaos_id, f"{said} and the server has {len(copies)}", wire)
            )
        for copy in copies:
            body = copy.content.split(b"\r\n\r\n", 1)[-1]
            if body != bodies[report.chaos_id]:
                violations.append(
                    Violation(
                        report.chaos_id,
                        f"{said}; the server stored other octets than the message "
                        f"(session {copy.session}, {len(copy.content)} octets)",
                        wire,
                    )
                )
            if copy.sender != sender(report.chaos_id):
                violations.append(
                    Violation(
                        report.chaos_id,
                        f"{said}; the server stored it from {copy.sender!r}, not from "
                        f"{sender(report.chaos_id)!r} (another transaction's envelope)",
                        wire,
                    )
                )
            # A flagged "sent" (an earlier attempt ended unknown) may have other
            # copies, for the recipients that attempt had (stored in any order:
            # a stalled end may reach the server after the retry's).
            if (
                report.kind == "sent"
                and sorted(copy.rcpts) != sorted(report.recipients)
                and not (
                    report.flagged
                    and any(sorted(c.rcpts) == sorted(report.recipients) for c in copies)
                )
            ):
                violations.append(
                    Violation(
                        report.chaos_id,
                        f"{said} for {list(report.recipients)}; the server has it for {copy.rcpts}",
                        wire,
                    )
                )
    reported = {report.chaos_id for report in reports}
    for chaos_id in sorted(set(stored) - reported):
        violations.append(Violation(chaos_id, "stored, but never reported on"))
    return violations


# --- one run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    mode: str  # "oneshot" (smtplug.sendmessage), "kept" (one smtplug.Client), "pool" (send_many)
    transfer: str  # "data" or "bdat"
    pipelining: bool
    retry: str = "off"  # "off", "fail" (smtplug.Retry) or "retry" (unknown="retry")

    @property
    def name(self) -> str:
        pipe = "pipelining" if self.pipelining else "no-pipelining"
        more = "" if self.retry == "off" else f"-retry-{self.retry}"
        return f"{self.mode}-{self.transfer}-{pipe}{more}"

    def policy(self, seed: int) -> smtplug.Retry | None:
        """The retry policy of this scenario: quick waits, a few attempts."""
        if self.retry == "off":
            return None
        return smtplug.Retry(
            attempts=3,
            backoff=0.01,
            max_backoff=0.05,
            unknown="retry" if self.retry == "retry" else "fail",
            rng=random.Random(f"retry:{seed}").random,
        )


SCENARIOS = [
    Scenario(mode, transfer, pipelining)
    for mode in ("oneshot", "kept", "pool")
    for transfer in ("data", "bdat")
    for pipelining in (True, False)
]

#: The same, with retry on: unknown="fail" and unknown="retry" in turn.
RETRY_SCENARIOS = [
    Scenario(s.mode, s.transfer, s.pipelining, "fail" if number % 2 else "retry")
    for number, s in enumerate(SCENARIOS)
]


@dataclass
class Outcome:
    scenario: Scenario
    seed: int
    messages: int
    reports: list[Report]
    violations: list[Violation]
    counts: dict[str, int]
    connections: int
    fired: dict[str, int]
    links: list[LinkLog] = field(default_factory=list)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        lines = [
            f"{self.scenario.name} seed {self.seed}: {self.messages} messages over "
            f"{self.connections} connections ({counts}); faults fired: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.fired.items()))
            + f"; {len(self.violations)} violations"
        ]
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)


Send = Callable[[EmailMessage, bool], smtplug.SendResult]
PoolOutcome = smtplug.Outcome
Batch = Callable[[list[EmailMessage], bool], list[PoolOutcome]]

#: A "pool" scenario's pool: few connections, so that messages wait for one
#: (and each next message's commands can go behind the end of the one
#: before), each carrying a few messages (so that many connections, each
#: with its plan of faults, carry a batch).
POOL = {"max_connections": 3, "max_messages_per_connection": 3}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run(
    scenario: Scenario,
    seed: int,
    messages: int,
    *,
    timeout: float = 0.5,
    lie: Callable[[Report], Report] | None = None,
    api: str = "blocking",
) -> Outcome:
    """Send ``messages`` messages through the proxy to the server, then one
    clean message with the faults off; check every promise. ``lie`` may
    change each report before it is checked (for the checker's self-test).
    A "pool" scenario sends them as one batch of a ``Pool`` (``api``
    "asyncio": an ``AsyncPool`` on the loop of :mod:`apis`), the clean one
    as a second batch of the same pool."""
    gc.collect()
    fds_before, threads_before = _open_fds(), threading.active_count()
    rng = random.Random(f"messages:{scenario.name}:{seed}")
    reports: list[Report] = []
    bodies: dict[int, bytes] = {}
    violations: list[Violation] = []
    unclosed: list[str] = []
    options = {"usetls": False, "timeout": timeout, "maxsecs": timeout, "client": "localhost"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        key = f"{scenario.name}:{seed}"
        server = ChaosServer(
            seed=key, pipelining=scenario.pipelining, chunking=scenario.transfer == "bdat"
        )
        with (
            server,
            ChaosProxy(
                server.port,
                seed=key,
                timeout=timeout,
                kept=scenario.mode != "oneshot",
                # (A pool's connection carries its few messages: a fault near
                # a later end would never fire.)
                ends=POOL["max_messages_per_connection"] if scenario.mode == "pool" else 4,
            ) as proxy,
            contextlib.ExitStack() as stack,
        ):
            target: dict[str, object] = {"servers": "127.0.0.1", "ports": proxy.port, **options}
            policy = scenario.policy(seed)
            if policy is not None:
                # A deadline too: every wait capped by what is left of it.
                target |= {"retry": policy, "deadline": 4 * timeout * policy.attempts}
            send: Send
            batch: Batch
            if scenario.mode == "pool" and api == "asyncio":
                apool = smtplug.AsyncPool(**target, **POOL)  # type: ignore[arg-type]
                stack.callback(apis.run, apool.close())

                async def abatch(items: list[EmailMessage], atleastone: bool) -> list[PoolOutcome]:
                    return [o async for o in apool.send_many(items, atleastone=atleastone)]

                def batch(items: list[EmailMessage], atleastone: bool) -> list[PoolOutcome]:
                    return apis.run(abatch(items, atleastone))
            elif scenario.mode == "pool":
                pool = stack.enter_context(
                    smtplug.Pool(**target, **POOL)  # type: ignore[arg-type]
                )

                def batch(items: list[EmailMessage], atleastone: bool) -> list[PoolOutcome]:
                    return list(pool.send_many(items, atleastone=atleastone))
            elif scenario.mode == "kept":
                client = stack.enter_context(smtplug.Client(**target))  # type: ignore[arg-type]

                def send(msg: EmailMessage, atleastone: bool) -> smtplug.SendResult:
                    return client.sendmessage(msg, atleastone=atleastone)
            else:

                def send(msg: EmailMessage, atleastone: bool) -> smtplug.SendResult:
                    return smtplug.sendmessage(msg, atleastone=atleastone, **target)  # type: ignore[arg-type]

            def report_of(
                chaos_id: int,
                first: int,
                result: smtplug.SendResult | None,
                error: Exception | None,
            ) -> Report:
                if isinstance(error, smtplug.DeliveryUnknownError):
                    report = Report(chaos_id, "unknown", _short(error))
                elif isinstance(error, smtplug.SMTPError):
                    report = Report(chaos_id, "not sent", _short(error))
                elif error is not None:
                    report = Report(chaos_id, "escaped", _short(error) + _where(error))
                else:
                    assert result is not None
                    kind = "sent" if result.accepted else "not sent"
                    report = Report(chaos_id, kind, f"{result!r}", result.recipients)
                    report.flagged = result.may_be_duplicate
                if policy is not None and policy.unknown == "retry":
                    report.at_most = policy.attempts
                report.links = tuple(range(first, len(proxy.links)))
                if error is not None:
                    failures = getattr(error, "failures", ())
                    report.errors = (
                        type(error).__name__,
                        *(type(f.error).__name__ for f in failures),
                    )
                return lie(report) if lie is not None else report

            def one(chaos_id: int) -> Report:
                msg, body = make_message(chaos_id, rng)
                bodies[chaos_id] = body
                atleastone = rng.random() < 0.5
                first = max(len(proxy.links) - 1, 0)
                try:
                    return report_of(chaos_id, first, send(msg, atleastone), None)
                except Exception as exc:
                    return report_of(chaos_id, first, None, exc)

            def many(numbers: range) -> list[Report]:
                """The messages ``numbers`` as one batch of the pool (one
                ``atleastone`` for all: a batch's options are the same for
                every message); each may have used any connection since."""
                items = []
                for chaos_id in numbers:
                    msg, bodies[chaos_id] = make_message(chaos_id, rng)
                    items.append(msg)
                atleastone = rng.random() < 0.5
                first = max(len(proxy.links) - 1, 0)
                try:
                    outcomes = batch(items, atleastone)
                except Exception as exc:  # (a batch ends only for a bug: every report says so)
                    return [report_of(chaos_id, first, None, exc) for chaos_id in numbers]
                assert [o.message_index for o in outcomes] == list(range(len(items)))
                return [
                    report_of(chaos_id, first, o.result, o.error)
                    for chaos_id, o in zip(numbers, outcomes, strict=True)
                ]

            if scenario.mode == "pool":
                reports += many(range(1, messages + 1))
            else:
                for chaos_id in range(1, messages + 1):
                    reports.append(one(chaos_id))
            # The faults stop: the client must still work.
            proxy.faults = server.faults = False
            final = (
                many(range(messages + 1, messages + 2))[0]
                if scenario.mode == "pool"
                else (one(messages + 1))
            )
            reports.append(final)
            if final.kind != "sent":
                violations.append(
                    Violation(
                        final.chaos_id,
                        f"the clean send after the faults failed: {final.kind} ({final.detail})",
                    )
                )
            stack.close()  # the kept Client: QUIT and close
            proxy.wait_idle()
            server.wait_idle()

            def describe(report: Report) -> str:
                return " | ".join(
                    f"{proxy.links[i].describe()} || server: "
                    f"{server.session_log(i, report.chaos_id)}"
                    for i in report.links
                    if i < len(proxy.links)
                )

            violations += check(reports, server.deliveries, bodies, describe)
            errors = [*server.errors, *proxy.errors]
            violations += [Violation(None, f"harness error: {e!r}") for e in errors]
            connections = len(proxy.links)
            links = proxy.links
            fired: dict[str, int] = {}
            for log in proxy.links:
                for text in log.events:
                    kind = text.split(" (")[0]
                    kind = kind if "with a reply" in kind else " ".join(kind.split()[:2])
                    if kind.startswith(("cut", "stall", "inject")):
                        fired[kind] = fired.get(kind, 0) + 1
        gc.collect()
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    fds_after, threads_after = _open_fds(), threading.active_count()
    if fds_after > fds_before:
        violations.append(
            Violation(None, f"file descriptors: {fds_before} before, {fds_after} after")
        )
    if threads_after > threads_before:
        violations.append(
            Violation(None, f"threads: {threads_before} before, {threads_after} after")
        )
    violations += [Violation(None, f"unclosed resource: {text}") for text in unclosed]
    counts: dict[str, int] = {}
    for report in reports[:-1]:
        counts[report.kind] = counts.get(report.kind, 0) + 1
    return Outcome(scenario, seed, messages, reports, violations, counts, connections, fired, links)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return " at " + " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(frames[-3:]))


def batches(total: int, parts: int) -> Iterator[int]:
    """``total`` split into ``parts`` nearly equal counts."""
    for index in range(parts):
        yield total // parts + (1 if index < total % parts else 0)
