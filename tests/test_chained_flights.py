"""An AsyncPool (and Pool.send_many, which runs on one) writes the next
message's MAIL, RCPT and DATA behind the end of the message before it on the
same connection (RFC 2920 section 3.1): one write and one wait per message.

What is checked here, against ScriptedServer: that the flight really rides
behind the end (the server reads both in one piece), and that every outcome
stays truthful when either message fails: the first is sent only on its own
250; the second is never lost or doubled when the connection breaks between
them, never reset by an RSET meant for the first, and not sent at all when
its sender is cancelled after its commands went (its connection is closed
before any body). With a retry policy, a message count or a rate limit that
says "not now", nothing is chained.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import smtplug
from scripted import subjects
from smtplug import pool as poolmod
from smtplug.testing import CLOSE, Answer, Command, ScriptedServer
from test_pool import FAST, message
from test_pool import options as pool_options

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
CHAINED = b"\r\n.\r\nMAIL FROM:"


def options(server: ScriptedServer, **more: Any) -> dict[str, Any]:
    """test_pool's options, with one connection unless a test says otherwise."""
    return pool_options(server, **{"max_connections": 1, **more})


def chained(pieces: list[bytes]) -> int:
    """How many reads held a message's end and the next MAIL together."""
    return sum(piece.count(CHAINED) for piece in pieces)


def concurrently(server: ScriptedServer, subjects_: list[str], **more: Any) -> list[Any]:
    """``AsyncPool.sendmessage`` of each message in a task of its own, all
    started at once (so that all but the first wait for the one connection,
    in order): the results, or the errors."""

    async def main() -> list[Any]:
        async with smtplug.AsyncPool(**options(server, **more)) as pool:
            tasks = [asyncio.ensure_future(pool.sendmessage(message(s))) for s in subjects_]
            return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(main())


def verbs(session: Any) -> list[str]:
    return [command.verb for command in session.commands]


# -- the flight rides behind the end ----------------------------------------------------


def test_each_message_end_carries_the_next_transaction(pieces: list[bytes]) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        results = concurrently(server, [f"m{i}" for i in range(5)])
        server.wait_idle()
    assert all(isinstance(r, smtplug.SendResult) and r.accepted for r in results)
    assert subjects(server) == [f"m{i}" for i in range(5)]
    assert len(server.sessions) == 1
    assert chained(pieces) == 4
    # No RSET, no probe, one DATA each: the commands are those of five
    # transactions back to back.
    assert verbs(server.sessions[0]) == [
        "EHLO",
        *(["MAIL", "RCPT", "DATA", "."] * 5),
        "QUIT",
    ]


def test_send_many_chains_on_both_paths_of_the_pool(pieces: list[bytes]) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        with smtplug.Pool(**options(server, max_connections=2)) as pool:
            outcomes = list(pool.send_many(message(f"m{i}") for i in range(40)))
        server.wait_idle()
    assert [o.status for o in outcomes] == ["sent"] * 40
    assert sorted(subjects(server)) == sorted(f"m{i}" for i in range(40))
    assert chained(pieces) >= 10  # (how many depends on when the next one is ready)


def test_each_transcript_holds_its_own_commands_in_order() -> None:
    with ScriptedServer(capabilities=FAST) as server:
        results = concurrently(server, ["m0", "m1", "m2"], transcript=True)
    transaction = [
        "--> MAIL FROM:<alice@example.com>",
        "--> RCPT TO:<bob@example.org>",
        "--> DATA",
        "<-- 250 2.1.0 OK",
        "<-- 250 2.1.5 OK",
        "<-- 354 End data with <CR><LF>.<CR><LF>",
        "--> <message: 137 octets>",
        "<-- 250 2.0.0 OK: queued",
    ]
    assert list(results[0].transcript[-8:]) == transaction
    # The next two went behind the end of the one before: their transcripts
    # are their own transactions, the commands told before their replies.
    assert [list(r.transcript) for r in results[1:]] == [transaction, transaction]


def test_observers_are_told_of_each_command_before_its_reply() -> None:
    seen: list[str] = []

    class Watch:
        @smtplug.hookimpl
        def smtplug_on_command(self, command: str) -> None:
            seen.append(f"C {command.split(' ', 1)[0]}")

        @smtplug.hookimpl
        def smtplug_on_reply(self, reply: Any) -> None:
            seen.append(f"S {reply.code}")

    with ScriptedServer(capabilities=FAST) as server:
        results = concurrently(server, ["m0", "m1"], plugins=[Watch()])
    assert all(r.accepted for r in results)
    once = ["C MAIL", "C RCPT", "C DATA", "S 250", "S 250", "S 354", "C <message:", "S 250"]
    assert seen == ["S 220", "C EHLO", "S 250", *once, *once, "C QUIT", "S 221"]


# -- outcomes when one of the two fails -------------------------------------------------


def end_rule(fail: dict[str, Answer]) -> Any:
    """A rule for ".": the answer in ``fail`` for the message of that Subject."""

    def end(command: Command) -> Answer | None:
        content = command.session.transactions[-1].content
        for subject, answer in fail.items():
            if f"Subject: {subject}\r\n".encode() in content:
                return answer
        return None

    return end


