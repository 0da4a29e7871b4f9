"""Adversarial cases of the chained flights of the pools (tests/test_chained_flights.py
has the main ones): a message's end carries the next waiting sender's MAIL,
RCPT and DATA. Each case here is one where a path around that hand-over once
broke the promise of the outcomes: a message reported sent only on the 250
to its own end, not sent only when the server cannot have it, unknown
otherwise; no reply paired with the wrong command, no connection left with
replies due.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import smtplug
from scripted import subjects
from smtplug import pool as poolmod
from smtplug import retry as retrymod
from smtplug.testing import ScriptedServer
from test_chained_flights import FAST, chained, message, options


def spy_chain(monkeypatch: pytest.MonkeyPatch, after: Any) -> list[bool]:
    """Wrap AsyncPool._chain: ``after(flight)`` runs once it chose (or not)."""
    flights: list[bool] = []
    chain = poolmod.AsyncPool._chain

    def spy(self: Any, slot: Any, capabilities: Any) -> Any:
        flight = chain(self, slot, capabilities)
        flights.append(flight is not None)
        after(flight)
        return flight

    monkeypatch.setattr(poolmod.AsyncPool, "_chain", spy)
    return flights


# -- the message before fails after the next one was chosen -----------------------------


def test_a_deadline_run_out_before_the_end_was_written_is_not_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deadline of m0 runs out just as its end is to be written, after
    m1's flight was chosen to go behind it: the end is never written, so m0
    was not sent (DeadlineExceededError), not "delivery unknown" as when the
    write itself fails half way."""
    now = [1000.0]
    monkeypatch.setattr(retrymod, "_clock", lambda: now[0])

    def late(flight: Any) -> None:
        if flight is not None:
            now[0] += 100  # (past m0's deadline: its last write is not made)

    flights = spy_chain(monkeypatch, late)

    async def main(server: ScriptedServer) -> list[Any]:
        async with smtplug.AsyncPool(**options(server)) as pool:
            first = asyncio.ensure_future(pool.sendmessage(message("m0"), deadline=30))
            second = asyncio.ensure_future(pool.sendmessage(message("m1")))
            return await asyncio.gather(first, second, return_exceptions=True)

    with ScriptedServer(capabilities=FAST) as server:
        first, second = asyncio.run(main(server))
        server.wait_idle()
    assert flights[0] is True
    assert isinstance(first, smtplug.DeadlineExceededError), repr(first)
    assert smtplug.Outcome(0, None, first).status == "not_sent"
    assert second.accepted
    assert subjects(server) == ["m1"]
    assert b"Subject: m0" not in server.sessions[0].received


# -- the connection's limits --------------------------------------------------------------


def test_a_connection_past_its_lifetime_carries_no_chained_message(
    pieces: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """m0 opens the connection, and its DATA takes longer than max_lifetime
    (a fake clock, moved by the server before its 354): the connection is
    spent at m0's end, so m1's flight must not go behind it; m1 goes on a
    fresh connection, as it does without chaining."""
    now = [1000.0]
    monkeypatch.setattr(poolmod, "_clock", lambda: now[0])

    def data(command: Any) -> None:
        if command.occurrence == 1:
            now[0] += 20  # (m0's DATA answered 20 s later: past the lifetime)

    with ScriptedServer({"DATA": data}, capabilities=FAST) as server:

        async def main() -> list[Any]:
            async with smtplug.AsyncPool(**options(server, max_lifetime=10)) as pool:
                tasks = [asyncio.ensure_future(pool.sendmessage(message(s))) for s in ("m0", "m1")]
                return await asyncio.gather(*tasks, return_exceptions=True)

        results = asyncio.run(main())
        server.wait_idle()
    assert all(isinstance(r, smtplug.SendResult) and r.accepted for r in results), results
    assert chained(pieces) == 0
    assert [sum(t.complete for t in s.transactions) for s in server.sessions] == [1, 1]
