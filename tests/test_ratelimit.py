"""Rate limits: the limiter alone (smtplug.ratelimit), and the pools using it.

Nothing here waits for time to pass or times anything: the limiter takes
``now`` as an argument, and the pools run on a fake clock and a fake sleep
(``smtplug.pool._clock``, ``_sleep``, ``_async_sleep``). Where many threads
(or tasks) send at once, each has a *timeline* of its own (a context
variable), moved only by its own sleeps: one sender's sleep never moves
another's clock, so the time at which a sender writes MAIL (read by an
observer on the same thread or task) is exactly the time its waits brought
it to, and the only thing the senders share is the pool and its limiter,
which is what is tested.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import math
import sys
import threading
from typing import Any

import pytest

import smtplug
from scripted import subjects
from smtplug import pool as poolmod
from smtplug.ratelimit import RateLimiter
from smtplug.testing import ScriptedServer
from test_pool import FAST, message
from test_pool import options as pool_options

EPS = 1e-9


def options(server: ScriptedServer, **more: Any) -> dict[str, Any]:
    return pool_options(server, **{"timeout": 10, **more})


def conforming(starts: list[float], rate: float, burst: int) -> bool:
    """No window holds more starts than ``burst`` plus ``rate`` times its length."""
    ordered = sorted(starts)
    return all(
        j - i + 1 <= burst + (ordered[j] - ordered[i]) * rate + EPS
        for i in range(len(ordered))
        for j in range(i, len(ordered))
    )


def test_the_conformance_check_itself() -> None:
    assert conforming([0, 0, 0.5, 1.0], rate=2, burst=2)
    assert not conforming([0, 0, 0.4], rate=2, burst=2)
    assert not conforming([0, 0.5, 0.9], rate=2, burst=1)


# -- the limiter alone ------------------------------------------------------------------


def test_the_schedule_of_starts_for_a_rate_and_a_burst() -> None:
    limiter = RateLimiter(2, burst=3)  # 2 per second, 3 at once
    assert [limiter.reserve(0.0) for _ in range(6)] == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 1.5])
    # Asked later than the schedule's end: the next start is then, and the
    # burst has come back after a quiet spell of (burst - 1) / rate and more.
    assert limiter.reserve(10.0) == 10.0
    assert [limiter.reserve(10.2) for _ in range(3)] == pytest.approx([10.2, 10.2, 10.5])
    # Asked in the middle of the schedule: its next place.
    assert limiter.reserve(10.6) == pytest.approx(11.0)


def test_burst_1_spaces_every_start() -> None:
    limiter = RateLimiter(4)
    grants = [limiter.reserve(now) for now in (0.0, 0.0, 0.1, 0.2, 5.0, 5.1, 5.3)]
    assert grants == pytest.approx([0.0, 0.25, 0.5, 0.75, 5.0, 5.25, 5.5])
    assert conforming(grants, rate=4, burst=1)


@pytest.mark.parametrize("burst", [1, 5])
def test_many_threads_reserving_at_once_get_distinct_places(burst: int) -> None:
    limiter = RateLimiter(1000, burst=burst)
    threads, each = 16, 200
    barrier = threading.Barrier(threads)
    grants: list[list[float]] = [[] for _ in range(threads)]

    def reserve(n: int) -> None:
        barrier.wait(timeout=60)
        grants[n].extend(limiter.reserve(0.0) for _ in range(each))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (thread switches in the middle of a reservation)
    try:
        workers = [threading.Thread(target=reserve, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switch)
    starts = sorted(start for mine in grants for start in mine)
    expected = [0.0] * burst + [k / 1000 for k in range(1, threads * each - burst + 1)]
    assert starts == pytest.approx(expected, abs=1e-6)
    assert conforming(starts, rate=1000, burst=burst)


def test_a_cancelled_grant_slows_nobody() -> None:
    limiter = RateLimiter(1)
    assert limiter.reserve(0.0) == 0.0
    latest = limiter.reserve(0.0)
    assert latest == 1.0
    limiter.cancel(latest)  # the latest: taken off the schedule
    assert limiter.reserve(0.0) == 1.0
    assert limiter.reserve(0.0) == 2.0
    earlier = 1.0
    limiter.cancel(earlier)  # not the latest: a gap, filled by the next
    assert limiter.reserve(0.5) == 1.0
    assert limiter.reserve(0.5) == 3.0
    limiter.cancel(3.0)
    limiter.cancel(2.0)  # (no longer the latest: a gap)
    assert limiter.reserve(2.5) == 3.0  # the gap at 2.0 has passed; 3.0 is free again
    assert limiter.reserve(2.5) == 4.0


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (math.nan, 1), (True, 1), ("2", 1),
                        (1, 0), (1, 1.5), (1, True)]
)  # fmt: skip
def test_bad_limits_are_refused(rate: Any, burst: Any) -> None:
    with pytest.raises(smtplug.InvalidInputError, match="rate_"):
        RateLimiter(rate, burst)


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"rate_limit": 0},
        {"rate_limit": -2.0},
        {"rate_limit": math.inf},
        {"rate_limit": "10"},
        {"rate_limit": True},
        {"rate_limit": 5, "rate_burst": 0},
        {"rate_limit": 5, "rate_burst": 2.0},
        {"rate_limit": 5, "rate_burst": True},
        {"rate_burst": 3},  # (a burst of no rate)
        {"rate_limit_per_connection": 0},
        {"rate_limit_per_connection": math.nan},
        {"rate_limit_per_connection": False},
    ],
)
def test_bad_rate_options_are_refused_before_any_connection(bad: dict[str, Any]) -> None:
    with ScriptedServer() as server:
        with pytest.raises(smtplug.InvalidInputError, match="rate_"):
            smtplug.Pool(**options(server, **bad))
        with pytest.raises(smtplug.InvalidInputError, match="rate_"):
            smtplug.AsyncPool(**options(server, **bad))
        assert server.connections == 0


# -- the pools --------------------------------------------------------------------------


class Timelines:
    """A fake clock and sleeps: every thread and task on a timeline of its own."""

    def __init__(self) -> None:
        self.now: contextvars.ContextVar[float] = contextvars.ContextVar("now", default=0.0)

    def clock(self) -> float:
        return self.now.get()

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now.set(self.now.get() + seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)  # (other tasks run meanwhile)


@pytest.fixture
def timelines(monkeypatch: pytest.MonkeyPatch) -> Timelines:
    return on_timelines(monkeypatch)


def on_timelines(monkeypatch: pytest.MonkeyPatch) -> Timelines:
    """The pool's clock and sleeps on fake timelines (also test_ratelimit_retry's)."""
    fake = Timelines()
    monkeypatch.setattr(poolmod, "_clock", fake.clock)
    monkeypatch.setattr(poolmod, "_sleep", fake.sleep)
    monkeypatch.setattr(poolmod, "_async_sleep", fake.async_sleep)
    return fake


class Starts:
    """An observer plugin: (connection, the sender's time) of every MAIL; the
    first ``together`` senders wait for each other there, so that that many
    connections are in use at once."""

    def __init__(self, clock: Timelines, together: int = 1) -> None:
        self.clock = clock
        self.seen: list[tuple[int, float]] = []
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(together) if together > 1 else None

    @smtplug.hookimpl
    def smtplug_on_command(self, info: Any, command: str) -> None:
        if command.startswith("MAIL"):
            with self.lock:
                self.seen.append((info.connection, self.clock.clock()))
                first = len(self.seen) <= (self.barrier.parties if self.barrier else 0)
            if first and self.barrier is not None:
                self.barrier.wait(timeout=60)

    @property
    def times(self) -> list[float]:
        return [time for _, time in self.seen]

    def by_connection(self) -> dict[int, list[float]]:
        found: dict[int, list[float]] = {}
        for connection, time in self.seen:
            found.setdefault(connection, []).append(time)
        return found


def schedule(count: int, rate: float, burst: int) -> list[float]:
    """The starts of ``count`` messages asked for at once at 0."""
    return [max(0, k - burst + 1) / rate for k in range(count)]


def test_pool_send_many_over_8_connections_starts_no_faster_than_the_rate(
    timelines: Timelines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker threads' path (a sender's barrier needs threads; the batch on
    # a loop is AsyncPool's, whose limits test_async_pool_both_limits checks).
    monkeypatch.setattr(poolmod, "_LOOP_BATCHES", False)
    starts = Starts(timelines, together=8)
    with ScriptedServer(capabilities=FAST) as server:
        pool_options = options(
            server, max_connections=8, rate_limit=50, rate_burst=4, plugins=[starts]
        )
        with smtplug.Pool(**pool_options) as pool:
            names = [f"m{i}" for i in range(60)]
            outcomes = list(pool.send_many(message(name) for name in names))
        server.wait_idle()
    assert [o.status for o in outcomes] == ["sent"] * 60
    assert sorted(subjects(server)) == sorted(names)
    assert len(starts.by_connection()) == 8  # (the first 8 were in flight at once)
    assert conforming(starts.times, rate=50, burst=4)
    assert sorted(starts.times) == pytest.approx(schedule(60, 50, 4))


def test_pool_sendmessage_from_many_threads_shares_one_limit(timelines: Timelines) -> None:
    starts = Starts(timelines, together=4)
    with ScriptedServer(capabilities=FAST) as server:
        pool_options = options(server, max_connections=4, rate_limit=10, plugins=[starts])
        with smtplug.Pool(**pool_options) as pool:

            def sender(n: int) -> None:
                for i in range(5):
                    assert pool.sendmessage(message(f"t{n}-{i}")).accepted

            threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        server.wait_idle()
    assert len(subjects(server)) == 40
    assert sorted(starts.times) == pytest.approx(schedule(40, 10, 1))


def test_pool_per_connection_rate_per_slot(
    timelines: Timelines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker threads' path (a sender's barrier needs threads; the batch on
    # a loop is AsyncPool's, whose limits test_async_pool_both_limits checks).
    monkeypatch.setattr(poolmod, "_LOOP_BATCHES", False)
    starts = Starts(timelines, together=3)
    with ScriptedServer(capabilities=FAST) as server:
        pool_options = options(
            server, max_connections=3, rate_limit_per_connection=5, plugins=[starts]
        )
        with smtplug.Pool(**pool_options) as pool:
            outcomes = list(pool.send_many(message(f"m{i}") for i in range(30)))
        server.wait_idle()
    assert [o.status for o in outcomes] == ["sent"] * 30
    connections = starts.by_connection()
    assert len(connections) == 3
    for times in connections.values():  # (in the order each connection carried them)
        assert all(b - a >= 0.2 - EPS for a, b in itertools.pairwise(times))
    # Three connections at 5 a second each: never more than 15 a second in all.
    assert conforming(starts.times, rate=15, burst=3)
    assert max(starts.times) >= 9 * 0.2 - EPS  # 30 messages: 10 on each, at least


def test_async_pool_both_limits(timelines: Timelines) -> None:
    starts = Starts(timelines)

    async def main(server: ScriptedServer) -> list[str]:
        pool_options = options(
            server,
            max_connections=8,
            rate_limit=20,
            rate_burst=2,
            rate_limit_per_connection=4,
            plugins=[starts],
        )
        async with smtplug.AsyncPool(**pool_options) as pool:
            return [o.status async for o in pool.send_many(message(f"m{i}") for i in range(50))]

    with ScriptedServer(capabilities=FAST) as server:
        statuses = asyncio.run(main(server))
        server.wait_idle()
    assert statuses == ["sent"] * 50
    assert conforming(starts.times, rate=20, burst=2)
    connections = starts.by_connection()
    assert len(connections) <= 8
    for times in connections.values():
        assert all(b - a >= 0.25 - EPS for a, b in itertools.pairwise(times))


# -- waits that end early, waits that block nobody ----------------------------------------


class Clock:
    """One clock for every thread; ``gated`` sleeps block until ``gate`` is set."""

    def __init__(self) -> None:
        self.now = 0.0
        self.asked: list[float] = []  # the times each sleep was to end
        self.sleeping = threading.Event()
        self.gate = threading.Event()
        self.gated = 0  # how many of the next sleeps block
        self.async_sleeping: asyncio.Event | None = None  # (set by a gated async sleep)

    def __call__(self) -> float:
        return self.now

    def _ask(self, seconds: float) -> bool:
        self.asked.append(self.now + seconds)
        if self.gated:
            self.gated -= 1
            self.sleeping.set()
            return True
        self.now += seconds
        return False

    def sleep(self, seconds: float) -> None:
        if self._ask(seconds):
            assert self.gate.wait(timeout=60)

    async def async_sleep(self, seconds: float) -> None:
        if self._ask(seconds):
            assert self.async_sleeping is not None
            self.async_sleeping.set()
            await asyncio.Event().wait()  # (until cancelled)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(poolmod, "_clock", fake)
    monkeypatch.setattr(poolmod, "_sleep", fake.sleep)
    monkeypatch.setattr(poolmod, "_async_sleep", fake.async_sleep)
    return fake


def test_a_cancelled_async_send_while_waiting_leaves_no_reservation(clock: Clock) -> None:
    async def main(server: ScriptedServer) -> None:
        async with smtplug.AsyncPool(**options(server, rate_limit=1)) as pool:
            assert (await pool.sendmessage(message("first"))).accepted  # at 0: no wait
            clock.gated = 1
            clock.async_sleeping = asyncio.Event()
            waiting = asyncio.ensure_future(pool.sendmessage(message("cancelled")))
            await asyncio.wait_for(clock.async_sleeping.wait(), 60)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            for name in ("second", "third", "fourth"):
                assert (await pool.sendmessage(message(name))).accepted

    with ScriptedServer(capabilities=FAST) as server:
        asyncio.run(main(server))
        server.wait_idle()
    # The cancelled send was to start at 1; the next took its place.
    assert clock.asked == [1.0, 1.0, 2.0, 3.0]
    assert subjects(server) == ["first", "second", "third", "fourth"]
    assert server.connections == 1  # (the slot came back unharmed)


def test_a_waiting_sender_blocks_no_other_that_may_go(clock: Clock) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        pool_options = options(server, max_connections=2, rate_limit_per_connection=1)
        with smtplug.Pool(**pool_options) as pool:
            pool.sendmessage(message("a"))  # at 0, on one connection
            pool.sendmessage(message("b"))  # at 0, on another (the first must wait)
            assert server.connections == 2 and clock.asked == []
            clock.gated = 1
            waiter = threading.Thread(target=pool.sendmessage, args=(message("waits"),))
            waiter.start()
            assert clock.sleeping.wait(timeout=60)
            clock.now = 1.0  # both connections may go again; the waiter sleeps on
            done = threading.Event()

            def other() -> None:
                pool.sendmessage(message("goes"))
                done.set()

            threading.Thread(target=other).start()
            assert done.wait(timeout=60)  # (not blocked by the waiting sender)
            clock.gate.set()
            waiter.join()
        server.wait_idle()
    assert clock.asked == [1.0]  # only the waiter slept
    assert subjects(server).count("goes") == 1
    assert sorted(subjects(server)) == ["a", "b", "goes", "waits"]
    assert server.connections == 2


def test_a_pool_closed_while_a_sender_waits(clock: Clock) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        pool = smtplug.Pool(**options(server, rate_limit=1))
        pool.sendmessage(message("first"))
        clock.gated = 1
        errors: list[BaseException] = []

        def waiter() -> None:
            try:
                pool.sendmessage(message("never"))
            except smtplug.SMTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=waiter)
        thread.start()
        assert clock.sleeping.wait(timeout=60)
        pool.close()
        clock.gate.set()
        thread.join()
        server.wait_idle()
    assert len(errors) == 1 and isinstance(errors[0], smtplug.InvalidInputError)
    assert "closed" in str(errors[0])
    assert subjects(server) == ["first"]
    assert server.sessions[-1].verbs[-1] == "QUIT"
    assert pool._rate is not None and pool._rate.reserve(0.0) == 1.0  # (given back)


def test_one_sender_on_one_clock(clock: Clock) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        with smtplug.Pool(**options(server, rate_limit=2, rate_burst=2)) as pool:
            for i in range(5):
                pool.sendmessage(message(f"m{i}"))
        server.wait_idle()
    assert clock.asked == pytest.approx([0.5, 1.0, 1.5])
    assert subjects(server) == [f"m{i}" for i in range(5)]