def test_a_refused_end_leaves_the_next_message_alone(pieces: list[bytes]) -> None:
    rule = end_rule({"m1": Answer(b"554 5.7.1 rejected\r\n")})
    with ScriptedServer({".": rule}, capabilities=FAST) as server:
        results = concurrently(server, ["m0", "m1", "m2"])
        server.wait_idle()
    assert results[0].accepted and results[2].accepted
    assert isinstance(results[1], smtplug.ResponseError) and results[1].code == 554
    assert subjects(server) == ["m0", "m1", "m2"]  # (m1: complete, then refused)
    # No RSET after the refusal: it would have reset m2's transaction.
    assert len(server.sessions) == 1 and "RSET" not in verbs(server.sessions[0])
    assert chained(pieces) == 2


@pytest.mark.parametrize(
    "answer",
    [
        Answer(b"421 4.3.2 shutting down\r\n", then=CLOSE),
        Answer(b"", then=CLOSE),
    ],
    ids=["421", "closed"],
)
def test_a_connection_lost_at_the_end_moves_the_next_message(
    answer: Answer, pieces: list[bytes]
) -> None:
    rule = end_rule({"m1": answer})
    with ScriptedServer({".": rule}, capabilities=FAST) as server:
        results = concurrently(server, ["m0", "m1", "m2"])
        server.wait_idle()
    assert results[0].accepted and results[2].accepted
    if answer.data:
        # The server refused the end, for now: it cannot have the message.
        assert isinstance(results[1], smtplug.ResponseError) and results[1].code == 421
    else:
        assert isinstance(results[1], smtplug.DeliveryUnknownError)
    # m2's commands were on the first connection; its message went once, on
    # the second.
    assert subjects(server) == ["m0", "m1", "m2"]
    assert len(server.sessions) == 2
    assert [t.complete for t in server.sessions[1].transactions] == [True]
    assert chained(pieces) == 2  # (m2's commands went behind m1's end)


def test_a_refused_mail_of_the_chained_message_is_its_own_outcome(pieces: list[bytes]) -> None:
    def mail(command: Command) -> bytes | None:
        return b"451 4.3.0 try later\r\n" if command.occurrence == 2 else None

    with ScriptedServer({"MAIL": mail}, capabilities=FAST) as server:
        results = concurrently(server, ["m0", "m1", "m2"])
        server.wait_idle()
    assert results[0].accepted and results[2].accepted
    assert isinstance(results[1], smtplug.ResponseError)
    assert results[1].code == 451 and results[1].command == "MAIL"
    assert subjects(server) == ["m0", "m2"]
    # The scripted server answers the DATA behind a refused MAIL with 354: a
    # transaction smtplug did not make, so that connection is dropped, not
    # ended with "." (m2 goes on a fresh one).
    assert len(server.sessions) == 2
    assert [t.complete for t in server.sessions[0].transactions] == [True, False]
    assert chained(pieces) == 1  # (m1's; m1 never came to an end to carry m2's)


def test_a_refused_recipient_of_the_chained_message_is_reset() -> None:
    def rcpt(command: Command) -> bytes | None:
        return b"550 5.1.1 no such user\r\n" if "nobody@" in command.args else None

    async def main(server: ScriptedServer) -> list[Any]:
        async with smtplug.AsyncPool(**options(server)) as pool:
            return await asyncio.gather(
                pool.sendmessage(message("m0")),
                pool.sendmessage(message("m1", to="nobody@example.org")),
                pool.sendmessage(message("m2")),
            )

    with ScriptedServer({"RCPT": rcpt}, capabilities=FAST) as server:
        results = asyncio.run(main(server))
        server.wait_idle()
    assert results[0].accepted and results[2].accepted
    assert not results[1].accepted and results[1][0][1] == 550
    assert subjects(server) == ["m0", "m2"]
    assert len(server.sessions) == 1
    assert verbs(server.sessions[0]).count("RSET") == 1


def test_a_sender_cancelled_after_its_commands_went_sends_nothing() -> None:
    release = threading.Event()

    def end(command: Command) -> Answer | None:
        if b"Subject: m0\r\n" in command.session.transactions[-1].content:
            # (Holds the server's loop: one connection here.) No bound: one
            # would answer m0 on its own after it, however far the test got.
            release.wait()
        return None

    async def main(server: ScriptedServer) -> tuple[Any, Any, Any]:
        async with smtplug.AsyncPool(**options(server)) as pool:
            first = asyncio.ensure_future(pool.sendmessage(message("m0")))
            second = asyncio.ensure_future(pool.sendmessage(message("m1")))
            slot = None
            loop = asyncio.get_running_loop()
            bound = loop.time() + 30  # (only turns a hang into a failure)
            while slot is None or slot.follower is None:
                assert loop.time() < bound, "m1's flight never went out"
                await asyncio.sleep(0.002)
                slot = next(iter(pool._slots.all), None)
            # m1's flight is out (the client's own state), m0's end unanswered.
            second.cancel()
            # The cancel is taken before m0's 250 can come: m1 ends cancelled.
            await asyncio.wait({second})
            release.set()
            done = await asyncio.gather(first, second, return_exceptions=True)
            after = await pool.sendmessage(message("m2"))
            return done[0], done[1], after

    with ScriptedServer({".": end}, capabilities=FAST) as server:
        try:
            first, second, after = asyncio.run(main(server))
        finally:
            release.set()
        server.wait_idle()
    assert first.accepted and after.accepted
    assert isinstance(second, asyncio.CancelledError)
    assert subjects(server) == ["m0", "m2"]
    # m1's MAIL reached the first connection, which was closed before its body.
    assert [t.complete for t in server.sessions[0].transactions] == [True, False]
    assert len(server.sessions) == 2


