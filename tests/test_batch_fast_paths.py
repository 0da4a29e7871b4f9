"""The shortcuts of a pool's batch (``send_many``) behave as the paths they skip.

What is the same for every message of a batch (the sends' limits, the
checks of the per-message options, the extra MAIL/RCPT parameters, the
``follow`` of a slot) is made once per batch; a message without a retry
policy or a deadline runs the slot program without the retry wrapper; a
slot free at once is taken and given back without a coroutine; a batch's
iterator is asked without a coroutine per message. Each test shows the
shortcut is taken where it applies, and that the outcomes (bad options,
retries, rate limits, errors of the iterable) are exactly what they were.
Both pools (:class:`smtplug.Pool` runs the :class:`smtplug.AsyncPool`
batch on a loop of its own), over the in-memory peer (tests/mockstream.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

import smtplug
from mockstream import MockServer
from smtplug import api, pool, retry

MESSAGE = (
    b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: mock\r\n"
    b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m@example.com>\r\n\r\n"
    b"body\r\n"
)

BAD_MESSAGE = b"From: alice@example.com\r\nTo: <<<\r\n\r\nbody\r\n"


def options(server: MockServer, **more: Any) -> dict[str, Any]:
    return {
        "servers": "mock.invalid",
        "client": "localhost",
        "usetls": False,
        "plugins": [server.plugin()],
        "block_plugins": ["plain"],
        "max_connections": 2,
        **more,
    }


def send_many(
    kind: str,
    server: MockServer,
    messages: Iterable[Any],
    pool_options: dict[str, Any],
    **sends: Any,
) -> list[smtplug.Outcome]:
    """The outcomes of one batch through a Pool or an AsyncPool."""
    if kind == "pool":
        with smtplug.Pool(**options(server, **pool_options)) as p:
            return list(p.send_many(messages, **sends))

    async def main() -> list[smtplug.Outcome]:
        async with smtplug.AsyncPool(**options(server, **pool_options)) as p:
            return [o async for o in p.send_many(messages, **sends)]

    return asyncio.run(main())


both_pools = pytest.mark.parametrize("kind", ["pool", "asyncpool"])


def described(outcomes: list[smtplug.Outcome]) -> list[tuple[int, str, str | None]]:
    return [
        (
            o.message_index,
            o.status,
            None if o.error is None else f"{type(o.error).__name__}: {o.error}",
        )
        for o in outcomes
    ]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the paths a shortcut skips are taken."""
    counts = {"limits": 0, "guarded": 0, "acquire": 0, "release": 0, "prepare": 0, "paced": 0}

    def count(name: str, owner: Any, attribute: str) -> None:
        real = getattr(owner, attribute)

        def counting(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, counting)

    count("limits", retry, "limits")
    count("guarded", pool, "_guarded")
    count("acquire", pool.AsyncPool, "_acquire")
    count("release", pool.AsyncPool, "_release")
    count("paced", pool.AsyncPool, "_paced")
    count("prepare", pool, "prepare")
    return counts


# -- made once per batch ---------------------------------------------------------------


@both_pools
def test_a_batch_checks_its_limits_and_options_once(kind, counted):
    outcomes = send_many(kind, MockServer(), [MESSAGE] * 6, {}, recipients=["bob@example.org"])
    assert [o.status for o in outcomes] == ["sent"] * 6
    # The pool's own (its setup), send_many's check and the batch's: not one per message.
    assert counted["limits"] == 3
    assert counted["prepare"] == 0  # (the per-message option checks: once, not per message)
    assert counted["guarded"] == 0  # no retry, no deadline: no wrapper


@both_pools
@pytest.mark.parametrize(
    "sends",
    [
        {"retry": smtplug.Retry(attempts=2, backoff=0)},
        {"deadline": 30},
    ],
)
def test_a_retry_or_a_deadline_still_gets_the_wrapper(kind, counted, sends):
    outcomes = send_many(kind, MockServer(), [MESSAGE] * 3, {}, **sends)
    assert [o.status for o in outcomes] == ["sent"] * 3
    assert counted["guarded"] == 3


