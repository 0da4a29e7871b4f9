"""The two drivers run the same programs: same actions, same order, same outcome.

Each scenario is one scripted conversation (failover, refusals, a lost
connection, a kept session going stale, STARTTLS). Its program
(``Conduct.send``, then ``Conduct.close``) runs once under the blocking
driver and once under the asyncio driver; a recorder between program and
driver notes every action yielded, every result sent back (a reply's code, a
probe's answer) and every error thrown in. The two records must be equal,
and so must the outcomes. A driver that decided anything itself (read a reply
early, retried, swallowed an error) would show up as a difference.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Generator
from email.message import EmailMessage
from typing import Any

import pytest

from smtplug.actions import Close, Open, Poll, Probe, Receive, Send, Upgrade
from smtplug.api import prepare, setup
from smtplug.drivers.aio import AsyncDriver
from smtplug.drivers.blocking import BlockingDriver
from smtplug.options import ClientOptions, MessageOptions
from smtplug.program import Conduct
from smtplug.protocol import Reply
from smtplug.testing import CLOSE, Answer, ScriptedServer
from smtplug.wire import Wire
from tlsfixtures import server_context, tls_ca, write_files


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org, carol@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = "<fixed@example.com>"
    msg["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    msg.set_content("the same for both drivers\n")
    return msg


def describe(action: object) -> tuple[Any, ...]:
    if isinstance(action, Send):
        return ("send", action.display, action.replies_due, len(action.data))
    if isinstance(action, Receive):
        return ("receive", action.command)
    if isinstance(action, Open):
        return ("open", action.info.server, action.info.port)
    if isinstance(action, Close | Poll | Probe | Upgrade):
        return (type(action).__name__.lower(),)
    raise AssertionError(f"unexpected action {action!r}")


def outcome_of(value: object) -> object:
    if isinstance(value, Reply):
        return ("reply", value.code)
    if isinstance(value, Wire):
        return ("wire", value.info.server, value.info.port, value.info.tls)
    return value


def recorded(program: Generator[Any, Any, Any], log: list[tuple[Any, ...]]) -> Any:
    """``program``, with every action, result and thrown error noted in ``log``."""
    try:
        action = next(program)
        while True:
            log.append(describe(action))
            try:
                result = yield action
            except Exception as exc:
                log.append(("thrown", type(exc).__name__, getattr(exc, "code", None)))
                action = program.throw(exc)
            else:
                log.append(("result", outcome_of(result)))
                action = program.send(result)
    except StopIteration as stop:
        return stop.value


def conduct_and_drivers(options: dict[str, Any]) -> tuple[Conduct, BlockingDriver, AsyncDriver]:
    built = setup(ClientOptions(**options))
    plan = built.plan
    assert plan.async_transport is not None
    conduct = Conduct(plan, built.observers)
    blocking = BlockingDriver(
        plan.transport, plan.transport_options, built.observers, plan.tls_sessions
    )
    aio = AsyncDriver(
        plan.async_transport, plan.transport_options, built.observers, plan.tls_sessions
    )
    return conduct, blocking, aio


def same_ports(record: object, ports: list[int]) -> str:
    """``record`` as text, each server's port by its place (the two runs have
    servers of their own, on other ports)."""
    text = repr(record)
    for place, port in enumerate(ports):
        text = text.replace(str(port), f"<port {place}>")
    return text


def result_of(run: Any) -> object:
    try:
        value = run()
    except Exception as exc:
        return ("error", type(exc).__name__, getattr(exc, "code", None), str(exc))
    if value is None:
        return None
    return (
        "result",
        list(value),
        value.accepted,
        value.server,
        None if value.reply is None else value.reply.code,
    )


def run_blocking(
    options: dict[str, Any], sends: int, between: Callable[[], None] = lambda: None
) -> tuple[list[Any], list[Any]]:
    conduct, driver, _ = conduct_and_drivers(options)
    log: list[tuple[Any, ...]] = []
    outcomes = []
    for number in range(sends):
        if number:
            between()
        prepared, extras = prepare(message(f"message {number}"), MessageOptions())
        program = recorded(
            conduct.send(
                prepared, atleastone=False, queue=False, progress=None, last=False, extras=extras
            ),
            log,
        )
        outcomes.append(result_of(lambda program=program: driver.run(program)))
    outcomes.append(result_of(lambda: driver.run(recorded(conduct.close(), log))))
    return log, outcomes


def run_async(
    options: dict[str, Any], sends: int, between: Callable[[], None] = lambda: None
) -> tuple[list[Any], list[Any]]:
    conduct, _, driver = conduct_and_drivers(options)
    log: list[tuple[Any, ...]] = []
    outcomes: list[Any] = []

    async def main() -> None:
        for number in range(sends):
            if number:
                between()
            prepared, extras = prepare(message(f"message {number}"), MessageOptions())
            program = recorded(
                conduct.send(
                    prepared,
                    atleastone=False,
                    queue=False,
                    progress=None,
                    last=False,
                    extras=extras,
                ),
                log,
            )
            try:
                value = await driver.run(program)
            except Exception as exc:
                outcomes.append(("error", type(exc).__name__, getattr(exc, "code", None), str(exc)))
            else:
                outcomes.append(
                    (
                        "result",
                        list(value),
                        value.accepted,
                        value.server,
                        None if value.reply is None else value.reply.code,
                    )
                )
        await driver.run(recorded(conduct.close(), log))
        outcomes.append(None)

    asyncio.run(main())
    return log, outcomes


SCENARIOS: dict[str, tuple[list[dict[str, Any]], int, dict[str, Any]]] = {
    "pipelined, kept for three": ([{}], 3, {}),
    "one recipient refused": (
        [{"script": {("RCPT", 1): Answer(b"550 5.1.1 no such user\r\n")}}],
        2,
        {},
    ),
    "BDAT with every recipient refused": (
        [
            {
                "script": {"RCPT": Answer(b"550 5.1.1 no\r\n")},
                "capabilities": ["PIPELINING", "CHUNKING"],
            }
        ],
        2,
        {},
    ),
    "421 at MAIL: the next server": (
        [{"script": {"MAIL": Answer(b"421 4.3.2 busy\r\n", then=CLOSE)}}, {}],
        1,
        {},
    ),
    "closed after the end: delivery unknown": ([{"script": {".": CLOSE}}], 2, {}),
    "a stale kept session, with BDAT": (
        [
            {
                "script": {(".", 1): Answer(b"250 ok\r\n421 4.3.2 idle\r\n", then=CLOSE)},
                "capabilities": ["PIPELINING", "CHUNKING"],
            }
        ],
        2,
        {},
    ),
    "a kept session closed while idle, with BDAT": (
        [
            {
                "script": {(".", 1): Answer(b"250 ok\r\n", then=CLOSE)},
                "capabilities": ["PIPELINING", "CHUNKING"],
            }
        ],
        2,
        # The server's close has reached the client before the next send, so
        # the probe finds it (else MAIL would, with other actions).
        {"settle": True},
    ),
    "no server answers": ([{"greeting": b"554 5.3.2 not today\r\n"}], 1, {}),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_both_drivers_perform_the_same_actions_with_the_same_outcome(scenario):
    configs, sends, extra = SCENARIOS[scenario]
    runs = []
    for runner in (run_blocking, run_async):
        servers = [ScriptedServer(**config).start() for config in configs]
        try:
            options = {
                "servers": ["127.0.0.1"] * len(servers),
                "ports": [server.port for server in servers],
                "usetls": False,
                "timeout": 5,
                "client": "localhost",
            }

            def between(servers: list[ScriptedServer] = servers) -> None:
                if extra.get("settle"):
                    for server in servers:
                        server.wait_idle()

            log, outcomes = runner(options, sends, between)
            ports = [server.port for server in servers]
            runs.append((same_ports(log, ports), same_ports(outcomes, ports), log))
        finally:
            for server in servers:
                server.stop()
    (blocking_log, blocking_outcomes, raw), (async_log, async_outcomes, _) = runs
    # The record is not trivial: it has the conversation in it.
    assert any(entry[0] == "open" for entry in raw) and len(raw) > 3
    assert blocking_log == async_log
    assert blocking_outcomes == async_outcomes


def test_both_drivers_agree_over_starttls(tmp_path):
    certs = tls_ca()
    files = write_files(certs, tmp_path)
    context = server_context(certs.server, tmp_path)
    runs = []
    for runner in (run_blocking, run_async):
        with ScriptedServer(tls_context=context) as server:
            port = server.port
            log, outcomes = runner(
                {
                    "servers": ["127.0.0.1"],
                    "ports": [server.port],
                    "cafile": files.cafile,
                    "tlspolicy": "require",
                    "timeout": 5,
                    "client": "localhost",
                },
                2,
            )
            runs.append((log, same_ports(log, [port]), same_ports(outcomes, [port]), outcomes))
    (raw, blocking_log, blocking_outcomes, outcomes), (_, async_log, async_outcomes, _) = runs
    assert ("upgrade",) in raw
    assert blocking_log == async_log
    assert blocking_outcomes == async_outcomes
    assert all(o is None or o[2] for o in outcomes)


def test_the_recorder_sees_results_as_data():
    # (The comparison above would be empty if the recorder lost results.)
    assert outcome_of(Reply(250, ("ok",))) == ("reply", 250)
    assert dataclasses.is_dataclass(Send(b"x", "x", 1.0))