# -- when nothing is chained ------------------------------------------------------------


def test_nothing_is_chained_behind_a_message_that_may_be_retried(pieces: list[bytes]) -> None:
    rule = end_rule({"m1": Answer(b"451 4.3.0 try again\r\n")})
    fired: list[int] = []

    def end(command: Command) -> Answer | None:
        if not fired:
            answer = rule(command)
            if answer is not None:
                fired.append(1)
            return answer
        return None

    with ScriptedServer({".": end}, capabilities=FAST) as server:
        results = concurrently(
            server,
            ["m0", "m1", "m2"],
            retry=smtplug.Retry(attempts=2, backoff=0.01, jitter=False),
        )
        server.wait_idle()
    assert all(r.accepted for r in results)
    assert subjects(server) == ["m0", "m1", "m1", "m2"]
    assert chained(pieces) == 0


def test_a_connection_carries_no_more_than_its_message_count(pieces: list[bytes]) -> None:
    with ScriptedServer(capabilities=FAST) as server:
        results = concurrently(server, [f"m{i}" for i in range(5)], max_messages_per_connection=2)
        server.wait_idle()
    assert all(r.accepted for r in results)
    assert [sum(t.complete for t in s.transactions) for s in server.sessions] == [2, 2, 1]
    assert all(s.verbs[-1] == "QUIT" for s in server.sessions)
    assert chained(pieces) == 2


def test_a_rate_limit_that_says_wait_chains_nothing(
    pieces: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(poolmod, "_clock", lambda: now[0])

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    monkeypatch.setattr(poolmod, "_async_sleep", sleep)
    with ScriptedServer(capabilities=FAST) as server:
        results = concurrently(server, ["m0", "m1", "m2"], rate_limit=10)
        server.wait_idle()
    assert all(r.accepted for r in results)
    assert chained(pieces) == 0
    assert now[0] >= 1000.2  # (each waited its turn)


def test_a_rate_limit_with_room_chains(
    pieces: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(poolmod, "_clock", lambda: now[0])
    with ScriptedServer(capabilities=FAST) as server:
        results = concurrently(server, ["m0", "m1", "m2"], rate_limit=10, rate_burst=3)
        server.wait_idle()
    assert all(r.accepted for r in results)
    assert chained(pieces) == 2


def test_a_server_without_pipelining_gets_no_chain(pieces: list[bytes]) -> None:
    with ScriptedServer(capabilities=["8BITMIME"]) as server:
        results = concurrently(server, ["m0", "m1", "m2"])
        server.wait_idle()
    assert all(r.accepted for r in results)
    assert chained(pieces) == 0


# -- against Postfix's smtp-sink --------------------------------------------------------


@pytest.mark.skipif(
    not os.path.exists("/usr/sbin/smtp-sink"), reason="needs Postfix's smtp-sink (postfix)"
)
@pytest.mark.parametrize("kind", ["Pool", "AsyncPool"])
def test_a_batch_to_smtp_sink_is_chained_and_counted(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postfix's smtp-sink (PIPELINING, no CHUNKING) receives every message of
    a batch once (its own counters say so), most of them behind the end of
    the one before."""
    sys.path.insert(0, str(BENCH))
    import sink as sinkmod

    flights: list[bool] = []
    may_follow = poolmod.AsyncPool._may_follow  # (where every chained flight is decided)

    def spy(self: Any, *args: Any) -> Any:
        flight = may_follow(self, *args)
        flights.append(flight is not None)
        return flight

    monkeypatch.setattr(poolmod.AsyncPool, "_may_follow", spy)
    count = 400
    with sinkmod.running_sink() as sink:
        target = {
            "servers": sink.host,
            "ports": sink.port,
            "usetls": False,
            "timeout": 10,
            "client": "localhost",
            "max_connections": 4,
        }
        batch = (message(f"s{i}") for i in range(count))
        if kind == "Pool":
            with smtplug.Pool(**target) as pool:
                outcomes = list(pool.send_many(batch))
        else:

            async def main() -> list[smtplug.Outcome]:
                async with smtplug.AsyncPool(**target) as pool:
                    return [o async for o in pool.send_many(batch)]

            outcomes = asyncio.run(main())
        counters = sink.wait_for(lambda c: c.messages >= count, 10)
    assert [o.status for o in outcomes] == ["sent"] * count
    assert counters.messages == count and counters.quits <= 4  # (sessions: its probe too)
    assert sum(flights) >= count // 2, (sum(flights), len(flights))
