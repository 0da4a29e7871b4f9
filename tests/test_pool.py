"""smtplug.Pool and smtplug.AsyncPool: limits, stale connections, send_many.

Against ScriptedServer (which counts connections and records every command),
and for the memory test against a counting sink in a process of its own (so
that tracemalloc sees the client alone). Time-based limits run on a fake
clock (``smtplug.pool._clock``): nothing here waits for a limit to pass or
times anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import smtplug
from scripted import subjects
from smtplug import pool as poolmod
from smtplug.testing import CLOSE, Answer, Command, ScriptedServer

FAST = ["8BITMIME", "PIPELINING"]


def message(subject: str, to: str = "bob@example.org") -> bytes:
    return (
        f"From: alice@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.com>\r\n"
        "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nhello\r\n"
    ).encode()


def options(server: ScriptedServer, **more: Any) -> dict[str, Any]:
    return {
        "servers": "127.0.0.1",
        "ports": server.port,
        "usetls": False,
        "timeout": 5,
        "client": "localhost",
        **more,
    }


def per_session(server: ScriptedServer) -> list[int]:
    return [sum(t.complete for t in s.transactions) for s in server.sessions]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(poolmod, "_clock", fake)
    return fake


class Commands:
    """An observer plugin: every command sent, by connection number."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    @smtplug.hookimpl
    def smtplug_on_command(self, info: Any, command: str) -> None:
        self.seen.append((info.connection, command.split(" ", 1)[0]))

    def count(self, verb: str) -> int:
        return sum(1 for _, v in self.seen if v == verb)


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"max_connections": 0},
        {"max_connections": True},
        {"max_connections": 2.5},
        {"max_messages_per_connection": 0},
        {"max_lifetime": -1},
        {"idle_timeout": 0},
    ],
)
def test_bad_pool_options_are_refused_before_any_connection(bad: dict[str, Any]) -> None:
    with ScriptedServer() as server:
        with pytest.raises(smtplug.InvalidInputError):
            smtplug.Pool(**options(server, **bad))
        with pytest.raises(smtplug.InvalidInputError):
            smtplug.AsyncPool(**options(server, **bad))
        assert server.connections == 0


def test_unknown_option_and_closed_pool() -> None:
    with ScriptedServer() as server:
        with pytest.raises(smtplug.UnknownOptionError):
            smtplug.Pool(**options(server, max_conections=2))
        pool = smtplug.Pool(**options(server))
        pool.sendmessage(message("one"))
        pool.close()
        with pytest.raises(smtplug.InvalidInputError, match="closed"):
            pool.sendmessage(message("two"))
        server.wait_idle()
        assert server.sessions[0].verbs[-1] == "QUIT"
        assert subjects(server) == ["one"]


