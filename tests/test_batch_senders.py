"""An AsyncPool batch (and Pool.send_many on its loop) is sent by one sender
per connection: it takes the batch's next message as the one before ends,
writes that message's first flight behind the end (RFC 2920 section 3.1)
and keeps its connection from one message to the next, while a sender from
outside the batch that waits for a connection is served first.

Checked here against ScriptedServer: the batch chains its own messages and
makes no task per message; a waiting sender is not kept behind the batch;
a connection kept from one message to the next is not taken for idle; the
outcomes stay in order however the connections finish.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import smtplug
from scripted import subjects
from smtplug import pool as poolmod
from smtplug.testing import Answer, Command, ScriptedServer
from test_chained_flights import chained
from test_pool import FAST, Clock, message
from test_pool import options as pool_options


def batch(server: ScriptedServer, count: int, **more: Any) -> list[smtplug.Outcome]:
    async def main() -> list[smtplug.Outcome]:
        async with smtplug.AsyncPool(**pool_options(server, **more)) as pool:
            return [o async for o in pool.send_many(message(f"m{i}") for i in range(count))]

    return asyncio.run(main())


@pytest.mark.parametrize("connections", [1, 2, 3])
def test_a_batch_chains_its_own_messages_on_each_connection(
    pieces: list[bytes], connections: int
) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        outcomes = batch(server, 12, max_connections=connections)
        server.wait_idle()
    assert [(o.message_index, o.status) for o in outcomes] == [(i, "sent") for i in range(12)]
    assert sorted(subjects(server)) == sorted(f"m{i}" for i in range(12))
    assert len(server.sessions) == connections
    # Every message but the first on each connection went behind the one before.
    assert chained(pieces) == 12 - connections


def test_a_batch_makes_a_task_per_connection_not_per_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[object] = []
    real = asyncio.BaseEventLoop.create_task

    def create_task(self: Any, coro: Any, **kwargs: Any) -> Any:
        made.append(getattr(coro, "__qualname__", coro))
        return real(self, coro, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "create_task", create_task)
    with ScriptedServer(capabilities=FAST) as server:
        outcomes = batch(server, 40, max_connections=3)
    assert [o.status for o in outcomes] == ["sent"] * 40
    ours = [name for name in made if "AsyncPool" in str(name)]
    assert ours == ["AsyncPool._work"] * 3  # (the server's own tasks are not counted)


def test_a_sender_waiting_during_a_batch_goes_next() -> None:
    """With one connection, a sendmessage started while a batch runs is sent
    behind the message in progress (or the one already chained behind it),
    not after the batch."""
    with ScriptedServer(capabilities=FAST) as server:

        async def main() -> tuple[list[smtplug.Outcome], smtplug.SendResult]:
            async with smtplug.AsyncPool(**pool_options(server, max_connections=1)) as pool:
                outcomes = []
                outside: asyncio.Future[smtplug.SendResult] | None = None
                async for outcome in pool.send_many(message(f"m{i}") for i in range(30)):
                    outcomes.append(outcome)
                    if outcome.message_index == 2:
                        outside = asyncio.ensure_future(pool.sendmessage(message("x")))
                        await asyncio.sleep(0)  # (it waits for the connection now)
                assert outside is not None
                return outcomes, await outside

        outcomes, result = asyncio.run(main())
        server.wait_idle()
    assert [o.status for o in outcomes] == ["sent"] * 30 and result.accepted
    order = subjects(server)
    assert sorted(order) == sorted([*(f"m{i}" for i in range(30)), "x"])
    assert order.index("x") <= 5  # m0-m2 done, m3 in progress, m4 perhaps behind it
    assert len(server.sessions) == 1


def test_a_connection_kept_between_messages_is_not_taken_for_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each message takes 10 s of the pool's clock; idle_timeout is 15 s. The
    # connection is never idle (a sender holds it from one message to the
    # next): one session. (Without PIPELINING: nothing chained, so each
    # message meets the check of a kept connection.)
    clock = Clock()
    monkeypatch.setattr(poolmod, "_clock", clock)

    def slow(command: Command) -> None:
        clock.now += 10

    with ScriptedServer({".": slow}, capabilities=["8BITMIME"]) as server:
        outcomes = batch(server, 5, max_connections=1, idle_timeout=15)
        server.wait_idle()
    assert [o.status for o in outcomes] == ["sent"] * 5
    assert len(server.sessions) == 1
    assert subjects(server) == [f"m{i}" for i in range(5)]


def test_outcomes_stay_in_order_when_a_connection_is_held_up() -> None:
    # The reply to m0's end comes slowly (an octet every 50 ms): the other
    # connections finish their messages meanwhile, handed out after m0's.
    held_up = Answer(b"250 2.0.0 ok\r\n", drip=(1, 0.05))

    def end(command: Command) -> Answer | None:
        if b"Subject: m0\r\n" in command.session.transactions[-1].content:
            return held_up
        return None

    with ScriptedServer({".": end}, capabilities=FAST) as server:
        outcomes = batch(server, 9, max_connections=3)
        server.wait_idle()
    assert [(o.message_index, o.status) for o in outcomes] == [(i, "sent") for i in range(9)]
    assert sorted(subjects(server)) == sorted(f"m{i}" for i in range(9))