@both_pools
def test_a_pool_retry_is_still_applied_to_a_batch(kind):
    server = MockServer({"MAIL": b"451 4.3.0 later\r\n"})
    outcomes = send_many(
        kind, server, [MESSAGE] * 2, {"retry": smtplug.Retry(attempts=3, backoff=0)}
    )
    assert [o.status for o in outcomes] == ["refused", "refused"]
    mails = sum(bytes(s.received).count(b"MAIL FROM") for s in server.sessions)
    assert mails == 6  # three attempts each


@both_pools
@pytest.mark.parametrize(
    ("sends", "fragment"),
    [
        ({"atleastone": "yes"}, "atleastone must be True or False, not 'yes'"),
        ({"queue": 1}, "queue must be True or False, not 1"),
        ({"requiretls": "no"}, "requiretls must be True or False"),
        ({"dsn": "NEVER"}, "dsn must be a smtplug.DSN"),
        ({"mail_options": ["SIZE=10"]}, "mail_options: SIZE is written by smtplug itself"),
    ],
)
def test_bad_per_message_options_are_still_each_messages_outcome(kind, counted, sends, fragment):
    server = MockServer()
    outcomes = send_many(kind, server, [MESSAGE, BAD_MESSAGE, MESSAGE], {}, **sends)
    first, bad, last = described(outcomes)
    error = _alone(MESSAGE, sends)  # what a message prepared alone meets
    assert fragment in error
    assert first == (0, "not_sent", error) and last == (2, "not_sent", error)
    # The message's own error comes first for a flag, after it for the
    # MAIL/RCPT parameters: as a message prepared alone.
    flag = "atleastone" in sends or "queue" in sends
    alone = _alone(BAD_MESSAGE, sends)
    assert bad == (1, "not_sent", alone)
    assert (alone == error) is flag
    assert counted["prepare"] == 3  # (each message prepared with every check)
    assert server.sessions == []  # nothing was sent


def _alone(message: bytes, sends: dict[str, Any]) -> str:
    from smtplug.options import MessageOptions, build

    with pytest.raises(smtplug.SMTPError) as caught:
        api.prepare(message, build(MessageOptions, sends))
    return f"{type(caught.value).__name__}: {caught.value}"


@both_pools
def test_a_bad_message_of_a_checked_batch_fails_as_alone(kind):
    outcomes = send_many(kind, MockServer(), [MESSAGE, BAD_MESSAGE], {})
    assert described(outcomes)[1] == (1, "not_sent", _alone(BAD_MESSAGE, {}))
    assert outcomes[0].status == "sent"


@both_pools
def test_the_batch_extras_reach_every_message(kind):
    server = MockServer(capabilities=("PIPELINING", "8BITMIME", "DSN"))
    dsn = smtplug.DSN(notify=["FAILURE"], ret="HDRS")
    outcomes = send_many(
        kind, server, [MESSAGE] * 3, {}, dsn=dsn, mail_options=["X-A=1"], rcpt_options=["X-B=2"]
    )
    assert [o.status for o in outcomes] == ["sent"] * 3
    received = b"".join(bytes(s.received) for s in server.sessions)
    assert received.count(b"MAIL FROM:<alice@example.com> X-A=1 RET=HDRS\r\n") == 3
    assert received.count(b"RCPT TO:<bob@example.org> X-B=2 NOTIFY=FAILURE\r\n") == 3


# -- no coroutine for a slot free at once --------------------------------------------------


def test_a_free_slot_is_taken_and_given_back_without_a_coroutine(counted):
    outcomes = send_many("asyncpool", MockServer(), [MESSAGE] * 5, {})
    assert [o.status for o in outcomes] == ["sent"] * 5
    assert counted["acquire"] == 0
    assert counted["release"] == 1  # (only the close of the pool's one connection)


