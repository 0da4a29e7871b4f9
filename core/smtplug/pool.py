"""``smtplug.Pool`` and ``smtplug.AsyncPool``: many connections, many messages.

Theory of operation. A pool holds up to ``max_connections`` *slots*; each
slot is one :class:`~smtplug.program.Conduct` (a kept connection and its
programs) with a driver of its own, all built from one plan (one registry,
one set of observers, one TLS session cache). A slot is handed to one sender
at a time (a thread for :class:`Pool`, a task for :class:`AsyncPool`) and
given back after the message; a slot carries at most one connection, so at
most ``max_connections`` are ever open.

Every send through a pool is one program (:func:`_send_program`), run by the
slot's driver as :class:`~smtplug.Client` runs its own:

1. before reuse (:func:`_ready`): a connection that carried
   ``max_messages_per_connection`` messages, is older than ``max_lifetime``
   or was idle longer than ``idle_timeout`` is closed with QUIT; any other
   kept connection is *probed* (``PROBE``: a read that does not wait), so a
   connection the server closed (or sent a 421 on) while it sat idle is
   dropped before a transaction starts on it. A broken one is never reused
   (the Conduct drops it);
2. the Conduct's ``send`` program (reconnect, 421 failover, RSET, delivery
   unknown: all decided there, once);
3. after it (:func:`_settle`): the slot counts the message on the session
   that carried it (a new session when the Conduct reconnected), and a
   connection that reached its count or lifetime is closed at once.

Idle connections past ``idle_timeout`` are also closed whenever a sender
takes a slot (no timer thread or task). Bookkeeping of the slots
(:class:`_Slots`) is shared by both pools and holds no I/O.

``send_many`` keeps a bounded window of messages in flight (:data:`WINDOW`
times ``max_connections``): messages are taken from the iterable only as
outcomes are handed back, so a generator is never materialised; the outcomes
come back in order, one per message (:class:`Outcome`), and one failing
message does not stop the others. With a retry policy or a deadline (``retry=``,
``deadline=``: :mod:`smtplug.retry`), each attempt of a message is one run of
the slot program, on the slot the message took (kept during the backoff):
a connection the attempt broke is dropped by the Conduct, so the next
attempt opens a fresh one; the deadline counts from the call, the wait for a
free slot included.

:meth:`Pool.send_many` runs its batch on an event loop of its own in the
consuming thread (:meth:`Pool._on_loop`: :class:`AsyncPool`'s batch, the
same programs on the asyncio driver, over the pool's free slots), so one
thread multiplexes every connection; on worker threads only where that
cannot be (:meth:`Pool._free_for_loop` says when).

Rate limits (``rate_limit``, ``rate_burst``, ``rate_limit_per_connection``):
a sender that took a slot waits (:func:`_pace`, a sans-IO program of waits;
:mod:`smtplug.ratelimit` books the pool's shared schedule) before the
program starts, holding no lock; a cancelled wait gives its booking back.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import inspect
import math
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sized,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from smtplug import events, retry, session
from smtplug.actions import CLOSE, PROBE, Sleep
from smtplug.api import _seconds, batch_extras, prepare, prepare_message, setup
from smtplug.drivers.aio import AsyncDriver, asyncio_transport
from smtplug.drivers.blocking import BlockingDriver
from smtplug.envelope import PreparedMessage
from smtplug.errors import (
    DeliveryUnknownError,
    InvalidInputError,
    MessageTooLargeError,
    ResponseError,
    SMTPError,
)
from smtplug.options import MessageOptions, PoolOptions, build, init_signature, method_signature
from smtplug.program import Conduct, Follow
from smtplug.protocol import Capabilities
from smtplug.protocol.dsn import MailParameters
from smtplug.ratelimit import RateLimiter, next_start, per_second
from smtplug.results import SendResult
from smtplug.source import MessageInput
from smtplug.wire import Wire

if TYPE_CHECKING:
    import asyncio  # (imported when an AsyncPool is used: it costs a blocking program 10 ms)

    from smtplug.connect import ConnectionPlan
    from smtplug.observe import Observers

__all__ = ["AsyncPool", "Outcome", "Pool", "Progress", "Status"]

#: What became of one message of a batch.
Status = Literal["sent", "refused", "not_sent", "unknown"]

#: ``progress(done, total)`` for a batch: ``total`` is None for an iterable
#: without a length (a generator).
Progress = Callable[[int, int | None], None]

#: How many messages per connection a batch takes ahead of the outcomes
#: handed out: enough that a sender waits behind every connection when its
#: message ends, so that its first flight can go behind that end
#: (:meth:`AsyncPool._chain`; with 2, only half the messages found one).
WINDOW = 4

#: The clock of every limit (a test may replace it).
_clock: Callable[[], float] = time.monotonic

#: How a :class:`Pool` sender waits for a rate limit (a test may replace it).
_sleep: Callable[[float], None] = time.sleep


async def _asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


#: How an :class:`AsyncPool` sender waits for a rate limit (a test may replace it).
_async_sleep: Callable[[float], Awaitable[None]] = _asyncio_sleep

D = TypeVar("D", BlockingDriver, AsyncDriver)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of message number ``message_index`` (from 0) of a batch.

    Exactly one of ``result`` (the server answered the message: the
    :class:`SendResult`) and ``error`` (the :class:`SMTPError` the send
    raised) is set. :attr:`status` says what it means.
    """

    message_index: int
    result: SendResult | None
    error: SMTPError | None

    @property
    def status(self) -> Status:
        """``"sent"``: accepted (``result.accepted``; some recipients may be
        refused with ``atleastone=True``); ``"refused"``: the server refused
        the message (every recipient, or a negative reply to MAIL, DATA or
        the message's end, or its SIZE limit); ``"not_sent"``: the send
        failed before the server could have the message (bad input, no
        server reachable, a lost connection or a 421 before the end);
        ``"unknown"``: :class:`DeliveryUnknownError`, the server may have it.
        """
        if self.result is not None:
            return "sent" if self.result.accepted else "refused"
        error = self.error
        if isinstance(error, DeliveryUnknownError):
            return "unknown"
        if isinstance(error, MessageTooLargeError) or (
            isinstance(error, ResponseError) and error.code != 421
        ):
            return "refused"
        return "not_sent"


@dataclass(frozen=True, slots=True)
class _Limits:
    connections: int
    messages: int | None
    lifetime: float | None
    idle: float | None
    spacing: float | None = None  # seconds between two starts on one connection


