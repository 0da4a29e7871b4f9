"""A retry is a message start like any other: the pools' rate limits pace it.

Before, a pool booked the rate limit once per message, when a sender took a
slot; an attempt after a backoff started without a booking, so a batch with
retries started more messages than ``rate_limit`` allows (a provider that
asks for 1 a second got two within its second). Now every attempt after the
first is paced again (``smtplug.pool._pace_again``, run by
``smtplug.retry.guarded`` after the backoff): on both pools, on both paths of
``Pool.send_many``; one that could only start past the deadline is not made
(its booking given back, the send ends with the failure it had); a cancelled
wait gives its booking back.

As in test_ratelimit.py, nothing waits for time to pass: the pool's clock
and sleeps, the retry's clock and the drivers' sleeps all run on one fake
timeline per thread or task (a context variable), moved only by sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import smtplug
from scripted import subjects
from smtplug import pool as poolmod
from smtplug import retry as retrymod
from smtplug.drivers import aio as aiodriver
from smtplug.drivers import blocking as blockingdriver
from smtplug.testing import Command, ScriptedServer
from test_pool import FAST, message
from test_ratelimit import Starts, Timelines, conforming, on_timelines, options

TRANSIENT = b"451 4.3.0 try again later\r\n"


@pytest.fixture
def timelines(monkeypatch: pytest.MonkeyPatch) -> Timelines:
    """The pool's timelines (test_ratelimit's), for the retry's clock and the
    drivers' sleeps too: one fake timeline per thread or task for every
    clock and sleep of a send."""
    fake = on_timelines(monkeypatch)
    monkeypatch.setattr(retrymod, "_clock", fake.clock)
    monkeypatch.setattr(blockingdriver, "_sleep", fake.sleep)
    monkeypatch.setattr(aiodriver, "_sleep", fake.async_sleep)
    return fake


@pytest.fixture(params=["loop", "threads"])
def batch_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "threads":
        monkeypatch.setattr(poolmod, "_LOOP_BATCHES", False)
    return str(request.param)


def refusing(*numbers: int) -> dict[str, Any]:
    """A script refusing (for now) the MAIL commands of these numbers, from 1,
    counted over every connection."""
    lock = threading.Lock()
    seen = [0]

    def mail(command: Command) -> bytes | None:
        with lock:
            seen[0] += 1
            return TRANSIENT if seen[0] in numbers else None

    return {"MAIL": mail}


def quick(**more: Any) -> smtplug.Retry:
    """A short backoff (0.1 s, no jitter): shorter than the rate's spacing."""
    return smtplug.Retry(backoff=0.1, jitter=False, **more)


def test_a_retry_waits_for_the_rate_limit_not_only_its_backoff(timelines: Timelines) -> None:
    starts = Starts(timelines)
    with ScriptedServer(refusing(1), capabilities=FAST) as server:
        pool_options = options(server, rate_limit=1, retry=quick(), plugins=[starts])
        with smtplug.Pool(**pool_options) as pool:
            first = pool.sendmessage(message("first"))
            second = pool.sendmessage(message("second"))
        server.wait_idle()
    assert first.accepted and first.attempts == 2
    assert second.accepted and second.attempts == 1
    # At 0 the first attempt, refused; its retry after the 0.1 s backoff
    # waits for the next place of the schedule (1.0), the next message for
    # the one after (2.0). Before: 0, 0.1 and 1.0.
    assert starts.times == pytest.approx([0.0, 1.0, 2.0])
    assert subjects(server) == ["first", "second"]


def test_an_async_pool_paces_its_retries_too(timelines: Timelines) -> None:
    starts = Starts(timelines)

    async def main(server: ScriptedServer) -> list[int]:
        pool_options = options(server, rate_limit=1, retry=quick(), plugins=[starts])
        async with smtplug.AsyncPool(**pool_options) as pool:
            results = [await pool.sendmessage(message(name)) for name in ("first", "second")]
        return [result.attempts for result in results]

    with ScriptedServer(refusing(1), capabilities=FAST) as server:
        attempts = asyncio.run(main(server))
        server.wait_idle()
    assert attempts == [2, 1]
    assert starts.times == pytest.approx([0.0, 1.0, 2.0])