def test_the_pool_is_importable_without_asyncio() -> None:
    code = (
        "import sys, smtplug; smtplug.Pool; assert 'asyncio' not in sys.modules; smtplug.AsyncPool"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- limits -----------------------------------------------------------------------------


def test_many_threads_never_open_more_than_max_connections() -> None:
    # Every reply dripped: the senders overlap, so the pool is always full.
    with ScriptedServer(capabilities=FAST, drip=(64, 0.001)) as server:
        with smtplug.Pool(**options(server, max_connections=3)) as pool:

            def sender(n: int) -> None:
                for i in range(5):
                    result = pool.sendmessage(message(f"t{n}-m{i}"))
                    assert result.accepted and list(result) == []

            threads = [threading.Thread(target=sender, args=(n,)) for n in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert pool.connections <= 3
        server.wait_idle()
        assert 1 <= server.connections <= 3
        assert sorted(subjects(server)) == sorted(f"t{n}-m{i}" for n in range(12) for i in range(5))
        assert all(s.verbs[-1] == "QUIT" for s in server.sessions)


def test_max_messages_per_connection() -> None:
    with ScriptedServer(capabilities=FAST) as server:
        with smtplug.Pool(**options(server, max_messages_per_connection=3)) as pool:
            for i in range(7):
                assert pool.sendmessage(message(f"m{i}")).accepted
        server.wait_idle()
        assert per_session(server) == [3, 3, 1]
        assert all(s.verbs[-1] == "QUIT" for s in server.sessions)
        assert subjects(server) == [f"m{i}" for i in range(7)]


def test_max_lifetime(clock: Clock) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        with smtplug.Pool(**options(server, max_lifetime=60)) as pool:
            pool.sendmessage(message("m0"))
            clock.now += 30
            pool.sendmessage(message("m1"))
            clock.now += 31  # the session is 61 s old now
            pool.sendmessage(message("m2"))
        server.wait_idle()
        assert per_session(server) == [2, 1]
        assert server.sessions[0].verbs[-1] == "QUIT"


def test_idle_timeout(clock: Clock) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        with smtplug.Pool(**options(server, idle_timeout=10)) as pool:
            pool.sendmessage(message("m0"))
            clock.now += 9
            pool.sendmessage(message("m1"))
            clock.now += 11
            pool.sendmessage(message("m2"))
        server.wait_idle()
        assert per_session(server) == [2, 1]
        assert server.sessions[0].verbs[-1] == "QUIT"


def test_idle_connections_are_closed_when_a_sender_takes_another(clock: Clock) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        pool = smtplug.Pool(**options(server, idle_timeout=10))
        # Two connections, both idle: the second is taken first (most recent).
        first, second = pool._acquire(), pool._acquire()
        pool._release(first)
        pool._release(second)
        for slot in (first, second):
            slot.driver.run(poolmod._ready(pool._limits, slot))  # (nothing to do yet)
        pool.sendmessage(message("a"))
        pool.sendmessage(message("b"))  # the same connection: the most recent
        assert pool.connections == 1
        # Open the other connection, then leave both idle too long.
        held = pool._acquire()
        pool._release(pool._acquire())
        pool._release(held)
        clock.now += 11
        pool.sendmessage(message("c"))
        pool.close()
        server.wait_idle()
        assert subjects(server) == ["a", "b", "c"]
        assert all(s.verbs[-1] == "QUIT" for s in server.sessions)


# -- stale and broken connections --------------------------------------------------------


@pytest.mark.parametrize(
    "after",
    [
        Answer(b"250 2.0.0 OK: queued\r\n", then=CLOSE),
        Answer(b"250 2.0.0 OK: queued\r\n421 4.4.2 idle too long\r\n", then=CLOSE),
    ],
    ids=["closed", "421-then-closed"],
)
def test_a_connection_the_server_closed_while_idle_costs_no_message(after: Answer) -> None:
    commands = Commands()
    with ScriptedServer({".": after}, capabilities=FAST) as server:
        with smtplug.Pool(**options(server, plugins=[commands])) as pool:
            for i in range(3):
                server.wait_idle()  # the server has closed the last one
                result = pool.sendmessage(message(f"m{i}"))
                assert result.accepted
        assert subjects(server) == ["m0", "m1", "m2"]
        assert server.connections == 3
        # Noticed before the transaction: no MAIL went to a dead connection.
        assert commands.count("MAIL") == 3


def test_421_mid_batch_goes_to_a_fresh_connection(batch_path: str) -> None:
    fired = []

    def rcpt(command: Command) -> Answer | None:
        if command.session.index == 0 and command.occurrence == 3 and not fired:
            fired.append(command)
            return Answer(b"421 4.3.2 shutting down\r\n", then=CLOSE)
        return None

    with ScriptedServer({"RCPT": rcpt}, capabilities=FAST) as server:
        with smtplug.Pool(**options(server, max_connections=1)) as pool:
            outcomes = list(pool.send_many([message(f"m{i}") for i in range(6)]))
        server.wait_idle()
    assert [o.status for o in outcomes] == ["sent", "sent", "not_sent", "sent", "sent", "sent"]
    error = outcomes[2].error
    assert isinstance(error, smtplug.SMTPError) and error.code == 421 and error.transient
    assert subjects(server) == ["m0", "m1", "m3", "m4", "m5"]
    assert per_session(server) == [2, 3]


def test_421_mid_batch_moves_the_message_to_the_next_server(batch_path: str) -> None:
    def rcpt(command: Command) -> Answer | None:
        if command.occurrence == 3:
            return Answer(b"421 4.3.2 shutting down\r\n", then=CLOSE)
        return None

    with (
        ScriptedServer({"RCPT": rcpt}, capabilities=FAST) as first,
        ScriptedServer(capabilities=FAST) as second,
    ):
        with smtplug.Pool(
            servers=["127.0.0.1", "127.0.0.1"],
            ports=[first.port, second.port],
            usetls=False,
            timeout=5,
            client="localhost",
            max_connections=1,
        ) as pool:
            outcomes = list(pool.send_many(message(f"m{i}") for i in range(5)))
        first.wait_idle()
        second.wait_idle()
    assert [o.status for o in outcomes] == ["sent"] * 5
    assert subjects(first) == ["m0", "m1"]
    assert subjects(second) == ["m2", "m3", "m4"]


# -- send_many --------------------------------------------------------------------------


@pytest.fixture(params=["loop", "threads"])
def batch_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pool.send_many both ways: its batch on an event loop of its own (where
    the plan has asyncio transports), and on worker threads (the fallback)."""
    if request.param == "threads":
        monkeypatch.setattr(poolmod, "_LOOP_BATCHES", False)
    return str(request.param)


def mixed_script() -> dict[str | tuple[str, int], Any]:
    def rcpt(command: Command) -> bytes | None:
        return b"550 5.1.1 no such user\r\n" if "nobody@" in command.args else None

    def end(command: Command) -> Answer | None:
        if b"Subject: lost" in command.session.transactions[-1].content:
            return Answer(b"", then=CLOSE)  # gone after the final "."
        return None

    return {"RCPT": rcpt, ".": end}


def mixed_messages() -> list[bytes]:
    return [
        message("ok 0"),
        message("refused", to="nobody@example.org"),
        message("bad", to="not an address <"),
        message("lost"),
        message("ok 4"),
        message("ok 5"),
    ]


MIXED = ["sent", "refused", "not_sent", "unknown", "sent", "sent"]


def test_send_many_outcomes_in_order_with_every_status(batch_path: str) -> None:
    progress: list[tuple[int, int | None]] = []
    with (
        ScriptedServer(mixed_script(), capabilities=FAST) as server,
        smtplug.Pool(**options(server, max_connections=3)) as pool,
    ):
        outcomes = list(
            pool.send_many(
                mixed_messages(), progress=lambda done, total: progress.append((done, total))
            )
        )
    assert [o.message_index for o in outcomes] == list(range(6))
    assert [o.status for o in outcomes] == MIXED
    assert isinstance(outcomes[2].error, smtplug.InvalidInputError)
    assert isinstance(outcomes[3].error, smtplug.DeliveryUnknownError)
    assert outcomes[1].result is not None and outcomes[1].result[0].code == 550
    assert progress == [(n, 6) for n in range(1, 7)]
    assert sorted(subjects(server)) == ["lost", "ok 0", "ok 4", "ok 5"]


def test_async_send_many_outcomes_in_order_with_every_status() -> None:
    progress: list[tuple[int, int | None]] = []

    async def messages() -> AsyncIterator[bytes]:
        for item in mixed_messages():
            yield item

    async def main(server: ScriptedServer) -> list[smtplug.Outcome]:
        async with smtplug.AsyncPool(**options(server, max_connections=3)) as pool:
            return [
                o
                async for o in pool.send_many(
                    messages(), progress=lambda done, total: progress.append((done, total))
                )
            ]

    with ScriptedServer(mixed_script(), capabilities=FAST) as server:
        outcomes = asyncio.run(main(server))
    assert [o.message_index for o in outcomes] == list(range(6))
    assert [o.status for o in outcomes] == MIXED
    assert progress == [(n, None) for n in range(1, 7)]
    assert sorted(subjects(server)) == ["lost", "ok 0", "ok 4", "ok 5"]


def test_leaving_send_many_early_sends_nothing_more(batch_path: str) -> None:
    taken = itertools.count()

    def endless() -> Iterator[bytes]:
        for i in taken:
            yield message(f"m{i}")

    with ScriptedServer(capabilities=FAST) as server:
        with smtplug.Pool(**options(server, max_connections=2)) as pool:
            with contextlib.closing(pool.send_many(endless())) as outcomes:
                for outcome in outcomes:
                    if outcome.message_index == 2:
                        break
            sent = len(subjects(server))
            assert pool.sendmessage(message("after")).accepted
        server.wait_idle()
    ahead = poolmod.WINDOW * 2
    assert next(taken) <= 3 + ahead  # three handed out, at most the window ahead
    assert sent <= 3 + ahead
    assert len(subjects(server)) == sent + 1 and "after" in subjects(server)


def test_progress_is_called_just_before_each_outcome_is_handed_out(batch_path: str) -> None:
    # However many outcomes are ready together, progress(k) comes when k - 1
    # have been handed out, and the k-th follows.
    handed: list[smtplug.pool.Outcome] = []
    calls: list[tuple[int, int | None, int]] = []

    def progress(done: int, total: int | None) -> None:
        calls.append((done, total, len(handed)))

    with (
        ScriptedServer(capabilities=FAST) as server,
        smtplug.Pool(**options(server, max_connections=4)) as pool,
    ):
        for outcome in pool.send_many([message(f"m{i}") for i in range(40)], progress=progress):
            handed.append(outcome)
    assert calls == [(k, 40, k - 1) for k in range(1, 41)]
    assert [o.message_index for o in handed] == list(range(40))


def test_a_bug_in_a_callback_ends_the_batch(batch_path: str) -> None:
    def progress(done: int, total: int | None) -> None:
        if done == 2:
            raise RuntimeError("bug")

    with (
        ScriptedServer(capabilities=FAST) as server,
        smtplug.Pool(**options(server, max_connections=2)) as pool,
    ):
        seen = []
        with pytest.raises(RuntimeError, match="bug"):
            for outcome in pool.send_many((message(f"m{i}") for i in range(50)), progress=progress):
                seen.append(outcome.status)
        assert seen == ["sent"]
        assert pool.sendmessage(message("after")).accepted


# -- many threads, many tasks --------------------------------------------------------


def test_thread_safety_many_threads_on_one_pool() -> None:
    with ScriptedServer(capabilities=FAST) as server:
        with smtplug.Pool(**options(server, max_connections=4)) as pool:
            failures: list[BaseException] = []

            def sender(n: int) -> None:
                try:
                    for i in range(25):
                        assert pool.sendmessage(message(f"t{n}-{i}")).accepted
                except BaseException as exc:
                    failures.append(exc)

            threads = [threading.Thread(target=sender, args=(n,)) for n in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        server.wait_idle()
    assert failures == []
    got = subjects(server)
    assert len(got) == 400 and set(got) == {f"t{n}-{i}" for n in range(16) for i in range(25)}
    assert server.connections <= 4


def test_task_safety_many_tasks_on_one_async_pool() -> None:
    async def main(server: ScriptedServer) -> None:
        async with smtplug.AsyncPool(**options(server, max_connections=4)) as pool:

            async def sender(n: int) -> None:
                for i in range(8):
                    assert (await pool.sendmessage(message(f"t{n}-{i}"))).accepted

            await asyncio.gather(*(sender(n) for n in range(50)))
            assert pool.connections <= 4

    with ScriptedServer(capabilities=FAST) as server:
        asyncio.run(main(server))
        server.wait_idle()
    got = subjects(server)
    assert len(got) == 400 and set(got) == {f"t{n}-{i}" for n in range(50) for i in range(8)}
    assert server.connections <= 4
    assert all(s.verbs[-1] == "QUIT" for s in server.sessions)


def test_cancelled_tasks_give_their_connection_back() -> None:
    async def main(server: ScriptedServer) -> None:
        async with smtplug.AsyncPool(**options(server, max_connections=2)) as pool:
            tasks = [asyncio.ensure_future(pool.sendmessage(message(f"c{i}"))) for i in range(6)]
            await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for i in range(4):
                assert (await pool.sendmessage(message(f"after {i}"))).accepted

    with ScriptedServer(capabilities=FAST) as server:
        asyncio.run(main(server))
        server.wait_idle()
    assert [s for s in subjects(server) if s.startswith("after")] == [
        f"after {i}" for i in range(4)
    ]
    assert server.connections <= 2 + 2  # (a cancelled send's connection is never reused)


# -- memory -----------------------------------------------------------------------------

SINK = textwrap.dedent(
    r"""
    import asyncio, sys

    async def session(reader, writer):
        writer.write(b"220 sink ESMTP\r\n")
        count = 0
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-sink\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                count += 1
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        print(count, flush=True)
        writer.close()

    async def main():
        server = await asyncio.start_server(session, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
    """
)


@contextlib.contextmanager
def counting_sink() -> Iterator[tuple[int, list[int]]]:
    """A sink in a process of its own: its port, and after the block the
    messages each session delivered."""
    process = subprocess.Popen(
        [sys.executable, "-c", SINK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdin is not None
    counts: list[int] = []
    try:
        yield int(process.stdout.readline()), counts
    finally:
        out, _ = process.communicate("", timeout=30)
        counts.extend(int(line) for line in out.split())


def test_10000_messages_from_a_generator_in_flat_memory(batch_path: str) -> None:
    def messages() -> Iterator[bytes]:
        for i in range(10_000):
            yield message(f"m{i}")

    with (
        counting_sink() as (port, counts),
        smtplug.Pool(
            servers="127.0.0.1", ports=port, usetls=False, timeout=30, max_connections=8
        ) as pool,
    ):
        pool.sendmessage(message("warm-up"))  # imports, first connection
        statuses: dict[str, int] = {}
        tracemalloc.start()
        try:
            for outcome in pool.send_many(messages()):
                statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert statuses == {"sent": 10_000}
    assert sum(counts) == 10_001
    # Bounded by the window, not the batch: 10 000 messages or outcomes kept
    # would take several megabytes.
    assert peak < 2 * 1024 * 1024, peak


def test_send_many_takes_messages_only_a_window_ahead(batch_path: str) -> None:
    taken = 0
    ahead: list[int] = []

    def messages() -> Iterator[bytes]:
        nonlocal taken
        for i in range(200):
            taken += 1
            yield message(f"m{i}")

    with (
        ScriptedServer(capabilities=FAST) as server,
        smtplug.Pool(**options(server, max_connections=3)) as pool,
    ):
        for handed, _ in enumerate(pool.send_many(messages()), start=1):
            ahead.append(taken - handed)
    assert max(ahead) <= poolmod.WINDOW * 3
    assert len(subjects(server)) == 200


# -- send_many's workers ------------------------------------------------------------------


@pytest.mark.parametrize("batched", [True, False])
def test_workers_hand_out_in_order_whatever_order_sends_end_in(batched: bool) -> None:
    # The sends end last first: the consumer, waiting for the first, is
    # woken (batched: only once the queue is low or nothing is in flight).
    count = 12
    ends = [threading.Event() for _ in range(count)]

    def run(index: int, message: object) -> smtplug.Outcome:
        assert ends[index].wait(timeout=60)
        if message == "bug":
            raise RuntimeError("a bug in a callback")
        return smtplug.Outcome(index, None, smtplug.InvalidInputError(f"m{index}"))

    workers = poolmod._Workers(run, 4, batched=batched)
    for index in range(count):
        workers.put(index, "bug" if index == count - 1 else f"m{index}")
    got: list[object] = []

    def consume() -> None:
        for index in range(count):
            try:
                got.append(workers.take(index).message_index)
            except RuntimeError as exc:
                got.append(str(exc))

    consumer = threading.Thread(target=consume)
    consumer.start()
    for step in range(0, count, 4):  # four in flight at a time, the last of them first
        for index in reversed(range(step, step + 4)):
            ends[index].set()
    consumer.join(timeout=60)
    assert not consumer.is_alive()
    workers.stop()
    assert got == [*range(count - 1), "a bug in a callback"]


# -- send_many on an event loop of its own --------------------------------------------------


def test_a_batch_runs_in_the_consuming_thread_alone() -> None:
    # The batch on its own loop: no worker thread, no executor (an IP literal:
    # no name to resolve); the threads' path starts one per connection.
    seen: list[int] = []
    with ScriptedServer(capabilities=FAST) as server, smtplug.Pool(**options(server)) as pool:
        before = threading.active_count()
        for _ in pool.send_many(message(f"m{i}") for i in range(40)):
            seen.append(threading.active_count())
    assert max(seen) == before
    assert sorted(subjects(server)) == sorted(f"m{i}" for i in range(40))


def test_a_batch_holds_the_connections_it_uses_and_gives_them_back() -> None:
    # While a batch runs, a sender in another thread gets no connection of the
    # batch's (so max_connections holds over both); it sends once the batch ends.
    started = threading.Event()
    sent: list[smtplug.SendResult] = []
    with (
        ScriptedServer(capabilities=FAST) as server,
        smtplug.Pool(**options(server, max_connections=2)) as pool,
    ):

        def other() -> None:
            started.set()
            sent.append(pool.sendmessage(message("other")))

        thread = threading.Thread(target=other)
        outcomes = []
        for outcome in pool.send_many(message(f"m{i}") for i in range(10)):
            outcomes.append(outcome)
            if len(outcomes) == 1:
                thread.start()
                started.wait(10)
            assert not sent  # (the batch holds both connections)
        thread.join(30)
    assert [o.status for o in outcomes] == ["sent"] * 10
    assert [r.accepted for r in sent] == [True]
    assert sorted(subjects(server)) == sorted([*(f"m{i}" for i in range(10)), "other"])


def test_closing_the_pool_during_a_batch_ends_it() -> None:
    # Pool.close() from another thread: the messages in flight end, the others
    # are not sent (the closed pool's error), and nothing hangs.
    with ScriptedServer(capabilities=FAST) as server:
        pool = smtplug.Pool(**options(server, max_connections=2))
        outcomes = []
        for outcome in pool.send_many(message(f"m{i}") for i in range(30)):
            outcomes.append(outcome)
            if len(outcomes) == 3:
                closer = threading.Thread(target=pool.close)
                closer.start()
                closer.join(30)
        server.wait_idle()
    statuses = [o.status for o in outcomes]
    assert len(outcomes) == 30
    assert statuses[:3] == ["sent"] * 3 and "not_sent" in statuses
    first_unsent = statuses.index("not_sent")
    assert set(statuses[first_unsent:]) == {"not_sent"}
    for o in outcomes[first_unsent:]:
        assert isinstance(o.error, smtplug.InvalidInputError) and "closed" in str(o.error)
    assert len(subjects(server)) == first_unsent  # the sent ones, each once
    assert pool.connections == 0


def test_a_batch_inside_a_running_event_loop_uses_worker_threads() -> None:
    # A blocking send_many called from a coroutine (it blocks that loop, as
    # any blocking call does) cannot run a loop of its own: it uses threads.
    async def main(pool: smtplug.Pool) -> list[str]:
        return [o.status for o in pool.send_many(message(f"m{i}") for i in range(6))]

    with ScriptedServer(capabilities=FAST) as server, smtplug.Pool(**options(server)) as pool:
        statuses = asyncio.run(main(pool))
    assert statuses == ["sent"] * 6
    assert sorted(subjects(server)) == sorted(f"m{i}" for i in range(6))


def test_closing_an_async_pool_during_its_batch_gives_outcomes() -> None:
    # The messages not started when the pool closes are outcomes (the closed
    # pool's error), as with Pool: the batch does not end in an exception.
    async def main(port: int) -> list[smtplug.pool.Outcome]:
        pool = smtplug.AsyncPool(**options_for(port, max_connections=2))
        outcomes = []
        async for outcome in pool.send_many(message(f"m{i}") for i in range(20)):
            outcomes.append(outcome)
            if len(outcomes) == 3:
                await pool.close()
        return outcomes

    with ScriptedServer(capabilities=FAST) as server:
        outcomes = asyncio.run(main(server.port))
        server.wait_idle()  # (what the closed pool sent is all read before it is counted)
    statuses = [o.status for o in outcomes]
    assert len(outcomes) == 20 and statuses[:3] == ["sent"] * 3
    first_unsent = statuses.index("not_sent")
    assert set(statuses[first_unsent:]) == {"not_sent"}
    assert len(subjects(server)) == first_unsent


def options_for(port: int, **more: Any) -> dict[str, Any]:
    return {"servers": "127.0.0.1", "ports": port, "usetls": False, "timeout": 5, **more}