def _count(name: str, value: object, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a whole number of at least 1, not {value!r}")
    return value


def _limits(options: PoolOptions) -> _Limits:
    connections = _count("max_connections", options.max_connections, optional=False)
    assert connections is not None
    return _Limits(
        connections=connections,
        messages=_count(
            "max_messages_per_connection", options.max_messages_per_connection, optional=True
        ),
        lifetime=None
        if options.max_lifetime is None
        else _seconds("max_lifetime", options.max_lifetime),
        idle=None
        if options.idle_timeout is None
        else _seconds("idle_timeout", options.idle_timeout),
        spacing=None
        if options.rate_limit_per_connection is None
        else 1.0 / per_second("rate_limit_per_connection", options.rate_limit_per_connection),
    )


def _rate(options: PoolOptions) -> RateLimiter | None:
    """The pool's shared limiter (``rate_limit``, ``rate_burst``), or None."""
    burst = options.rate_burst
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise InvalidInputError(f"rate_burst must be a whole number of at least 1, not {burst!r}")
    if options.rate_limit is None:
        if burst != 1:
            raise InvalidInputError("rate_burst is a part of rate_limit: give rate_limit too")
        return None
    return RateLimiter(per_second("rate_limit", options.rate_limit), burst)


def _pace(
    limits: _Limits, rate: RateLimiter | None, slot: _Slot[Any]
) -> Generator[float, None, None]:
    """The waits before a message starts on ``slot``: yields the times to
    wait until (the caller sleeps, then resumes it; it yields again when
    woken early); on return the message may start. The caller throws in
    what interrupted a wait (a cancel): the pool's reservation is given back."""
    ready = next_start(slot.started, limits.spacing)
    while _clock() < ready:
        yield ready
    if rate is not None:
        start = rate.reserve(_clock())
        try:
            while _clock() < start:
                yield start
        except BaseException:
            rate.cancel(start)
            raise
    slot.started = _clock()


def _pace_again(
    limits: _Limits, rate: RateLimiter | None, slot: _Slot[Any], until: float | None
) -> Generator[Sleep, None, bool]:
    """:func:`_pace` as a program of sleeps, for an attempt after the first
    (:func:`smtplug.retry.guarded`'s ``repace``): False, the booking given
    back, when the attempt could only start at or after ``until``."""
    pace = _pace(limits, rate, slot)
    for at in pace:
        if until is not None and at >= until:
            pace.close()  # (the booking given back)
            return False
        try:
            yield Sleep(max(0.0, at - _clock()))
        except BaseException as exc:
            pace.throw(exc)  # (re-raised, the booking given back)
    return True


class _Waiter:
    """A sender waiting for a slot of an :class:`AsyncPool`, with its
    message (so that it may follow another one on its connection)."""

    __slots__ = ("extras", "future", "options", "prepared")

    def __init__(
        self,
        future: asyncio.Future[_Slot[AsyncDriver] | None],
        prepared: PreparedMessage | None,
        extras: MailParameters | None,
        options: MessageOptions | None,
    ) -> None:
        self.future = future  # a slot handed over, or None: try to take one
        self.prepared = prepared
        self.extras = extras
        self.options = options


class _Slot(Generic[D]):
    """One connection place of a pool: a Conduct, its driver, its counters."""

    __slots__ = (
        "begun",
        "chain",
        "conduct",
        "driver",
        "follower",
        "messages",
        "opened",
        "started",
        "used",
        "wire",
    )

    def __init__(self, conduct: Conduct, driver: D) -> None:
        self.conduct = conduct
        self.driver: D = driver
        self.wire: Wire | None = None  # the session the counters are about
        self.messages = 0  # messages sent on that session
        self.opened = 0.0  # when that session was (at the latest) opened
        self.used = 0.0  # when the slot was last given back
        self.started = -math.inf  # when its last message started (the per-connection rate)
        #: When the message in progress began (so when its connection was
        #: opened, if that message opens one: what :func:`_settle` records).
        self.begun = 0.0
        #: The sender whose message's first flight went behind the end of the
        #: one in progress (:meth:`AsyncPool._chain`): the slot goes to it next.
        self.follower: _Waiter | None = None
        #: An :class:`AsyncPool`'s ``follow`` for the messages on this slot
        #: (:meth:`AsyncPool._chain` of it), or None.
        self.chain: Follow | None = None

    @property
    def connected(self) -> bool:
        return self.conduct.wire is not None


def _spent(limits: _Limits, slot: _Slot[Any], now: float) -> bool:
    """True when the slot's session reached its message count or its lifetime."""
    return (limits.messages is not None and slot.messages >= limits.messages) or (
        limits.lifetime is not None and now - slot.opened >= limits.lifetime
    )


def _idle_too_long(limits: _Limits, slot: _Slot[Any], now: float) -> bool:
    return limits.idle is not None and now - slot.used > limits.idle


def _ready(limits: _Limits, slot: _Slot[Any]) -> Generator[Any, Any, None]:
    """A program: make the slot's kept connection fit to carry a transaction."""
    conduct = slot.conduct
    wire = conduct.wire
    if wire is None or conduct.ahead is not None:
        return  # (ahead: its first flight went behind the last message, fit then)
    if wire.broken:
        conduct.forget()
        yield CLOSE
        return
    now = _clock()
    if _spent(limits, slot, now) or _idle_too_long(limits, slot, now):
        yield from conduct.close()
        return
    if (yield PROBE):
        wire.event(events.Reconnecting(pooled=True))
        conduct.forget()
        yield CLOSE


def _settle(slot: _Slot[Any], started: float) -> None:
    """Count the message just sent on the session that carried it."""
    wire = slot.conduct.wire
    if wire is None or wire.broken:
        slot.wire = None
        slot.messages = 0
    elif wire is slot.wire:
        slot.messages += 1
    else:  # opened by this send (first use, or a reconnect)
        slot.wire = wire
        slot.messages = 1
        slot.opened = started


def _send_program(
    limits: _Limits,
    slot: _Slot[Any],
    prepared: PreparedMessage,
    options: MessageOptions,
    extras: MailParameters | None,
    follow: Follow | None = None,
) -> Generator[Any, Any, SendResult]:
    """A program: one message through a slot (see the module doc)."""
    conduct = slot.conduct
    if conduct.wire is not None and conduct.ahead is None:  # (else _ready has nothing to do)
        yield from _ready(limits, slot)
    started = slot.begun = _clock()
    try:
        result: SendResult = yield from conduct.send_prepared(
            prepared, extras, options, last=False, follow=follow
        )
    finally:
        _settle(slot, started)
    if conduct.connected and conduct.ahead is None and _spent(limits, slot, _clock()):
        yield from conduct.close()
    return result


def _drop_ahead(slot: _Slot[AsyncDriver]) -> None:
    """Close the slot's connection if a chained first flight is on it that no
    transaction will read (its sender will not send)."""
    if slot.conduct.ahead is not None:
        slot.conduct.forget()
        slot.driver.close()


class _Slots(Generic[D]):
    """Which slots are idle, how many exist; no I/O, no locking (the pools lock)."""

    def __init__(self, limits: _Limits, make: Callable[[], _Slot[D]]) -> None:
        self.limits = limits
        self.make: Callable[[], _Slot[D]] = make
        self.idle: list[_Slot[D]] = []  # the most recently used last
        self.all: list[_Slot[D]] = []
        self.closed = False

    def take(self) -> tuple[_Slot[D] | None, list[_Slot[D]]]:
        """A slot for a sender (a kept connection first, the most recently
        used one), or None when all are busy; and the idle slots whose
        connection was idle too long, taken out to be closed."""
        idle = self.idle
        expired: list[_Slot[D]] = []
        if self.limits.idle is not None and idle:
            now = _clock()
            expired = [s for s in idle if s.connected and _idle_too_long(self.limits, s, now)]
            if expired:
                self.idle = idle = [s for s in idle if s not in expired]
        spacing = self.limits.spacing
        now = -math.inf if spacing is None else _clock()
        pick = None  # (with a per-connection rate: a slot that may start now)
        for place in range(len(idle) - 1, -1, -1):
            if next_start(idle[place].started, spacing) <= now:
                if idle[place].connected:
                    return idle.pop(place), expired
                if pick is None:
                    pick = place
        if pick is not None:
            return idle.pop(pick), expired
        if len(self.all) < self.limits.connections:
            slot = self.make()
            self.all.append(slot)
            return slot, expired
        if idle:  # every one must wait for its per-connection rate: the soonest
            soonest = min(idle, key=lambda s: (s.started, not s.connected))
            idle.remove(soonest)
            return soonest, expired
        return None, expired

    def take_free(self) -> list[_Slot[D]]:
        """Every slot no sender holds: the idle ones and new ones up to the
        limit (for a batch that runs them itself)."""
        taken, self.idle = self.idle, []
        while len(self.all) < self.limits.connections:
            slot = self.make()
            self.all.append(slot)
            taken.append(slot)
        return taken

    def give(self, slot: _Slot[D]) -> None:
        slot.used = _clock()
        self.idle.append(slot)

    def close_all(self) -> list[_Slot[D]]:
        """Closed from now on: the idle slots with a connection, to be closed."""
        self.closed = True
        return [slot for slot in self.idle if slot.connected]


#: Where a batch takes its messages: an iterator, or an async iterator's ``__anext__``.
_Source = Iterator[MessageInput] | Callable[[], Awaitable[MessageInput]]


@dataclass(frozen=True, slots=True)
class _Batch:
    """What is the same for every message of an :class:`AsyncPool` batch:
    the checked message options and the sends' limits (retry policy and
    deadline), made once per batch."""

    options: MessageOptions
    limits: retry.Limits
    #: The options passed :func:`~smtplug.api.batch_extras` (else each
    #: message is prepared with every check, and fails as it would alone).
    checked: bool = False
    extras: MailParameters | None = None  # (what it made of them)


class _Run:
    """An :class:`AsyncPool` batch in progress (no I/O): the messages read
    and not taken by a sender yet, the outcomes not handed out yet, and who
    waits for what."""

    __slots__ = ("batch", "done", "ended", "handed", "idle", "stop", "taken", "todo", "waiting")

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        #: Read, not started: (index, message), in order.
        self.todo: collections.deque[tuple[int, MessageInput]] = collections.deque()
        #: Outcomes (or a send's error that is no SMTPError) by index, not handed out.
        self.done: dict[int, Outcome | BaseException] = {}
        self.taken = 0  # messages read
        self.handed = 0  # outcomes handed out
        self.ended = False  # the messages' iterable ended (or failed)
        self.stop = False  # the batch ended: no message is started any more
        self.idle: list[asyncio.Future[None]] = []  # senders waiting for a message
        self.waiting: asyncio.Future[None] | None = None  # the batch, for the next outcome

    def finish(self, index: int, outcome: Outcome | BaseException) -> None:
        self.done[index] = outcome
        waiting = self.waiting
        if index == self.handed and waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def next_outcome(self, loop: asyncio.AbstractEventLoop) -> None:
        self.waiting = loop.create_future()
        try:
            await self.waiting
        finally:
            self.waiting = None

    async def more(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the batch to read more messages (or to end)."""
        future: asyncio.Future[None] = loop.create_future()
        self.idle.append(future)
        try:
            await future
        finally:
            if future in self.idle:
                self.idle.remove(future)

    def wake_workers(self) -> None:
        idle, self.idle = self.idle, []
        for future in idle:
            if not future.done():
                future.set_result(None)


#: Whether :meth:`Pool.send_many` may run a batch on an event loop of its own
#: (a test of the worker threads turns it off).
_LOOP_BATCHES = True


def _close_soon(loop: asyncio.AbstractEventLoop, batch: AsyncPool) -> None:
    """(On ``loop``: :meth:`Pool.close` asked.) Close ``batch`` as
    :meth:`AsyncPool.close` does, in a task of that loop."""
    loop.create_task(batch.close())


def _closed_error() -> InvalidInputError:
    return InvalidInputError("this pool is closed: make a new one")


def _batch_signature(function: Callable[..., Any]) -> None:
    """``send_many(self, messages, *, progress=None, **message options)`` for
    ``help()``: the message options but their own ``progress`` (which the
    batch's takes the place of)."""
    own = inspect.signature(function)
    leading = list(own.parameters.values())[:3]  # self, messages, progress
    keywords = [
        p for name, p in inspect.signature(MessageOptions).parameters.items() if name != "progress"
    ]
    function.__signature__ = own.replace(parameters=[*leading, *keywords])  # type: ignore[attr-defined]


def _check_batch(options: dict[str, Any], progress: object) -> MessageOptions:
    if progress is not None and not callable(progress):
        raise InvalidInputError("progress must be a callable taking (done, total)")
    checked = build(MessageOptions, options)
    retry.limits(checked.retry, checked.deadline, retry.NO_LIMITS)  # checked here, once
    return checked


def _outcome(index: int, send: Callable[[], SendResult]) -> Outcome:
    try:
        result = send()  # (retried inside, as the message's retry= says)
    except SMTPError as exc:
        return Outcome(index, None, exc)
    return Outcome(index, result, None)


def _guarded(
    pool_limits: _Limits,
    rate: RateLimiter | None,
    slot: _Slot[Any],
    prepared: PreparedMessage,
    options: MessageOptions,
    extras: MailParameters | None,
    limits: retry.Limits,
    started: float,
    follow: Follow | None = None,
) -> Generator[Any, Any, SendResult]:
    """The slot program of one message, attempted as ``limits`` say; every
    attempt after the first paced again by the pool's rate limits (the
    first was paced when the slot was taken). ``follow`` (an
    :class:`AsyncPool`'s) may put the next message's first flight behind
    this one's end; not with a retry policy, whose next attempt would need
    the connection that message is then on."""
    repace: retry.Repace | None = None
    if rate is not None or pool_limits.spacing is not None:
        repace = functools.partial(_pace_again, pool_limits, rate, slot)
    if limits.retry is not None:
        follow = None
    return retry.guarded(
        lambda: _send_program(pool_limits, slot, prepared, options, extras, follow),
        limits,
        prepared,
        started=started,
        repace=repace,
    )


class Pool:
    """Connections to an SMTP server, shared by threads: ``Client`` times N.

    ``with smtplug.Pool(servers=..., max_connections=8) as pool:
    pool.sendmessage(msg)`` or ``for outcome in pool.send_many(messages):``.
    Takes :class:`smtplug.Client`'s options (checked here, before any
    connection is opened) and the pool's own: ``max_connections`` (8),
    ``max_messages_per_connection``, ``max_lifetime`` and ``idle_timeout``
    (seconds; None: no limit), ``rate_limit`` (messages per second for the
    whole pool) with ``rate_burst`` (1), ``rate_limit_per_connection``.
    See ``docs/pool.md``.

    Any number of threads may send at once: each send takes a connection of
    its own (waiting while ``max_connections`` are busy). After
    :meth:`close` the pool sends nothing more.
    """

    @init_signature(PoolOptions)
    def __init__(self, **options: Any) -> None:
        checked = build(PoolOptions, options)
        self._limits = _limits(checked)
        self._rate = _rate(checked)
        built = setup(checked)
        self._plan = plan = built.plan
        self._observers = observers = built.observers
        self._send_limits = built.limits

        def make() -> _Slot[BlockingDriver]:
            driver = BlockingDriver(
                plan.transport, plan.transport_options, observers, plan.tls_sessions
            )
            return _Slot(Conduct(plan, observers), driver)

        self._slots: _Slots[BlockingDriver] = _Slots(self._limits, make)
        self._changed = threading.Condition(threading.Lock())
        # The batches running on an event loop of their own (see _on_loop).
        self._looping: dict[asyncio.AbstractEventLoop, AsyncPool] = {}

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        targets = ", ".join(f"{server}:{port}" for server, port in self._plan.targets)
        return f"<smtplug.Pool {targets} ({self.connections} of {self._limits.connections} open)>"

    @property
    def connections(self) -> int:
        """How many connections are open now (some may turn out to be stale)."""
        return sum(1 for slot in self._slots.all if slot.connected)

    # -- slots -----------------------------------------------------------------------

    def _acquire(self) -> _Slot[BlockingDriver]:
        while True:
            with self._changed:
                while True:
                    if self._slots.closed:
                        raise _closed_error()
                    slot, expired = self._slots.take()
                    if slot is not None or expired:
                        break
                    self._changed.wait()
            try:
                while expired:  # (outside the lock: QUIT waits for the server)
                    self._release(expired.pop(), close=True)
            except BaseException:
                for old in [*expired, *([] if slot is None else [slot])]:
                    self._give(old)
                raise
            if slot is not None:
                return self._paced(slot)

    def _paced(self, slot: _Slot[BlockingDriver]) -> _Slot[BlockingDriver]:
        """``slot`` once its message may start: the rate limits' waits (no
        lock held; a pool closed meanwhile ends them with its error)."""
        if self._rate is None and self._limits.spacing is None:
            return slot
        pace = _pace(self._limits, self._rate, slot)
        try:
            for until in pace:
                try:
                    _sleep(max(0.0, until - _clock()))
                    if self._slots.closed:
                        raise _closed_error()
                except BaseException as exc:
                    pace.throw(exc)  # (re-raised, the reservation given back)
        except BaseException:
            self._release(slot)
            raise
        return slot

    def _release(self, slot: _Slot[BlockingDriver], *, close: bool = False) -> None:
        try:
            if close or self._slots.closed:
                slot.driver.run(slot.conduct.close())
        finally:
            with self._changed:
                late = self._slots.closed and slot.connected  # closed meanwhile
                if not late:
                    self._slots.give(slot)
                    self._changed.notify()
            if late:
                self._release(slot, close=True)

    def _give(self, slot: _Slot[BlockingDriver]) -> None:
        """Give back a slot whose connection is in an unknown state: closed."""
        slot.conduct.forget()
        slot.driver.close()
        with self._changed:
            self._slots.give(slot)
            self._changed.notify()

    def close(self) -> None:
        """QUIT and close every idle connection; one in use is closed when its
        send ends. The pool sends nothing more. Never raises."""
        with self._changed:
            if self._slots.closed:
                return
            idle = self._slots.close_all()
            for slot in idle:
                self._slots.idle.remove(slot)
            self._changed.notify_all()
            looping = list(self._looping.items())
        for loop, batch in looping:  # (its own thread runs it: told, not waited for)
            with contextlib.suppress(RuntimeError):  # that loop was closed meanwhile
                loop.call_soon_threadsafe(_close_soon, loop, batch)
        for slot in idle:
            self._release(slot, close=True)

    # -- sending ---------------------------------------------------------------------

    @method_signature(MessageOptions)
    def sendmessage(self, message: MessageInput, **options: Any) -> SendResult:
        """Send one message over one of the pool's connections (opened if
        needed): :meth:`smtplug.Client.sendmessage`'s options, result and errors."""
        return self._send(message, build(MessageOptions, options))

    def _send(self, message: MessageInput, options: MessageOptions) -> SendResult:
        started = retry.now()
        limits = retry.limits(options.retry, options.deadline, self._send_limits)
        with self._observers.recording() as transcript:
            prepared, extras = prepare(message, options)  # bad input: before a connection
            slot = self._acquire()
            try:
                result: SendResult = slot.driver.run(
                    _guarded(
                        self._limits, self._rate, slot, prepared, options, extras, limits, started
                    )
                )
            finally:
                self._release(slot)
        if transcript is not None:
            result.transcript = tuple(transcript)
        return result

    def send_many(
        self,
        messages: Iterable[MessageInput],
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> Iterator[Outcome]:
        """Send every message of ``messages``, over the pool's connections in
        parallel: an iterator of one :class:`Outcome` per message, in order.

        ``options`` are the message options of :meth:`sendmessage` (the same
        for every message; a message's own ``progress`` is not available),
        checked here. The messages are taken from ``messages`` as the
        outcomes are consumed, at most :data:`WINDOW` times ``max_connections`` ahead;
        nothing is sent before the iteration starts. ``progress(done,
        total)`` is called (in the consuming thread) before each outcome is
        handed out (``total``: ``len(messages)``, or None).

        Every :class:`SMTPError` becomes an outcome. Anything else ends the
        batch: an error a send raised (a bug in an observer or callback) is
        raised in that message's place; an error of ``messages`` itself
        after the outcomes of the messages taken before it. Either way, and
        when the loop is left early, the messages not started yet are not
        sent and those in flight are finished first. The batch runs in this
        thread, on an event loop of its own, over the pool's free connections
        (worker threads where it cannot: see docs/pool.md).
        """
        checked = _check_batch(options, progress)
        total = len(messages) if isinstance(messages, Sized) else None
        return self._batch(iter(messages), checked, progress, total)

    _batch_signature(send_many)

    def _batch(
        self,
        messages: Iterator[MessageInput],
        options: MessageOptions,
        progress: Progress | None,
        total: int | None,
    ) -> Iterator[Outcome]:
        """One thread for the whole batch where it can (:meth:`_on_loop`),
        else a worker thread per connection (:meth:`_threaded`)."""
        taken = self._free_for_loop()
        if taken is None:
            yield from self._threaded(messages, options, progress, total)
        else:
            yield from self._on_loop(taken, messages, options, progress, total)

    def _free_for_loop(self) -> list[_Slot[BlockingDriver]] | None:
        """The slots a batch on an event loop of its own may use (their kept
        connections closed: the loop opens its own), or None when the batch
        must run on threads: the plan has no asyncio transport (a blocking
        plugin), an event loop already runs in this thread, or every slot is
        busy."""
        if not _LOOP_BATCHES:
            return None
        import asyncio  # (here: a pool that sends no batch never imports it)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return None
        try:
            asyncio_transport(self._plan, "smtplug.Pool")
        except InvalidInputError:
            return None
        with self._changed:
            if self._slots.closed:
                return None  # (the threads' path reports it, message by message)
            taken = self._slots.take_free()
        if not taken:
            return None
        try:
            for slot in taken:
                if slot.connected:
                    slot.driver.run(slot.conduct.close())
        except BaseException:
            self._give_back(taken)
            raise
        return taken

    def _give_back(self, taken: list[_Slot[BlockingDriver]]) -> None:
        for slot in taken:
            if slot.connected:  # (a close that failed half way)
                slot.conduct.forget()
                slot.driver.close()
        with self._changed:
            for slot in taken:
                self._slots.give(slot)
            self._changed.notify_all()

    def _on_loop(
        self,
        taken: list[_Slot[BlockingDriver]],
        messages: Iterator[MessageInput],
        options: MessageOptions,
        progress: Progress | None,
        total: int | None,
    ) -> Iterator[Outcome]:
        """The batch on an event loop of its own, run in the consuming thread
        while it waits for the next outcome: :class:`AsyncPool`'s batch over
        as many connections as ``taken`` slots, with this pool's plan,
        observers, limits and shared rate limit (the same programs, on the
        asyncio driver). One thread multiplexes every connection, where a
        thread per connection would wait for the GIL at each system call.
        The slots are given back (their connections closed) when it ends."""
        import asyncio

        loop = asyncio.new_event_loop()
        batch = AsyncPool._sharing(self, len(taken))
        with self._changed:
            self._looping[loop] = batch
        if self._slots.closed:  # (closed meanwhile: close() did not see it)
            loop.call_soon(_close_soon, loop, batch)

        outcomes = batch._batches(messages, options)
        done = 0
        try:
            while True:
                try:
                    chunk = loop.run_until_complete(outcomes.__anext__())
                except StopAsyncIteration:
                    break
                for outcome in chunk:
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    yield outcome
        finally:
            try:
                loop.run_until_complete(outcomes.aclose())  # (finishes those in flight)
                loop.run_until_complete(batch.close())
            finally:
                with self._changed:
                    del self._looping[loop]
                loop.close()
                self._give_back(taken)

    def _threaded(
        self,
        messages: Iterator[MessageInput],
        options: MessageOptions,
        progress: Progress | None,
        total: int | None,
    ) -> Iterator[Outcome]:
        window = WINDOW * self._limits.connections

        def run(index: int, message: MessageInput) -> Outcome:
            return _outcome(index, functools.partial(self._send, message, options))

        paced = self._rate is not None or self._limits.spacing is not None
        workers = _Workers(run, self._limits.connections, batched=not paced)
        failure: BaseException | None = None
        ended = False
        index = handed = 0

        def fill() -> None:  # (in the consuming thread, as the iteration asks)
            nonlocal index, failure, ended
            while not ended and index - handed < window:
                try:
                    message = next(messages)
                except StopIteration:
                    ended = True
                    return
                except Exception as exc:
                    failure = exc
                    ended = True
                    return
                workers.put(index, message)
                index += 1

        try:
            fill()
            while handed < index:
                outcome = workers.take(handed)
                handed += 1
                fill()
                if progress is not None:
                    progress(handed, total)
                yield outcome
        finally:
            workers.stop()  # (the messages not started yet stay unsent)
        if failure is not None:
            raise failure


class _Workers:
    """The worker threads of one :meth:`Pool.send_many`, at most one per
    connection, started as the work needs them, and what they share: the
    messages taken but not started (``todo``) and the outcomes not handed out
    yet (``done``, by index). One lock; the consuming thread waits only for
    the outcome it hands out next, a worker only when there is nothing to
    do (no future, no hand-off per message).

    ``batched``: the consuming thread, waiting, is woken once the outcome it
    waits for is there and the workers' queue is down to half the workers
    (or nothing more is in flight), to hand out the outcomes there are and
    fill the queue again in one go, rather than once per message (each
    wake-up is a thread switch for the GIL). Not when the sends wait for a
    rate limit: then each outcome is handed out as soon as it is there."""

    def __init__(
        self, run: Callable[[int, MessageInput], Outcome], most: int, *, batched: bool = True
    ) -> None:
        self._run = run
        self._most = most
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # (workers wait here)
        self._ready = threading.Condition(self._lock)  # (the consumer waits here)
        self._todo: collections.deque[tuple[int, MessageInput]] = collections.deque()
        self._done: dict[int, Outcome | BaseException] = {}
        self._threads: list[threading.Thread] = []
        self._idle = 0  # workers waiting for work, not yet woken
        self._busy = 0  # workers sending
        self._low = most // 2 if batched else -1  # (the queue length that wakes the consumer)
        self._wanted = -1  # the outcome the consumer waits for
        self._stopped = False

    def put(self, index: int, message: MessageInput) -> None:
        with self._lock:
            self._todo.append((index, message))
            if self._idle:
                self._idle -= 1
                self._work.notify()
                return
            if len(self._threads) >= self._most:
                return  # (a busy worker takes it next)
            thread = threading.Thread(
                target=self._loop, name=f"smtplug-pool-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._threads.remove(thread)  # (the message waits for another)
            if not self._threads:
                raise

    def _loop(self) -> None:
        lock = self._lock
        while True:
            with lock:
                while not self._todo:
                    if self._stopped:
                        return
                    self._idle += 1
                    self._work.wait()
                index, message = self._todo.popleft()
                self._busy += 1
            outcome: Outcome | BaseException
            try:
                outcome = self._run(index, message)
            except BaseException as exc:  # (handed to the consumer, raised there)
                outcome = exc
            with lock:
                done = self._done
                done[index] = outcome
                self._busy -= 1
                if self._wanted in done and (
                    self._low < 0 or len(self._todo) <= self._low or not self._busy
                ):
                    self._ready.notify()

    def take(self, index: int) -> Outcome:
        """The outcome of message ``index`` (waiting for it); what its send
        raised, if it was not an :class:`SMTPError`, is raised."""
        with self._lock:
            done = self._done
            if index not in done:
                self._wanted = index
                while index not in done:
                    self._ready.wait()
            outcome = done.pop(index)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def stop(self) -> None:
        """Start nothing more; wait for the messages in flight."""
        with self._lock:
            self._stopped = True
            self._todo.clear()
            self._idle = 0
            self._work.notify_all()
        for thread in self._threads:
            thread.join()


class AsyncPool:
    """:class:`Pool` for asyncio: connections shared by the tasks of one loop.

    ``async with smtplug.AsyncPool(servers=...) as pool: await
    pool.sendmessage(msg)``, or ``async for outcome in
    pool.send_many(messages):``. The same options, limits, results and
    errors as :class:`Pool`, on the asyncio driver (:class:`smtplug.AsyncClient`'s).
    It belongs to the event loop that first uses it.
    """

    @init_signature(PoolOptions)
    def __init__(self, **options: Any) -> None:
        checked = build(PoolOptions, options)
        limits, rate = _limits(checked), _rate(checked)
        built = setup(checked)
        self._start(limits, rate, built.plan, built.observers, built.limits)

    @classmethod
    def _sharing(cls, pool: Pool, connections: int) -> AsyncPool:
        """An AsyncPool of ``connections`` made of ``pool``'s plan, observers,
        limits and rate limit (a :class:`Pool` batch on its own loop)."""
        self = cls.__new__(cls)
        limits = dataclasses.replace(pool._limits, connections=connections)
        self._start(limits, pool._rate, pool._plan, pool._observers, pool._send_limits)
        return self

    def _start(
        self,
        limits: _Limits,
        rate: RateLimiter | None,
        plan: ConnectionPlan,
        observers: Observers,
        send_limits: retry.Limits,
    ) -> None:
        """What both constructors set: the slots over ``plan``'s asyncio transport."""
        transport = asyncio_transport(plan, "smtplug.Pool")
        self._limits = limits
        self._rate = rate
        self._plan = plan
        self._send_limits = send_limits
        self._observers = observers

        def make() -> _Slot[AsyncDriver]:
            driver = AsyncDriver(transport, plan.transport_options, observers, plan.tls_sessions)
            slot = _Slot(Conduct(plan, observers), driver)
            slot.chain = functools.partial(self._chain, slot)  # (made once, not per message)
            return slot

        self._slots: _Slots[AsyncDriver] = _Slots(limits, make)
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> AsyncPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        targets = ", ".join(f"{server}:{port}" for server, port in self._plan.targets)
        return (
            f"<smtplug.AsyncPool {targets} ({self.connections} of {self._limits.connections} open)>"
        )

    @property
    def connections(self) -> int:
        """How many connections are open now (some may turn out to be stale)."""
        return sum(1 for slot in self._slots.all if slot.connected)

    # -- slots -----------------------------------------------------------------------

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio

        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise InvalidInputError(
                "this AsyncPool belongs to another event loop: use one per loop"
            )
        return loop

    async def _acquire(
        self,
        prepared: PreparedMessage | None = None,
        extras: MailParameters | None = None,
        options: MessageOptions | None = None,
    ) -> _Slot[AsyncDriver]:
        """A slot for the sender of ``prepared``: an idle one, a new one, or
        one handed over (:meth:`_chain`) with its first flight written."""
        loop = self._own_loop()
        while True:
            if self._slots.closed:
                raise _closed_error()
            slot, expired = self._slots.take()
            try:
                while expired:
                    await self._release(expired.pop(), close=True)
            except BaseException:
                for old in [*expired, *([] if slot is None else [slot])]:
                    old.conduct.forget()
                    old.driver.close()
                    self._slots.give(old)
                    self._wake()
                raise
            if slot is not None:
                return await self._paced(slot)
            if expired:
                continue
            waiter = _Waiter(loop.create_future(), prepared, extras, options)
            self._waiters.append(waiter)
            future = waiter.future
            try:
                handed = await future
            except BaseException:
                if future.done() and not future.cancelled():
                    handed = future.result()
                    if handed is None:
                        self._wake()  # pass on the slot this task was woken for
                    else:
                        self._abandon(handed)
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            if handed is not None:  # (paced when its first flight was written)
                if self._slots.closed:
                    self._abandon(handed)
                    raise _closed_error()
                return handed

    def _take_at_once(self) -> _Slot[AsyncDriver] | None:
        """:meth:`_acquire`'s common case without a coroutine: the slot it
        would take at once (an idle or a new one), when the pool is open and
        has no rate limit nor idle timeout (nothing to wait for or close
        first); else None, and :meth:`_acquire` decides."""
        self._own_loop()
        limits = self._limits
        if (
            self._slots.closed
            or self._rate is not None
            or limits.spacing is not None
            or limits.idle is not None
        ):
            return None
        slot, expired = self._slots.take()
        assert not expired  # (only with an idle timeout)
        return slot

    async def _paced(self, slot: _Slot[AsyncDriver]) -> _Slot[AsyncDriver]:
        """:meth:`Pool._paced`, awaited (a cancelled wait gives the reservation back)."""
        if self._rate is None and self._limits.spacing is None:
            return slot
        pace = _pace(self._limits, self._rate, slot)
        try:
            for until in pace:
                try:
                    await _async_sleep(max(0.0, until - _clock()))
                    if self._slots.closed:
                        raise _closed_error()
                except BaseException as exc:
                    pace.throw(exc)  # (re-raised, the reservation given back)
        except BaseException:
            await self._release(slot)
            raise
        return slot

    def _wake(self) -> None:
        while self._waiters:
            future = self._waiters.popleft().future
            if not future.done():
                future.set_result(None)
                return

    def _chain(self, slot: _Slot[AsyncDriver], capabilities: Capabilities) -> session.Flight | None:
        """(``follow`` of the message in progress on ``slot``, asked just
        before its end is written.) The first flight of the next waiting
        sender's message, to go behind that end, when the slot may carry it
        now (:meth:`_may_follow`). The slot is then that sender's when the
        message in progress is done (:meth:`_release`)."""
        waiters = self._waiters
        while waiters and waiters[0].future.done():
            waiters.popleft()  # (a cancelled one)
        if not waiters or slot.follower is not None:
            return None
        waiter = waiters[0]  # (the first only: the order of the senders is kept)
        prepared, options = waiter.prepared, waiter.options
        if prepared is None or options is None:
            return None
        flight = self._may_follow(slot, capabilities, prepared, options, waiter.extras)
        if flight is not None:
            waiters.popleft()
            slot.follower = waiter
        return flight

    def _may_follow(
        self,
        slot: _Slot[AsyncDriver],
        capabilities: Capabilities,
        prepared: PreparedMessage,
        options: MessageOptions,
        extras: MailParameters | None,
    ) -> session.Flight | None:
        """The first flight of ``prepared``, to go behind the end of the
        message in progress on ``slot``, when it may start there and then: the
        pool open, the connection within its message count and lifetime, the
        rate limits allowing a start at once (booked here: the message starts
        when its MAIL is written), one flight, no XQUE ``queue`` and no
        ``requiretls`` (a command before MAIL; a check of the session first).
        Else None."""
        if self._slots.closed:
            return None
        if (options.queue and capabilities.has("XQUE")) or (
            extras is not None and extras.requiretls
        ):
            return None
        limits, now = self._limits, _clock()
        same = slot.conduct.wire is slot.wire  # (else the message in progress opened it)
        if limits.messages is not None and (slot.messages if same else 0) + 2 > limits.messages:
            return None
        opened = slot.opened if same else slot.begun  # (as _settle will count it)
        if limits.lifetime is not None and now - opened >= limits.lifetime:
            return None
        if next_start(slot.started, limits.spacing) > now:
            return None
        flight = session.flight_ahead(prepared, capabilities, options.atleastone, extras)
        if flight is None:
            return None
        rate = self._rate
        if rate is not None:
            start = rate.reserve(now)
            if start > now:
                rate.cancel(start)
                return None
        slot.started = now
        return flight

    def _abandon(self, slot: _Slot[AsyncDriver]) -> None:
        """Give back a slot no sender will use next: a connection with a
        chained first flight on it (replies due that no transaction will
        read) is closed first."""
        _drop_ahead(slot)
        self._slots.give(slot)
        self._wake()

    def _put_back(self, slot: _Slot[AsyncDriver]) -> None:
        """:meth:`_release` of a slot not to be closed, the pool open: handed
        to its follower, else given back (nothing to await)."""
        follower, slot.follower = slot.follower, None
        if follower is not None and not follower.future.done():
            follower.future.set_result(slot)  # handed over: its first flight is sent
            return
        self._abandon(slot)

    async def _release(self, slot: _Slot[AsyncDriver], *, close: bool = False) -> None:
        if not close and not self._slots.closed:
            self._put_back(slot)
            return
        follower, slot.follower = slot.follower, None
        if follower is not None and not follower.future.done():
            follower.future.set_result(None)  # (it finds the pool closed)
        _drop_ahead(slot)
        try:
            await slot.driver.run(slot.conduct.close())
        finally:
            if self._slots.closed and slot.connected:
                slot.conduct.forget()  # (a close interrupted by a cancel)
                slot.driver.close()
            self._slots.give(slot)
            self._wake()

    async def close(self) -> None:
        """QUIT and close every idle connection; one in use is closed when its
        send ends. The pool sends nothing more. Never raises."""
        if self._slots.closed:
            return
        idle = self._slots.close_all()
        for slot in idle:
            self._slots.idle.remove(slot)
        while self._waiters:
            self._wake()  # (each finds the pool closed)
        for slot in idle:
            await self._release(slot, close=True)

    # -- sending ---------------------------------------------------------------------

    @method_signature(MessageOptions)
    async def sendmessage(self, message: MessageInput, **options: Any) -> SendResult:
        """:meth:`Pool.sendmessage`, awaited."""
        return await self._send(message, build(MessageOptions, options))

    async def _send(self, message: MessageInput, options: MessageOptions) -> SendResult:
        started = retry.now()
        limits = retry.limits(options.retry, options.deadline, self._send_limits)
        with self._observers.recording() as transcript:
            prepared, extras = prepare(message, options)
            slot = await self._acquire(prepared, extras, options)
            try:
                result: SendResult = await slot.driver.run(
                    self._program(slot, prepared, options, extras, limits, started)
                )
            finally:
                await self._release(slot)
        if transcript is not None:
            result.transcript = tuple(transcript)
        return result

    def _program(
        self,
        slot: _Slot[AsyncDriver],
        prepared: PreparedMessage,
        options: MessageOptions,
        extras: MailParameters | None,
        limits: retry.Limits,
        started: float,
        follow: Follow | None = None,
    ) -> Generator[Any, Any, SendResult]:
        """The program of one send on ``slot`` (``follow``, by default the
        slot's, may chain the next message): :func:`_guarded`, or without
        limits what that is then, the slot program itself (no wrapper to build)."""
        if follow is None:
            follow = slot.chain
        if not limits.active:
            return _send_program(self._limits, slot, prepared, options, extras, follow)
        return _guarded(
            self._limits, self._rate, slot, prepared, options, extras, limits, started, follow
        )

    def send_many(
        self,
        messages: Iterable[MessageInput] | AsyncIterable[MessageInput],
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> AsyncIterator[Outcome]:
        """:meth:`Pool.send_many` for asyncio: ``async for outcome in
        pool.send_many(messages)``; ``messages`` may also be an async
        iterable. The messages are read at most :data:`WINDOW` times
        ``max_connections`` ahead and sent by a task per connection. Close the
        iterator when leaving the loop early
        (``contextlib.aclosing``): the messages in flight are finished then."""
        checked = _check_batch(options, progress)
        total = len(messages) if isinstance(messages, Sized) else None
        source: _Source = (
            messages.__aiter__().__anext__
            if isinstance(messages, AsyncIterable)
            else iter(messages)
        )
        return self._batch(source, checked, progress, total)

    _batch_signature(send_many)

    async def _batch(
        self,
        source: _Source,
        options: MessageOptions,
        progress: Progress | None,
        total: int | None,
    ) -> AsyncGenerator[Outcome, None]:
        done = 0
        async with contextlib.aclosing(self._batches(source, options)) as chunks:
            async for chunk in chunks:
                for outcome in chunk:
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    yield outcome

    async def _batches(
        self,
        source: _Source,
        options: MessageOptions,
    ) -> AsyncGenerator[list[Outcome], None]:
        """The batch's outcomes in order, as lists: the next one (waited for),
        and those after it that are there already (a :class:`Pool` batch on a
        loop of its own runs the loop once per list, not once per message).
        ``source``: the messages' iterator, or an async iterator's ``__anext__``.

        The messages are read here, at most :data:`WINDOW` times
        ``max_connections`` ahead of the outcomes handed out, and sent by one
        sender per connection (:meth:`_work`)."""
        import asyncio

        # (An iterator is asked directly: no coroutine made for each message.)
        sync, take = (source, None) if isinstance(source, Iterator) else (None, source)

        window = WINDOW * self._limits.connections
        # What is the same for every message of the batch, made once.
        limits = retry.limits(options.retry, options.deadline, self._send_limits)
        try:
            batch = _Batch(options, limits, True, batch_extras(options))
        except SMTPError:
            batch = _Batch(options, limits)  # (each message meets that error, in its turn)
        run = _Run(batch)
        failure: BaseException | None = None

        async def fill() -> None:
            nonlocal failure
            added = False
            while not run.ended and run.taken - run.handed < window:
                try:
                    if take is None:
                        message = next(sync)  # type: ignore[arg-type]
                    else:
                        message = await take()
                except (StopIteration, StopAsyncIteration):
                    run.ended = True
                except Exception as exc:
                    failure = exc
                    run.ended = True
                else:
                    run.todo.append((run.taken, message))
                    run.taken += 1
                    added = True
            # A sender per connection, none more than there are messages.
            while len(workers) < min(connections, run.taken):
                workers.append(loop.create_task(self._work(run)))
            if added or run.ended:
                run.wake_workers()

        loop = asyncio.get_running_loop()
        connections = self._limits.connections
        workers: list[asyncio.Task[None]] = []
        try:
            await fill()
            while run.handed < run.taken:
                if run.handed not in run.done:
                    await run.next_outcome(loop)
                chunk = []
                done = run.done
                while run.handed in done:
                    outcome = done.pop(run.handed)
                    run.handed += 1
                    if not isinstance(outcome, Outcome):
                        raise outcome  # (a send's error that is not an SMTPError)
                    chunk.append(outcome)
                yield chunk
                await fill()  # (once they are handed out: at most a window ahead)
        except asyncio.CancelledError:
            for worker in workers:  # cancelled: so are the sends in flight
                worker.cancel()
            raise
        finally:
            run.stop = True  # the messages not started yet stay unsent
            run.wake_workers()
            if workers:
                await asyncio.wait(workers)
            for worker in workers:
                if not worker.cancelled():
                    worker.exception()  # (retrieved: not logged as never retrieved)
        if failure is not None:
            raise failure

    async def _work(self, run: _Run) -> None:
        """One of a batch's senders: takes the batch's next message, sends it,
        and so on. Between two messages it keeps its slot when nobody else
        waits for one and another message is there, and then writes that
        message's first flight behind the end of the one before
        (:meth:`_may_follow`); a sender waiting for a slot goes first
        (:meth:`_chain`)."""
        batch = run.batch
        options, limits = batch.options, batch.limits
        paced = self._rate is not None or self._limits.spacing is not None
        slot: _Slot[AsyncDriver] | None = None
        #: The next message, taken from the batch by ``follow`` (its first
        #: flight behind the one in progress when ``ahead``): sent next.
        held: tuple[int, PreparedMessage, MailParameters | None, float] | None = None

        def follow(capabilities: Capabilities) -> session.Flight | None:
            nonlocal held
            assert slot is not None
            if self._waiters:
                flight = self._chain(slot, capabilities)  # (a waiting sender first)
                if flight is not None or self._waiters:
                    return flight
            if run.stop or held is not None or not run.todo:
                return None
            index, message = run.todo[0]
            try:
                prepared, extras = self._prepare(message, batch)
            except SMTPError:
                return None  # (its turn in the loop below makes it its outcome)
            run.todo.popleft()
            held = (index, prepared, extras, retry.now())  # (its send starts here)
            return self._may_follow(slot, capabilities, prepared, options, extras)

        try:
            while True:
                started = retry.now()
                with self._observers.recording() as transcript:
                    try:
                        if held is not None:
                            (index, prepared, extras, started), held = held, None
                        else:
                            if slot is not None and (self._waiters or not run.todo):
                                self._put_back(slot)  # (someone waits; or nothing to send)
                                slot = None
                            if run.stop:
                                return
                            if not run.todo:
                                if run.ended:
                                    return
                                await run.more(self._own_loop())
                                continue
                            index, message = run.todo.popleft()
                            prepared, extras = self._prepare(message, batch)
                        if slot is None:
                            # (Closed meanwhile: its error is the outcome.)
                            slot = self._take_at_once() or await self._acquire(
                                prepared, extras, options
                            )
                        elif paced and slot.conduct.ahead is None:
                            kept, slot = slot, None  # (given back if the wait fails)
                            slot = await self._paced(kept)  # (as any message not chained)
                    except SMTPError as exc:
                        run.finish(index, Outcome(index, None, exc))
                        continue
                    if run.stop:
                        return  # the batch ended before this message was started
                    program = self._program(
                        slot, prepared, options, extras, limits, started, follow
                    )
                    outcome: Outcome | None = None
                    try:
                        result = await slot.driver.run(program)
                    except SMTPError as exc:  # (retried inside, as the message's retry= says)
                        run.finish(index, Outcome(index, None, exc))
                    except Exception as exc:
                        run.finish(index, exc)
                    else:
                        outcome = Outcome(index, result, None)
                    if self._slots.closed or slot.follower is not None:
                        # (Handed to the sender that follows; or closed.)
                        current, slot = slot, None
                        if self._slots.closed:
                            await self._release(current)
                        else:
                            self._put_back(current)
                    else:
                        slot.used = _clock()  # (kept: not idle)
                if outcome is not None:
                    if transcript is not None:
                        result.transcript = tuple(transcript)
                    run.finish(index, outcome)
        finally:
            if slot is not None:
                if self._slots.closed:
                    await self._release(slot)
                else:
                    self._put_back(slot)  # (a chained flight on it is dropped)

    def _prepare(
        self, message: MessageInput, batch: _Batch
    ) -> tuple[PreparedMessage, MailParameters | None]:
        if batch.checked:
            return prepare_message(message, batch.options), batch.extras
        return prepare(message, batch.options)