@pytest.mark.parametrize(
    "pool_options", [{"rate_limit": 10_000}, {"rate_limit_per_connection": 1e4}]
)
def test_with_a_rate_limit_every_message_is_paced(counted, pool_options):
    # The first takes its slot through _acquire (which paces it); the next
    # ones, on the slot the batch's sender kept, are booked when their first
    # flight is chained (_may_follow), or paced there when not.
    booked: list[object] = []
    real = pool.AsyncPool._may_follow

    def may_follow(self: Any, *args: Any) -> Any:
        flight = real(self, *args)
        booked.append(flight)
        return flight

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pool.AsyncPool, "_may_follow", may_follow)
        outcomes = send_many("asyncpool", MockServer(), [MESSAGE] * 3, pool_options)
    assert [o.status for o in outcomes] == ["sent"] * 3
    assert counted["acquire"] == 1
    chained = sum(flight is not None for flight in booked)
    assert counted["paced"] + chained == 3


def test_with_an_idle_timeout_a_slot_is_still_acquired(counted):
    # (_take_at_once leaves the closing of idle connections to _acquire.)
    outcomes = send_many("asyncpool", MockServer(), [MESSAGE] * 3, {"idle_timeout": 60})
    assert [o.status for o in outcomes] == ["sent"] * 3
    assert counted["acquire"] == 1


def test_a_pool_closed_during_a_batch_still_ends_it_as_before():
    server = MockServer()

    async def main() -> list[tuple[int, str]]:
        async with smtplug.AsyncPool(**options(server)) as p:
            seen = []
            async for outcome in p.send_many([MESSAGE] * 20):
                seen.append((outcome.message_index, outcome.status))
                if outcome.message_index == 2:
                    await p.close()
            return seen

    seen = asyncio.run(main())
    assert seen[:3] == [(0, "sent"), (1, "sent"), (2, "sent")]
    assert all(status in ("sent", "not_sent") for _, status in seen)
    assert {status for _, status in seen[12:]} == {"not_sent"}  # (past the window)
    assert all(s.closed for s in server.sessions)  # every connection closed


# -- the batch's iterable ------------------------------------------------------------------


class Boom(Exception):
    pass


def failing(count: int) -> Iterator[bytes]:
    yield from [MESSAGE] * count
    raise Boom("the iterable failed")


@both_pools
def test_an_iterable_that_fails_still_ends_the_batch_after_the_messages_before(kind):
    server = MockServer()
    seen: list[str] = []
    with pytest.raises(Boom, match="the iterable failed"):
        if kind == "pool":
            with smtplug.Pool(**options(server)) as p:
                for outcome in p.send_many(failing(3)):
                    seen.append(outcome.status)
        else:

            async def main() -> None:
                async with smtplug.AsyncPool(**options(server)) as p:
                    async for outcome in p.send_many(failing(3)):
                        seen.append(outcome.status)

            asyncio.run(main())
    assert seen == ["sent"] * 3


def test_an_async_iterable_is_still_read_to_its_end():
    async def messages() -> Any:
        for _ in range(4):
            await asyncio.sleep(0)
            yield MESSAGE

    async def main() -> list[str]:
        async with smtplug.AsyncPool(**options(MockServer())) as p:
            return [o.status async for o in p.send_many(messages())]

    assert asyncio.run(main()) == ["sent"] * 4


def test_a_sync_iterable_is_asked_without_a_coroutine_per_message(monkeypatch):
    """(The iterator itself is what the batch takes: ``next`` on it.)"""
    taken: list[object] = []
    real = pool.AsyncPool._batches

    def spying(self: Any, source: Any, options: Any) -> Any:
        taken.append(source)
        return real(self, source, options)

    monkeypatch.setattr(pool.AsyncPool, "_batches", spying)
    messages = iter([MESSAGE] * 2)
    outcomes = send_many("pool", MockServer(), messages, {})
    assert [o.status for o in outcomes] == ["sent"] * 2
    assert taken == [messages]
