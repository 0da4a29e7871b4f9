"""Chaos soak: random faults between smtplug and a strict recording server.

Each case sends messages through :class:`chaos.ChaosProxy` (cuts, stalls,
unsolicited 421s) to :class:`chaos.ChaosServer` (random refusals, 421 that
closes), then one clean message with the faults off, and checks the promise
of every report against what the server stored (see ``tests/chaos.py``).

The default run sends ``DEFAULT_PER_CASE`` messages per case and API. A larger run:
``SMTPLUG_CHAOS_MESSAGES=10000`` (the total over all cases, split evenly);
``SMTPLUG_CHAOS_REPORT=path`` appends each case's summary to that file.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket

import pytest

import chaos
from apis import both_apis
from chaos import RETRY_SCENARIOS, SCENARIOS, Delivery, Report, Scenario

pytestmark = both_apis

SEEDS = [1, 2, 3]
#: Per case and API: both APIs run every case (with seeds of their own, so
#: together they see more fault patterns than one API with more messages).
DEFAULT_PER_CASE = 15
CASES = [(scenario, seed) for scenario in SCENARIOS for seed in SEEDS]
#: With retry on (and a deadline): one seed per scenario, unknown="fail" and
#: unknown="retry" in turn (seeds whose faults fire, for both APIs).
CASES += [
    (scenario, 5 if (scenario.mode, scenario.transfer) == ("kept", "bdat") else 4)
    for scenario in RETRY_SCENARIOS
]


def _per_case() -> int:
    total = os.environ.get("SMTPLUG_CHAOS_MESSAGES")
    if total is None:
        return DEFAULT_PER_CASE
    return max(1, -(-int(total) // len(CASES)))


@pytest.mark.parametrize(
    ("scenario", "seed"), CASES, ids=[f"{s.name}-seed{seed}" for s, seed in CASES]
)
def test_chaos(scenario: Scenario, seed: int, api: str) -> None:
    if api == "asyncio":
        # Seeds of its own (each case must see a fault fire: these do).
        seed += 20
    # A pool's batch spreads its messages over connections of a few messages
    # each, in an order of its own: twice the messages, so that faults fire.
    messages = _per_case() * (2 if scenario.mode == "pool" else 1)
    outcome = chaos.run(scenario, seed, messages, api=api)
    summary = outcome.summary()
    print(summary)
    path = os.environ.get("SMTPLUG_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as report:
            report.write(summary + "\n")
    if outcome.violations:
        pytest.fail(summary, pytrace=False)
    assert outcome.fired, "no fault fired: the run proves nothing"
    assert len(outcome.reports) == outcome.messages + 1


# --- the checker can fail ---------------------------------------------------------------


def _delivery(chaos_id: int | None, body: bytes, rcpts: tuple[str, ...] = ("a@x",)) -> Delivery:
    head = b"" if chaos_id is None else f"X-Chaos-Id: {chaos_id}\r\n".encode()
    sender = chaos.sender(chaos_id or 0)
    return Delivery(0, chaos_id, head + b"\r\n" + body, list(rcpts), sender)


def test_checker_accepts_true_reports() -> None:
    bodies = {1: b"one\r\n", 2: b"two\r\n", 3: b"three\r\n", 4: b"four\r\n"}
    reports = [
        Report(1, "sent", "", ("a@x",)),
        Report(2, "not sent", ""),
        Report(3, "unknown", ""),
        Report(4, "unknown", ""),
    ]
    deliveries = [_delivery(1, b"one\r\n"), _delivery(4, b"four\r\n")]
    assert chaos.check(reports, deliveries, bodies) == []


def test_checker_accepts_flagged_retries() -> None:
    """With unknown="retry": a flagged "sent" may be stored more than once,
    an "unknown" up to once per attempt."""
    bodies = {1: b"one\r\n", 2: b"two\r\n"}
    reports = [
        Report(1, "sent", "", ("a@x",), flagged=True),
        Report(2, "unknown", "", at_most=3),
    ]
    deliveries = [_delivery(1, b"one\r\n")] * 2 + [_delivery(2, b"two\r\n")] * 3
    assert chaos.check(reports, deliveries, bodies) == []
    # The attempt that ended unknown had one recipient refused for now; its
    # end was stalled and reached the server after the retry's copy.
    both = Report(1, "sent", "", ("a@x", "b@x"), flagged=True)
    late = [_delivery(1, b"one\r\n", ("a@x", "b@x")), _delivery(1, b"one\r\n")]
    assert chaos.check([both], late, {1: b"one\r\n"}) == []
    # Not flagged, or no copy for the recipients it names: a violation.
    assert chaos.check([dataclasses.replace(both, flagged=False)], late, {1: b"one\r\n"})
    assert chaos.check([both], [late[1]], {1: b"one\r\n"})


@pytest.mark.parametrize(
    ("report", "deliveries", "flagged"),
    [
        (Report(1, "sent", "fake result", ("a@x",)), [], "0 copies"),
        (Report(1, "sent", "", ("a@x",)), [_delivery(1, b"one\r\n")] * 2, "2 copies"),
        (Report(1, "not sent", ""), [_delivery(1, b"one\r\n")], "reported not sent"),
        (Report(1, "unknown", ""), [_delivery(1, b"one\r\n")] * 2, "server has 2"),
        (Report(1, "sent", "", ("a@x",), flagged=True), [], "0 copies"),
        (Report(1, "unknown", "", at_most=2), [_delivery(1, b"one\r\n")] * 3, "server has 3"),
        (Report(1, "escaped", "KeyError"), [], "non-SMTPError escaped"),
        (Report(1, "sent", "", ("a@x",)), [_delivery(1, b"two\r\n")], "other octets"),
        (Report(1, "sent", "", ("b@x",)), [_delivery(1, b"one\r\n")], "has it for"),
        (Report(1, "not sent", ""), [_delivery(None, b"junk\r\n")], "not one of the messages"),
        (
            Report(1, "sent", "", ("a@x",)),
            [dataclasses.replace(_delivery(1, b"one\r\n"), sender="chaos2@example.com")],
            "another transaction's envelope",
        ),
        (
            Report(1, "not sent", "", errors=("ConnectError", "ProtocolError")),
            [],
            "a ProtocolError",
        ),
    ],
    ids=[
        "sent-missing",
        "sent-twice",
        "not-sent-stored",
        "unknown-twice",
        "flagged-missing",
        "unknown-past-attempts",
        "escaped",
        "mixed-octets",
        "wrong-rcpts",
        "junk-stored",
        "wrong-envelope",
        "protocol-error",
    ],
)
def test_checker_flags_a_false_report(
    report: Report, deliveries: list[Delivery], flagged: str
) -> None:
    violations = chaos.check([report], deliveries, {1: b"one\r\n"})
    assert len(violations) == 1, violations
    assert flagged in str(violations[0])


def test_a_lying_client_is_caught_end_to_end() -> None:
    """The whole harness, with every report turned into its opposite: what
    the server stored now contradicts a "not sent", and a "sent" for a
    message never stored is flagged."""

    def lie(report: Report) -> Report:
        opposite = "not sent" if report.kind == "sent" else "sent"
        return Report(report.chaos_id, opposite, "a lie", report.recipients, report.links)

    outcome = chaos.run(Scenario("kept", "bdat", True), 7, 8, lie=lie)
    texts = [str(v) for v in outcome.violations]
    assert any("reported not sent" in t and "the server has 1" in t for t in texts), texts
    assert any("clean send after the faults failed" in t for t in texts), texts


def test_the_proxy_injects_faults() -> None:
    """The plans hold every kind of fault, in both directions and around the
    ends of messages: the soak is not a pass-through."""
    rng = random.Random(0)
    faults = [f for _ in range(200) for f in chaos.draw_plan(rng, 0.5, kept=False)]
    assert {f.kind for f in faults} == {"cut", "stall", "inject"}
    assert {f.direction for f in faults if f.kind == "cut"} == {"c2s", "s2c"}
    assert any(f.end is not None for f in faults if f.kind == "cut")
    assert any(f.duration > 0.5 for f in faults if f.kind == "stall")
    assert any(f.duration < 0.5 for f in faults if f.kind == "stall")
    outcome = chaos.run(Scenario("oneshot", "data", True), 1, 20)
    assert {kind.split()[0] for kind in outcome.fired} == {"cut", "stall", "inject"}
    assert outcome.counts.get("not sent", 0) + outcome.counts.get("unknown", 0) > 0


def test_a_leaked_socket_is_caught() -> None:
    """The descriptor count before and after a run sees a socket left open."""
    leaked: list[socket.socket] = []

    def leak(report: Report) -> Report:
        if not leaked:
            leaked.append(socket.socket())
        return report

    try:
        outcome = chaos.run(Scenario("oneshot", "data", False), 1, 3, lie=leak)
    finally:
        for sock in leaked:
            sock.close()
    assert any("file descriptors" in str(v) for v in outcome.violations), outcome.violations