@pytest.mark.usefixtures("batch_path")
def test_a_batch_with_retries_starts_no_faster_than_the_rate(timelines: Timelines) -> None:
    starts = Starts(timelines)
    retried = (3, 7, 8, 20, 33)
    with ScriptedServer(refusing(*retried), capabilities=FAST) as server:
        pool_options = options(
            server,
            max_connections=8,
            rate_limit=50,
            rate_burst=4,
            # (Attempts enough for one message to meet every refusal: the
            # refused MAILs are counted over the batch, and a retry, paced
            # behind the others, may land on a later number too.)
            retry=smtplug.Retry(attempts=len(retried) + 1, backoff=0.001, jitter=False),
            plugins=[starts],
        )
        with smtplug.Pool(**pool_options) as pool:
            names = [f"m{i}" for i in range(40)]
            outcomes = list(pool.send_many(message(name) for name in names))
        server.wait_idle()
    assert [o.status for o in outcomes] == ["sent"] * 40
    assert sum(o.result.attempts for o in outcomes if o.result is not None) == 40 + len(retried)
    assert sorted(subjects(server)) == sorted(names)
    assert len(starts.times) == 40 + len(retried)  # every attempt's MAIL
    assert conforming(starts.times, rate=50, burst=4)


def test_a_retry_the_rate_would_start_past_the_deadline_is_not_made(
    timelines: Timelines,
) -> None:
    starts = Starts(timelines)
    with ScriptedServer(refusing(1), capabilities=FAST) as server:
        pool_options = options(server, rate_limit=1, plugins=[starts])
        with smtplug.Pool(**pool_options) as pool:
            with pytest.raises(smtplug.SMTPError) as caught:
                pool.sendmessage(message("late"), retry=quick(), deadline=0.5)
            after = pool.sendmessage(message("after"))
        server.wait_idle()
    # The send ends with the failure it had (its retry could start at 1.0
    # only, after the deadline at 0.5), not with the deadline's error.
    assert not isinstance(caught.value, smtplug.DeadlineExceededError)
    assert getattr(caught.value, "code", None) == 451
    # Its booking was given back: the next message takes that place, 1.0.
    assert starts.times == pytest.approx([0.0, 1.0])
    assert after.accepted and subjects(server) == ["after"]


def test_a_cancelled_retry_wait_gives_its_booking_back(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    waiting = asyncio.Event()

    def clock() -> float:
        return now[0]

    async def sleep(seconds: float) -> None:
        if now[0] > 0 and seconds > 0.5 and not waiting.is_set():
            waiting.set()  # the retry's wait for its place at 1.0
            await asyncio.Event().wait()  # (until cancelled)
        now[0] += seconds

    for module, name, value in (
        (poolmod, "_clock", clock),
        (poolmod, "_async_sleep", sleep),
        (retrymod, "_clock", clock),
        (aiodriver, "_sleep", sleep),
    ):
        monkeypatch.setattr(module, name, value)

    async def main(server: ScriptedServer) -> float:
        async with smtplug.AsyncPool(**options(server, rate_limit=1)) as pool:
            task = asyncio.ensure_future(pool.sendmessage(message("cancelled"), retry=quick()))
            await asyncio.wait_for(waiting.wait(), 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await pool.sendmessage(message("next"))).accepted
            return now[0]

    with ScriptedServer(refusing(1), capabilities=FAST) as server:
        started_at = asyncio.run(main(server))
        server.wait_idle()
    # The cancelled retry had the place at 1.0; the next message took it
    # (it slept from 0.1 to 1.0, not to 2.0).
    assert started_at == pytest.approx(1.0)
    assert subjects(server) == ["next"]


def test_a_retry_given_up_for_the_rate_still_names_an_earlier_unknown_delivery(
    timelines: Timelines,
) -> None:
    # unknown="retry": attempts 1 and 2 both lose the connection after the
    # end (delivery unknown); the third could start only at 2.0, past the
    # deadline. The send ends as it does when the backoff passes the
    # deadline: an error that says an earlier attempt may have delivered.
    from smtplug.testing import CLOSE

    starts = Starts(timelines)
    with ScriptedServer({".": CLOSE}, capabilities=FAST) as server:
        pool_options = options(server, rate_limit=1, plugins=[starts])
        with (
            smtplug.Pool(**pool_options) as pool,
            pytest.raises(smtplug.DeliveryUnknownError) as caught,
        ):
            pool.sendmessage(message("twice"), retry=quick(unknown="retry"), deadline=1.5)
        server.wait_idle()
    assert starts.times == pytest.approx([0.0, 1.0])
    assert "an earlier attempt ended with the delivery unknown" in str(caught.value)
