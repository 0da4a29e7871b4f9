"""Benchmark smtplug against a minimal pipelined client (the floor), smtplib,
aiosmtplib and Postfix's smtp-source.

    python benchmarks/run.py [--quick] [--scenarios 1,2,...] [--json out.json]
                             [--message-kb 1,2] [--pin [on|off|both]]

Every scenario runs the clients in rounds, alternating them within one run (so
machine noise hits all of them alike), against Postfix's smtp-sink on
127.0.0.1 (scenario 5: inside a network namespace this script creates behind
a veth pair with netem delay, removed afterwards). Each timed run is checked
against the sink's own counters. Each scenario runs once per condition:
message size (--message-kb) and pinning (--pin: sink and clients on separate
CPUs). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clients
import guard
import netlink
import pinning
import sink as sinkmod
from clients import HUNDRED, TO, DeliveryError, Job, NotAvailable, Runner

import smtplug

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = "smtplug"
FLOOR = "floor"  # benchmarks/floor.py: every client's speed is also shown over the floor's
OTHERS = ("smtplib", "aiosmtplib", "smtp-source", FLOOR)

# Sizes: messages per timed run (scenario 4: megabytes; scenario 6: per connection;
# scenario 7: in all, through send_many).
FULL = {1: 500, 2: 5000, 3: 200, 4: 50, 5: 10, 6: 500, 7: 10000}
QUICK = {1: 100, 2: 1000, 3: 30, 4: 5, 5: 1, 6: 100, 7: 2000}
# Time budgets per scenario, in seconds: a scenario past its budget is stopped
# and reported with the rounds it finished.
BUDGET_FULL = {1: 120, 2: 200, 3: 150, 4: 300, 5: 420, 6: 200, 7: 300}
BUDGET_QUICK = {1: 30, 2: 30, 3: 30, 4: 60, 5: 60, 6: 30, 7: 60}
# Past budget + GRACE (set-up, clean-up, a swallowed SIGALRM) the watchdog
# stops the whole run, undoing everything it created.
GRACE = 60

TITLES = {
    1: "one message per connection",
    2: "small messages over one connection",
    3: "one message to 100 recipients, a new connection each time",
    4: "one big message: time and peak memory (fresh process per client and round)",
    5: "scenario 3 over a link with {delay:g} ms delay each way",
    6: "small messages over 8 concurrent connections",
    7: "10 000 small messages through send_many on a pool of 8 connections",
}


class ScenarioTimeout(Exception):
    pass


# --- conditions: message size and pinning ---------------------------------------------------


@dataclass(frozen=True)
class Condition:
    kb: int  # the message: clients.message_of(kb)
    pinned: bool

    def label(self, plan: pinning.Plan | None) -> str:
        where = f"pinned: {plan.describe()}" if self.pinned and plan else "unpinned"
        return f"{self.kb} KB message, {where}"

    def key(self) -> str:
        return f"{self.kb}k-{'pinned' if self.pinned else 'unpinned'}"


class Placement:
    """Where the harness and the servers it started run under the current condition."""

    def __init__(self) -> None:
        self.plan: pinning.Plan | None = None
        self.pinned = False

    def enter(self, condition: Condition) -> None:
        """Pin (or unpin) the harness, every thread of it; servers via :meth:`server`."""
        self.pinned = condition.pinned
        if self.plan is not None:
            cpus = self.plan.client if self.pinned else self.plan.everything
            pinning.set_affinity(os.getpid(), cpus)

    def server(self, pid: int | None) -> None:
        """Place a server process this run started (smtp-sink, the delay relay)."""
        if self.plan is not None and pid is not None:
            pinning.set_affinity(pid, self.plan.server if self.pinned else self.plan.everything)


PLACEMENT = Placement()


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[float]:
    """Raise ScenarioTimeout in the main thread once ``seconds`` have passed."""

    def expire(signum: int, frame: object) -> None:
        raise ScenarioTimeout(f"time budget of {seconds:.0f} s used up")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield time.monotonic() + seconds
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- results -----------------------------------------------------------------------------


@dataclass
class ClientResult:
    samples: list[float] = field(default_factory=list)  # msg/s (scenario 4: seconds)
    seconds: list[float] = field(default_factory=list)  # wall time of each timed run
    status: str = "ok"
    extra: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class ScenarioResult:
    number: int
    title: str
    unit: str
    params: dict[str, Any]
    clients: dict[str, ClientResult] = field(default_factory=dict)
    note: str = ""
    skipped: str = ""
    condition: Condition | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "condition": dataclasses.asdict(self.condition) if self.condition else None,
            "title": self.title,
            "unit": self.unit,
            "params": self.params,
            "note": self.note,
            "skipped": self.skipped,
            "clients": {
                name: {
                    "status": c.status,
                    "samples": c.samples,
                    "seconds": c.seconds,
                    **({"extra": c.extra} if c.extra else {}),
                }
                for name, c in self.clients.items()
            },
        }


def median_iqr(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    if len(values) < 2:
        return values[0], 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q3 - q1


# --- the timed rounds -------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    name: str
    runner: Runner
    sessions: int  # sessions the sink must count per run (-1: one per message)
    at_most: bool = False  # a pool: from 1 to ``sessions`` (it opens what it needs)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def verified_run(contender: Contender, job: Job, sink: sinkmod.Sink) -> tuple[float, float]:
    """Run once; return (wall time, the client's CPU time). Raises DeliveryError
    unless the sink got it all.

    The CPU time is user + system of the harness process (where the Python
    clients run) plus that of the child processes it waited for meanwhile
    (smtp-source): the client's own cost, without the sink's, and far less
    moved by other load on the machine than the wall time."""
    before = sink.counters()
    cpu = time.process_time() + _children_cpu()
    started = time.perf_counter()
    contender.runner(job)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() + _children_cpu() - cpu
    sessions = job.count if contender.sessions < 0 else contender.sessions
    want_messages, want_sessions = before.messages + job.count, before.sessions + sessions
    fewest = before.sessions + 1 if contender.at_most else want_sessions
    after = sink.wait_for(lambda c: c.messages >= want_messages and c.sessions >= fewest, 5)
    if contender.at_most:
        # (The sink counts a session when it ends: wait until the pool's last
        # QUITs are counted, or they would be charged to the next client.)
        after = sink.settle()
        if after.messages == want_messages and fewest <= after.sessions:
            want_sessions = min(after.sessions, want_sessions)
    if (after.messages, after.sessions) != (want_messages, want_sessions):
        raise DeliveryError(
            f"the sink counted {after.messages - before.messages} messages in "
            f"{after.sessions - before.sessions} sessions, expected {job.count} in {sessions}"
        )
    if not sink.alive():
        raise DeliveryError("smtp-sink died")
    return elapsed, cpu


def run_rounds(
    result: ScenarioResult,
    contenders: list[Contender],
    job: Job,
    sink: sinkmod.Sink,
    rounds: int,
    *,
    warmup: bool = True,
) -> None:
    active = []
    for contender in contenders:
        result.clients[contender.name] = ClientResult()
        if warmup:  # imports, first connection, caches: not timed, still verified
            small = max(job.connections, min(50, job.count // 10))
            try:
                verified_run(contender, dataclasses.replace(job, count=small), sink)
            except ScenarioTimeout:
                result.clients[contender.name].status = "timed out (warm-up)"
                raise
            except NotAvailable as exc:
                result.clients[contender.name].status = f"n/a ({exc})"
                continue
            except Exception as exc:
                result.clients[contender.name].status = f"failed in warm-up: {exc!r}"[:200]
                continue
        active.append(contender)
    for number in range(rounds):
        shift = number % len(active) if active else 0
        for contender in active[shift:] + active[:shift]:  # each client takes each position
            client = result.clients[contender.name]
            if client.status != "ok":
                continue
            try:
                elapsed, cpu = verified_run(contender, job, sink)
            except NotAvailable as exc:
                client.status = f"n/a ({exc})"
                continue
            except ScenarioTimeout:
                client.status = "timed out"
                raise
            except Exception as exc:
                client.status = f"failed: {exc!r}"[:200]
                continue
            client.seconds.append(elapsed)
            client.samples.append(job.count / elapsed)
            client.extra.setdefault("cpu_us_per_message", []).append(cpu / job.count * 1e6)


def contenders_for(number: int, have_source: bool) -> list[Contender]:
    one_each = -1
    if number in (1, 3, 5):
        found = [
            Contender(FLOOR, clients.floor_per_connection, one_each),
            Contender("smtplug", clients.smtplug_per_connection, one_each),
            *(
                [Contender("smtplug-alo", clients.smtplug_atleastone_per_connection, one_each)]
                if number != 1  # one recipient: DATA is in the flight either way
                else []
            ),
            Contender("smtplug-async", clients.smtplug_async_per_connection, one_each),
            Contender("smtplib", clients.smtplib_per_connection, one_each),
            Contender("aiosmtplib", clients.aiosmtplib_per_connection, one_each),
            Contender("smtp-source", clients.smtp_source(kept=False), one_each),
        ]
    elif number == 2:
        found = [
            Contender(FLOOR, clients.floor_kept, 1),
            Contender("smtplug", clients.smtplug_kept, 1),
            Contender("smtplug-async", clients.smtplug_async_kept, 1),
            Contender("smtplib", clients.smtplib_kept, 1),
            Contender("aiosmtplib", clients.aiosmtplib_kept, 1),
            Contender("smtp-source", clients.smtp_source(kept=True), 1),
        ]
    elif number == 6:
        found = [
            Contender(FLOOR, clients.floor_concurrent, 8),
            Contender("smtplug", clients.smtplug_concurrent, 8),
            Contender("smtplug-async", clients.smtplug_async_concurrent, 8),
            Contender("smtplib", clients.smtplib_concurrent, 8),
            Contender("aiosmtplib", clients.aiosmtplib_concurrent, 8),
            Contender("smtplug-pool", clients.smtplug_pool, 8, at_most=True),
            Contender("smtplug-asyncpool", clients.smtplug_asyncpool, 8, at_most=True),
        ]
    elif number == 7:
        found = [
            Contender("smtplug-pool", clients.smtplug_pool, 8, at_most=True),
            Contender("smtplug-asyncpool", clients.smtplug_asyncpool, 8, at_most=True),
            Contender("smtplib", clients.smtplib_concurrent, 8),
            Contender("aiosmtplib", clients.aiosmtplib_concurrent, 8),
        ]
    else:
        raise ValueError(number)
    if not have_source:
        found = [c for c in found if c.name != "smtp-source"]
    return found


def placement_params(sink: sinkmod.Sink) -> dict[str, Any]:
    """The condition's CPUs as measured (read back from the kernel), for the report."""
    params: dict[str, Any] = {"pinned": PLACEMENT.pinned}
    if sink.pid is not None and hasattr(os, "sched_getaffinity"):
        params["sink_cpus"] = pinning.affinity(sink.pid)
        params["client_cpus"] = pinning.affinity(os.getpid())
    return params


def message_scenario(
    number: int,
    args: argparse.Namespace,
    sink: sinkmod.Sink,
    budget: float,
    condition: Condition,
    target: tuple[str, int] | None = None,
) -> ScenarioResult:
    """Scenarios 1, 2, 3, 5, 6; clients connect to ``target`` (default: the sink)."""
    host, port = target or (sink.host, sink.port)
    size = args.sizes[number]
    connections = 8 if number in (6, 7) else 1
    count = size if number == 7 else size * connections
    recipients = HUNDRED if number in (3, 5) else [TO]
    message = clients.message_of(condition.kb)
    title = TITLES[number].format(delay=args.delay_ms)
    rounds = args.rounds if number != 5 else min(args.rounds, 2 if args.quick else 3)
    result = ScenarioResult(
        number,
        title,
        "msg/s",
        {
            "messages_per_run": count,
            "connections": connections,
            "recipients": len(recipients),
            "message_bytes": len(message),
            "rounds": rounds,
            "server": f"{host}:{port}",
            **placement_params(sink),
        },
        condition=condition,
    )
    sink.settle()  # sessions a timed-out scenario left behind are counted by now
    with time_limit(budget) as deadline:
        job = Job(
            host, port, count, recipients, message=message, connections=connections,
            timeout=args.timeout, deadline=deadline,
        )  # fmt: skip
        try:
            run_rounds(
                result,
                contenders_for(number, args.have_source),
                job,
                sink,
                rounds,
                warmup=number != 5,
            )
        except ScenarioTimeout as exc:
            result.note = f"stopped: {exc}; the rounds finished so far are shown"
    return result


# --- scenario 4: one big message, each client in a fresh process ----------------------------

BIG_CLIENTS = ("smtplug-bytes", "smtplug-file", "smtplib", "aiosmtplib")
# The child is started through a short-lived /bin/sh that forks it (no exec of
# the last command): getrusage's max RSS would otherwise start at the
# harness's own high-water mark, which the kernel carries over exec.
SPAWN = ["/bin/sh", "-c", '"$0" "$@"; exit $?']


def write_big_message(path: str, size: int) -> None:
    """Headers and base64-like 76-character lines (an attachment), written in chunks."""
    import base64
    import random

    generator = random.Random(4)
    with open(path, "wb") as handle:
        written = handle.write(
            b"From: big-sender@example.com\r\nTo: big-rcpt@example.org\r\n"
            b"Subject: big benchmark message\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
        )
        raw = generator.randbytes(57 * 4096)  # a 57-byte group gives one 76-char line
        block = base64.encodebytes(raw).replace(b"\n", b"\r\n")
        while written + len(block) <= size:
            written += handle.write(block)
        rest = block[: size - written]
        rest = rest[: rest.rfind(b"\r\n") + 2] if b"\r\n" in rest else b""
        handle.write(rest)


def big_child(
    client: str, mode: str, sink: sinkmod.Sink, path: str, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    before = sink.counters()
    command = [*SPAWN, sys.executable, os.path.join(HERE, "bigmessage.py"), client, mode]
    command += [sink.host, str(sink.port), path, str(args.timeout * 4)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the session started just above

    token = guard.register(f"scenario 4 child pid {process.pid}", kill)
    try:
        out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        kill()
        process.wait(5)
        raise
    finally:
        guard.unregister(token)
    lines = out.decode(errors="replace").strip().splitlines()
    if process.returncode != 0 or not lines:
        raise DeliveryError(
            f"{client} child exited {process.returncode}: "
            f"{(lines[-1:] or [''])[0]} {err.decode(errors='replace').strip()[-300:]}"
        )
    report = json.loads(lines[-1])
    if not report["ok"]:
        raise DeliveryError(f"{client}: {report['detail']}")
    # Two messages: the child's small warm-up, then the big one.
    after = sink.wait_for(lambda c: c.messages >= before.messages + 2, 5)
    if after.messages != before.messages + 2:
        raise DeliveryError(f"{client}: the sink counted {after.messages - before.messages} of 2")
    return report


def big_scenario(
    args: argparse.Namespace, sink: sinkmod.Sink, budget: float, condition: Condition
) -> ScenarioResult:
    size = args.sizes[4] * 1024 * 1024
    rounds = args.big_rounds
    result = ScenarioResult(
        4,
        TITLES[4],
        "s",
        {
            "message_bytes": size,
            "rounds": rounds,
            "server": f"{sink.host}:{sink.port}",
            **placement_params(sink),
        },
        condition=condition,
    )
    for client in BIG_CLIENTS:
        result.clients[client] = ClientResult(
            extra={"traced_peak": [], "rss_growth": [], "hwm_growth": [], "baseline_rss": []}
        )
    with tempfile.TemporaryDirectory(prefix="smtplug-bench-big-") as directory:
        path = os.path.join(directory, "big.eml")
        write_big_message(path, size)
        result.params["message_bytes"] = size = os.path.getsize(path)
        with time_limit(budget) as deadline:
            try:
                for number in range(rounds):
                    shift = number % len(BIG_CLIENTS)
                    for client in BIG_CLIENTS[shift:] + BIG_CLIENTS[:shift]:
                        entry = result.clients[client]
                        if entry.status != "ok":
                            continue
                        try:
                            timed = big_child(client, "timed", sink, path, args, deadline)
                            traced = big_child(client, "traced", sink, path, args, deadline)
                        except ScenarioTimeout:
                            entry.status = "timed out"
                            raise
                        except Exception as exc:
                            entry.status = f"failed: {exc!r}"[:300]
                            continue
                        entry.samples.append(timed["seconds"])
                        entry.seconds.append(timed["seconds"])
                        entry.extra["traced_peak"].append(traced["traced_peak"])
                        entry.extra["rss_growth"].append(timed["rss_growth"])
                        entry.extra["hwm_growth"].append(timed["hwm_growth"])
                        entry.extra["baseline_rss"].append(timed["baseline_rss"])
            except ScenarioTimeout as exc:
                result.note = f"stopped: {exc}; the rounds finished so far are shown"
    return result


# --- scenario 5: across a delayed veth pair -------------------------------------------------


def connect_time(host: str, port: int, tries: int = 5) -> float:
    """Median time from connect() to the server's greeting (two round trips), seconds."""
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        with socket.create_connection((host, port), timeout=10) as probe:
            probe.recv(200)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def delayed_scenario(
    args: argparse.Namespace, budget: float, condition: Condition
) -> ScenarioResult:
    title = TITLES[5].format(delay=args.delay_ms)
    try:
        with (
            netlink.delayed_link(args.delay_ms) as link,
            sinkmod.running_sink(link.remote, netns=link.netns) as sink,
        ):
            PLACEMENT.server(sink.pid)
            before = sink.counters()
            rtt = connect_time(sink.host, sink.port, tries=5)
            # The probe connections are sessions too: let the sink count them first.
            sink.wait_for(lambda c: c.sessions >= before.sessions + 5, 5)
            result = message_scenario(5, args, sink, budget, condition)
            result.params["measured_greeting_ms"] = round(rtt * 1000, 2)
            result.title += " (netns + veth + netem)" if args.delay_ms else " (netns + veth)"
            result.note = (
                f"link {link.local} -> {link.remote} ({link.outer}/{link.inner}, "
                f"netns {link.netns}); connect + greeting took {rtt * 1000:.1f} ms"
                + (f"; {result.note}" if result.note else "")
            )
    except netlink.LinkUnavailable as exc:
        left = netlink.leftovers()
        if left:
            print(f"WARNING: could not remove {', '.join(left)}", file=sys.stderr)
        if args.delay_proxy:
            result = proxied_scenario(args, budget, str(exc), condition)
        else:
            result = ScenarioResult(5, title, "msg/s", {}, condition=condition)
            result.skipped = (
                f"{exc}. (--delay-proxy emulates the delay with a user-space relay on "
                "127.0.0.1 instead.)"
            )
        return result
    left = netlink.leftovers()
    if left:
        print(f"WARNING: could not remove {', '.join(left)}", file=sys.stderr)
    return result


@contextlib.contextmanager
def delay_proxy(upstream: tuple[str, int], delay_ms: float, seconds: float) -> Iterator[int]:
    """delayproxy.py in a process of its own; yields its port; stopped by PID."""
    command = [sys.executable, os.path.join(HERE, "delayproxy.py"), upstream[0]]
    command += [str(upstream[1]), str(delay_ms), str(seconds)]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    token = guard.register(f"delay relay pid {process.pid}", process.kill)
    try:
        PLACEMENT.server(process.pid)
        assert process.stdout is not None
        with time_limit(15):
            line = process.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "ready":
            raise sinkmod.SinkError("the delay proxy did not start")
        yield int(line[1])
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        guard.unregister(token)


def proxied_scenario(
    args: argparse.Namespace, budget: float, why: str, condition: Condition
) -> ScenarioResult:
    with (
        sinkmod.running_sink("127.0.0.1") as sink,
        delay_proxy((sink.host, sink.port), args.delay_ms, budget + 30) as port,
    ):
        PLACEMENT.server(sink.pid)
        before = sink.counters()
        rtt = connect_time("127.0.0.1", port, tries=3)
        sink.wait_for(lambda c: c.sessions >= before.sessions + 3, 5)
        result = message_scenario(5, args, sink, budget, condition, target=("127.0.0.1", port))
        result.title += " [EMULATED: user-space delay relay on 127.0.0.1]"
        result.params["measured_greeting_ms"] = round(rtt * 1000, 2)
        result.note = (
            f"netem unavailable ({why}); emulated by benchmarks/delayproxy.py "
            f"(127.0.0.1:{port} -> {sink.host}:{sink.port}), {args.delay_ms} ms each way; "
            f"connect + greeting took {rtt * 1000:.1f} ms"
            + (f"; {result.note}" if result.note else "")
        )
    return result


# --- reporting ----------------------------------------------------------------------------


def _ratio(ours: float, theirs: float) -> str:
    if not (ours == ours and theirs == theirs) or theirs <= 0 or ours <= 0:  # NaN or zero
        return "n/a"
    return f"{ours / theirs:.2f}"


def condition_label(result: ScenarioResult) -> str:
    if result.condition is None:
        return ""
    label = result.condition.label(PLACEMENT.plan)
    if result.number == 4:  # its own big message: only the pinning applies
        label = label.split(", ", 1)[1]
    return label


def print_result(result: ScenarioResult) -> None:
    label = condition_label(result)
    print(f"\n== {result.number}. {result.title}" + (f" [{label}]" if label else "") + " ==")
    if result.skipped:
        print(f"scenario {result.number} skipped: {result.skipped}")
        return
    params = ", ".join(f"{k}={v}" for k, v in result.params.items())
    print(f"   ({params})")
    if result.number == 4:
        print_big(result)
    else:
        medians = {n: median_iqr(c.samples)[0] for n, c in result.clients.items() if c.samples}
        floor = medians.get(FLOOR, float("nan"))
        cpus = cpu_medians(result)
        floor_cpu = cpus.get(FLOOR, float("nan"))
        print(
            f"  {'client':<18}{'median msg/s':>14}{'IQR':>10}{'x floor':>9}"
            f"{'CPU us/msg':>12}{'x floor':>9}{'runs':>6}  status"
        )
        for name, client in result.clients.items():
            median, iqr = median_iqr(client.samples)
            places = 2 if median < 10 else 1
            shown = (
                f"{median:14.{places}f}{iqr:10.{places}f}{_ratio(median, floor):>9}"
                f"{cpus[name]:12.0f}{_ratio(cpus[name], floor_cpu):>9}"
                if client.samples
                else f"{'-':>14}{'-':>10}{'-':>9}{'-':>12}{'-':>9}"
            )
            print(f"  {name:<18}{shown}{len(client.samples):>6}  {client.status}")
        ours = medians.get(REFERENCE, float("nan"))
        ratios = [
            f"smtplug/{name} {_ratio(ours, medians.get(name, float('nan')))}"
            for name in OTHERS
            if name in result.clients
        ]
        if "smtplug-alo" in result.clients:
            alo = medians.get("smtplug-alo", float("nan"))
            ratios.append(f"smtplug-alo/{FLOOR} {_ratio(alo, floor)}")
        if "smtplug-async" in result.clients:
            mine = medians.get("smtplug-async", float("nan"))
            ratios += [
                f"smtplug-async/{name} {_ratio(mine, medians.get(name, float('nan')))}"
                for name in ("aiosmtplib", "smtplug")
                if name in result.clients
            ]
        for pool in ("smtplug-pool", "smtplug-asyncpool"):
            if pool in result.clients:
                mine = medians.get(pool, float("nan"))
                ratios += [
                    f"{pool}/{name} {_ratio(mine, medians.get(name, float('nan')))}"
                    for name in ("aiosmtplib", "smtplib")
                    if name in result.clients
                ]
        print("  ratios (messages per second, above 1 = smtplug faster): " + "   ".join(ratios))
        print(
            "  CPU us/msg: the client's own CPU time (user + system: the harness's, plus "
            "smtp-source's), median; its x floor is the multiple of the floor's cost"
        )
        if "smtplug-alo" in result.clients:
            print("  smtplug-alo: smtplug with atleastone=True (DATA in the MAIL/RCPT flight)")
    if result.note:
        print(f"  note: {result.note}")


def print_big(result: ScenarioResult) -> None:
    size = result.params["message_bytes"]
    print(
        f"  {'client':<15}{'median s':>10}{'IQR s':>8}{'traced peak':>13}"
        f"{'max-RSS growth':>16}{'runs':>6}  status"
    )
    print(f"  {'':<15}{'':>10}{'':>8}{'(x size)':>13}{'(x size)':>16}")
    medians = {}
    for name, client in result.clients.items():
        if client.samples:
            median, iqr = median_iqr(client.samples)
            medians[name] = median
            peak = statistics.median(client.extra["traced_peak"]) / size
            rss = statistics.median(client.extra["rss_growth"]) / size
            shown = f"{median:10.3f}{iqr:8.3f}{peak:13.2f}{rss:16.2f}"
        else:
            shown = f"{'-':>10}{'-':>8}{'-':>13}{'-':>16}"
        print(f"  {name:<15}{shown}{len(client.samples):>6}  {client.status}")
    for mine in ("smtplug-bytes", "smtplug-file"):
        ours = medians.get(mine, float("nan"))
        # Speed ratio, as in the other scenarios: the other's time / smtplug's time.
        ratios = [
            f"{mine}/{name} {_ratio(medians.get(name, float('nan')), ours)}"
            for name in ("smtplib", "aiosmtplib")
        ]
        print(
            "  ratios (speed: other's time / smtplug's; above 1 = smtplug faster): "
            + "   ".join(ratios)
        )
    print(
        "  memory is on top of a baseline that already holds the caller's copy of the "
        "message (bytes clients)"
    )


def cpu_medians(result: ScenarioResult) -> dict[str, float]:
    """Each client's median CPU microseconds per message (clients with samples)."""
    return {
        name: statistics.median(client.extra["cpu_us_per_message"])
        for name, client in result.clients.items()
        if client.extra.get("cpu_us_per_message")
    }


SUMMARY_CLIENTS = (
    FLOOR,
    "smtplug",
    "smtplug-alo",
    "smtplug-async",
    "smtplug-pool",
    "smtplug-asyncpool",
    "smtplib",
    "aiosmtplib",
    "smtp-source",
)


def summary_table(results: list[ScenarioResult], *, cpu: bool = False) -> list[str]:
    """A Markdown table of every message scenario: median msg/s (x the floor's);
    ``cpu``: median CPU us per message (x the floor's)."""
    rows = [r for r in results if r.number != 4 and not r.skipped and r.clients]
    if not rows:
        return []
    shown = [name for name in SUMMARY_CLIENTS if any(name in r.clients for r in rows)]
    lines = [
        "| scenario | condition | " + " | ".join(shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for r in rows:
        if cpu:
            medians = cpu_medians(r)
        else:
            medians = {n: median_iqr(c.samples)[0] for n, c in r.clients.items() if c.samples}
        floor = medians.get(FLOOR, float("nan"))
        cells = []
        for name in shown:
            if name not in r.clients:
                cells.append("")
            elif name not in medians:
                cells.append(r.clients[name].status.split(":")[0])
            else:
                value = medians[name]
                text = f"{value:.0f}" if value >= 10 else f"{value:.2f}"
                cells.append(text if name == FLOOR else f"{text} ({_ratio(value, floor)})")
        lines.append(f"| {r.number} | {condition_label(r)} | " + " | ".join(cells) + " |")
    return lines


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "smtplug": getattr(smtplug, "__version__", None),
        "aiosmtplib": None,
        "postfix": None,
        "loadavg_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(ImportError):
        import aiosmtplib

        facts["aiosmtplib"] = aiosmtplib.__version__
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "postfix"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        facts["postfix"] = done.stdout.strip() or None
    return facts


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="e.g. 1,2,3 (default: all)")
    parser.add_argument("--json", metavar="PATH", help="write machine facts and raw samples")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 5; quick 3)")
    parser.add_argument(
        "--sizes",
        default="",
        help="override sizes, e.g. '1=500,2=5000,3=200,4=50,5=10,6=500' (messages per run; "
        "4: megabytes; 6: messages per connection; 7: messages in all)",
    )
    parser.add_argument(
        "--delay-ms", type=float, default=10.0, help="scenario 5's delay each way (0: no netem)"
    )
    parser.add_argument(
        "--delay-proxy",
        action="store_true",
        help="where netem is missing, run scenario 5 through a user-space delay relay on "
        "127.0.0.1 (benchmarks/delayproxy.py) instead of skipping it",
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="time budget per scenario, seconds (default: 30 to 60 quick, 120 to 420 full)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per network operation, s")
    parser.add_argument(
        "--message-kb",
        default="1",
        help="message sizes in KB, each a condition of its own, e.g. 1,2 (default 1: the "
        "1045-octet message; others are padded to exactly N x 1024 octets)",
    )
    parser.add_argument(
        "--pin",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="sink and clients on separate CPUs (os.sched_setaffinity, only processes this "
        "run starts); 'both' runs every scenario unpinned, then pinned (--pin alone: on)",
    )
    args = parser.parse_args(argv)
    try:
        args.wanted = sorted({int(part) for part in args.scenarios.split(",") if part.strip()})
        args.kbs = list(dict.fromkeys(int(part) for part in args.message_kb.split(",")))
        sizes = dict(QUICK if args.quick else FULL)
        for item in filter(None, (part.strip() for part in args.sizes.split(","))):
            key, value = item.split("=")
            sizes[int(key)] = int(value)
    except ValueError:
        parser.error("--scenarios and --sizes take numbers, e.g. --scenarios 1,3 --sizes 1=100")
    if not set(args.wanted) <= set(FULL) or min(sizes.values()) < 1:
        parser.error("scenarios are 1 to 7; sizes must be at least 1")
    if not args.kbs or not all(1 <= kb <= 1024 for kb in args.kbs):
        parser.error("--message-kb takes sizes from 1 to 1024, e.g. --message-kb 1,2")
    if args.rounds is not None and not 1 <= args.rounds <= 50:
        parser.error("--rounds must be 1 to 50")
    args.sizes = sizes
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.big_rounds = min(args.rounds, 1 if args.quick else 3)
    args.budgets = BUDGET_QUICK if args.quick else BUDGET_FULL
    if args.budget is not None:
        args.budgets = dict.fromkeys(FULL, args.budget)
    pins = {"off": [False], "on": [True], "both": [False, True]}[args.pin]
    args.conditions = [Condition(kb, pinned) for pinned in pins for kb in args.kbs]
    return args


def conditions_for(number: int, args: argparse.Namespace) -> list[Condition]:
    """Scenario 4 sends its own big message: one run per pinning, not per size."""
    if number != 4:
        return list(args.conditions)
    first = args.kbs[0]
    return [c for c in args.conditions if c.kb == first]


def result_key(result: ScenarioResult, args: argparse.Namespace) -> str:
    """ "1" with one condition (as before); "1-2k-pinned" and so on with several."""
    if len(args.conditions) == 1 or result.condition is None:
        return str(result.number)
    return f"{result.number}-{result.condition.key()}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if not os.path.exists(sinkmod.SINK):
        print(f"{sinkmod.SINK} is missing: apt-get install postfix", file=sys.stderr)
        return 2
    args.have_source = os.path.exists(clients.SOURCE)
    if not args.have_source:
        print(f"note: {clients.SOURCE} is missing: no smtp-source column")

    guard.install_signal_handlers()  # Ctrl-C, SIGTERM, SIGHUP: undo everything, exit
    watchdog = guard.Watchdog()
    facts = machine_facts()
    print("smtplug benchmark" + (" (quick)" if args.quick else ""))
    for key, value in facts.items():
        print(f"  {key}: {value}")
    if not hasattr(smtplug, "Client"):
        print("  note: smtplug.Client missing: scenarios 2 and 6 show n/a for smtplug")
    unpinnable = ""
    if any(c.pinned for c in args.conditions):
        try:
            PLACEMENT.plan = pinning.make_plan()
            print(f"  pinning: {PLACEMENT.plan.describe()} (unpinned: CPUs "
                  f"{pinning.affinity(os.getpid())})")  # fmt: skip
        except pinning.PinningUnavailable as exc:
            unpinnable = f"pinning unavailable: {exc}"
            print(f"  {unpinnable}: the pinned conditions are skipped")
    print("  conditions: " + "; ".join(c.label(PLACEMENT.plan) for c in args.conditions))
    started = time.monotonic()
    results: list[ScenarioResult] = []

    def run_one(number: int, condition: Condition, sink: sinkmod.Sink | None) -> None:
        if condition.pinned and unpinnable:
            result = ScenarioResult(number, TITLES[number].format(delay=args.delay_ms), "", {})
            result.condition, result.skipped = condition, unpinnable
        else:
            PLACEMENT.enter(condition)
            PLACEMENT.server(sink.pid if sink is not None else None)
            budget = args.budgets[number]
            watchdog.arm(budget + GRACE, f"scenario {number} ({condition.key()})")
            if number == 5:
                result = delayed_scenario(args, budget, condition)
            elif number == 4:
                assert sink is not None
                result = big_scenario(args, sink, budget, condition)
            else:
                assert sink is not None
                result = message_scenario(number, args, sink, budget, condition)
            watchdog.disarm()
        print_result(result)
        results.append(result)

    try:
        local = [n for n in args.wanted if n != 5]
        if local:
            with sinkmod.running_sink("127.0.0.1") as sink:
                print(f"  smtp-sink: pid {sink.pid} on {sink.host}:{sink.port}")
                for number in local:
                    for condition in conditions_for(number, args):
                        run_one(number, condition, sink)
        if 5 in args.wanted:
            for condition in conditions_for(5, args):
                run_one(5, condition, None)
    except (sinkmod.SinkError, pinning.PinningUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        watchdog.close()
        if PLACEMENT.plan is not None:  # the harness back on all its CPUs
            with contextlib.suppress(OSError, pinning.PinningUnavailable):
                pinning.set_affinity(os.getpid(), PLACEMENT.plan.everything)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(
                    {
                        "machine": facts,
                        "args": {
                            "quick": args.quick,
                            "rounds": args.rounds,
                            "sizes": args.sizes,
                            "delay_ms": args.delay_ms,
                            "message_kb": args.kbs,
                            "pin": args.pin,
                        },
                        "pinning": (
                            {k: sorted(v) for k, v in dataclasses.asdict(PLACEMENT.plan).items()}
                            if PLACEMENT.plan
                            else unpinnable
                        ),
                        "scenarios": {result_key(r, args): r.as_json() for r in results},
                    },
                    handle,
                    indent=2,
                )
    table = summary_table(results)
    if table:
        print("\nsummary: median msg/s (x the floor's, above 1 = faster than the floor)")
        print("\n".join(table))
        print("\nsummary: median client CPU us per message (x the floor's: its cost multiple)")
        print("\n".join(summary_table(results, cpu=True)))
    print(
        f"\ndone in {time.monotonic() - started:.0f} s"
        + (f"; raw samples in {args.json}" if args.json else "")
    )
    failed = [
        f"{result_key(r, args)}:{name}"
        for r in results
        for name, c in r.clients.items()
        if c.status.startswith(("failed", "timed out"))
    ]
    if failed:
        print(f"failures: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
