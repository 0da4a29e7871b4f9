"""CPU time per message through the real API, over an in-memory ESMTP peer.

    python benchmarks/cpu_session.py [--rounds R] [--messages N] [--json FILE]
    python benchmarks/cpu_session.py --python before=/tmp/base/.venv/bin/python \\
                                     --python after=.venv/bin/python
    python benchmarks/cpu_session.py --profile kept-bytes-1

No socket, no server process, no thread: the ``plain`` transport's
``connect`` (blocking and asyncio) is replaced, in this process only, by one
returning a stream over ``tests/mockstream.py``'s in-memory peer (greeting,
EHLO with PIPELINING and 8BITMIME, 250/354/221). Everything else is the
library as users call it: ``smtplug.Client`` / ``smtplug.sendmessage`` /
``smtplug.AsyncClient`` with the registry of the installed plugins (the
shared one, as a call without ``plugins=`` gets), the options checked, the
plan built, the envelope prepared, the session run by the driver. The
figures include the peer's own work (the same for every tree measured; the
``peer`` row shows what it is alone).

The cases (CPU µs per message: ``time.process_time``, user + system of this
process, so other work on the machine moves it far less than wall time):

* ``kept-bytes-1``: a kept Client, a 1 KB ``bytes`` message, one recipient;
* ``kept-email-1``: the same with an ``email.message.EmailMessage``;
* ``kept-bytes-100``: a kept Client, 100 recipients;
* ``oneshot-bytes-1``: ``smtplug.sendmessage`` (a Client, its plan and a
  connection set up and closed every call), one recipient;
* ``oneshot-bytes-100``: the same with 100 recipients;
* ``oneshot-tls-1``: the one-shot with ``usetls=True`` (the default: the
  TLS options are checked) over the ``plain`` transport (``transport=``;
  the peer offers no STARTTLS, so the ``opportunistic`` policy carries on in
  plain text), one recipient;
* ``async-kept-bytes-1``: a kept ``smtplug.AsyncClient``, one recipient;
* ``async-oneshot-bytes-1``: ``smtplug.asendmessage``, one recipient (the
  event loop kept: the calls are awaited one after another in one loop);
* ``pool-batch-1``: ``smtplug.Pool(max_connections=8).send_many`` of a
  generator of the ``kept-bytes-1`` message (the batch on its own event
  loop, eight in-memory connections);
* ``asyncpool-batch-1``: the same through ``smtplug.AsyncPool``;
* ``peer``: the in-memory peer alone, answering the bytes one
  ``kept-bytes-1`` message writes.

Each sample is one run of ``--messages`` messages (100 recipients and the
one-shot: a tenth), after a warm-up; the figure is the median over
``--rounds`` rounds. With ``--python LABEL=INTERPRETER`` (twice or more)
each interpreter (each with its own smtplug installed, e.g. a worktree of an
older commit with its own venv) runs a worker process of this script, and the
workers take turns case by case, round after round (the order rotating), so
that load on the machine hits them alike. ``--json FILE`` also writes the
samples.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import email.message
import json
import logging
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

# The message, sender and recipients of the run.py scenarios.
from clients import _BODY, FROM, HUNDRED, TO  # noqa: E402
from clients import SMALL_MESSAGE as MESSAGE  # noqa: E402

CASES = (
    "kept-bytes-1",
    "kept-email-1",
    "kept-bytes-100",
    "oneshot-bytes-1",
    "oneshot-bytes-100",
    "oneshot-tls-1",
    "async-kept-bytes-1",
    "async-oneshot-bytes-1",
    "pool-batch-1",
    "asyncpool-batch-1",
    "peer",
)
#: Share of --messages per sample.
SHARE = {
    "kept-bytes-100": 10,
    "oneshot-bytes-1": 10,
    "oneshot-bytes-100": 10,
    "oneshot-tls-1": 10,
    "async-oneshot-bytes-1": 10,
}

OPTIONS: dict[str, Any] = {
    "servers": ["127.0.0.1"],
    "client": "localhost",
    "usetls": False,
}


def _email() -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = FROM
    msg["To"] = TO
    msg["Subject"] = "smtplug benchmark"
    msg["Date"] = "Sat, 28 Nov 2026 12:00:00 +0000"
    msg["Message-ID"] = "<benchmark@example.com>"
    msg.set_content(_BODY.decode().replace("\r\n", "\n"))
    return msg


class Bench:
    """The cases, over one in-memory peer patched into the ``plain`` transport."""

    def __init__(self) -> None:
        import mockstream
        import smtplug
        import smtplug_plugins.plain as plain

        self.smtplug = smtplug
        self.mockstream = mockstream
        self.server = mockstream.MockServer()

        server = self.server

        def connect(self: object, host: str, port: int, *, timeout: Any, options: Any) -> Any:
            server.sessions.clear()  # (keeps memory flat over many connections)
            return mockstream.MockStream(server.open())

        async def aconnect(
            self: object, host: str, port: int, *, timeout: Any, options: Any
        ) -> Any:
            server.sessions.clear()
            return mockstream.AsyncMockStream(server.open())

        plain.PlainTransport.connect = connect  # type: ignore[method-assign]
        plain.AsyncPlainTransport.connect = aconnect  # type: ignore[method-assign]
        # (oneshot-tls-1 warns at each call that it goes on without TLS: the
        # record is made and handled, not printed.)
        logging.getLogger("smtplug").addHandler(logging.NullHandler())
        self.email = _email()
        self.flight = self._one_message_bytes()

    def _one_message_bytes(self) -> bytes:
        """What a kept Client writes for one 1-recipient message."""
        with self.smtplug.Client(**OPTIONS) as client:
            client.sendmessage(MESSAGE, originator=FROM, recipients=[TO])
            session = self.server.sessions[-1]
            before = len(session.received)
            client.sendmessage(MESSAGE, originator=FROM, recipients=[TO])
            return bytes(session.received[before:])

    def runner(self, case: str) -> Callable[[int], None]:
        smtplug = self.smtplug
        if case.startswith("oneshot-"):
            many = HUNDRED if case == "oneshot-bytes-100" else [TO]
            given = OPTIONS
            if case == "oneshot-tls-1":  # (the TLS options checked; the peer's plain transport)
                given = dict(OPTIONS, usetls=True, transport="plain")

            def oneshot(count: int) -> None:
                for _ in range(count):
                    result = smtplug.sendmessage(MESSAGE, originator=FROM, recipients=many, **given)
                    assert result.accepted and not result

            return oneshot
        if case == "async-oneshot-bytes-1":

            def run_async_oneshot(count: int) -> None:
                async def main() -> None:
                    for _ in range(count):
                        result = await smtplug.asendmessage(
                            MESSAGE, originator=FROM, recipients=[TO], **OPTIONS
                        )
                        assert result.accepted and not result

                asyncio.run(main())

            return run_async_oneshot
        if case == "async-kept-bytes-1":

            def run_async(count: int) -> None:
                async def main() -> None:
                    async with smtplug.AsyncClient(**OPTIONS) as client:
                        for _ in range(count):
                            result = await client.sendmessage(
                                MESSAGE, originator=FROM, recipients=[TO]
                            )
                            assert result.accepted and not result

                asyncio.run(main())

            return run_async
        if case == "pool-batch-1":

            def pool_batch(count: int) -> None:
                with smtplug.Pool(**OPTIONS, max_connections=8) as pool:
                    messages = (MESSAGE for _ in range(count))
                    for outcome in pool.send_many(messages, originator=FROM, recipients=[TO]):
                        assert outcome.status == "sent"

            return pool_batch
        if case == "asyncpool-batch-1":

            def asyncpool_batch(count: int) -> None:
                async def main() -> None:
                    async with smtplug.AsyncPool(**OPTIONS, max_connections=8) as pool:
                        messages = (MESSAGE for _ in range(count))
                        async for outcome in pool.send_many(
                            messages, originator=FROM, recipients=[TO]
                        ):
                            assert outcome.status == "sent"

                asyncio.run(main())

            return asyncpool_batch
        if case == "peer":
            flight = self.flight

            def peer(count: int) -> None:
                session = self.mockstream.MockSession(self.server)
                session.outgoing.clear()
                for _ in range(count):
                    session.write(flight)
                    session.outgoing.clear()
                    session.received.clear()

            return peer
        message: object = self.email if case == "kept-email-1" else MESSAGE
        recipients = HUNDRED if case == "kept-bytes-100" else [TO]

        def kept(count: int) -> None:
            with smtplug.Client(**OPTIONS) as client:
                for _ in range(count):
                    result = client.sendmessage(message, originator=FROM, recipients=recipients)
                    assert result.accepted and not result

        return kept

    def sample(self, case: str, messages: int) -> float:
        """CPU µs per message of one run of the case."""
        count = max(1, messages // SHARE.get(case, 1))
        run = self.runner(case)
        start = time.process_time()
        run(count)
        return (time.process_time() - start) / count * 1e6


def worker() -> int:
    """Serve samples: a line "case messages" in, a line of µs/msg out."""
    bench = Bench()
    out = sys.stdout
    print(json.dumps({"ready": True, "smtplug": bench.smtplug.__file__}), file=out, flush=True)
    for line in sys.stdin:
        case, messages = line.split()
        print(json.dumps(bench.sample(case, int(messages))), file=out, flush=True)
    return 0


class Worker:
    def __init__(self, label: str, python: str) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = json.loads(self._line())
        self.where = hello["smtplug"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.label} ended (exit {self.proc.wait()})")
        return line

    def sample(self, case: str, messages: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{case} {messages}\n")
        self.proc.stdin.flush()
        return float(json.loads(self._line()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    parser.add_argument("--json", metavar="FILE", help="also write the samples here")
    parser.add_argument(
        "--python",
        action="append",
        metavar="LABEL=INTERPRETER",
        help="measure the smtplug of this interpreter (twice or more: alternating)",
    )
    parser.add_argument("--profile", metavar="CASE", help="run one case under cProfile")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker()
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; the cases: {', '.join(CASES)}")

    if args.profile:
        bench = Bench()
        bench.sample(args.profile, 50)
        profiler = cProfile.Profile()
        count = max(1, args.messages // SHARE.get(args.profile, 1))
        run = bench.runner(args.profile)
        profiler.runcall(run, count)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
        return 0

    labels: list[str] = []
    samplers: dict[str, Callable[[str, int], float]] = {}
    where: dict[str, str] = {}
    workers: list[Worker] = []
    if args.python:
        for spec in args.python:
            label, _, python = spec.partition("=")
            if not python:
                parser.error(f"--python wants LABEL=INTERPRETER, not {spec!r}")
            w = Worker(label, python)
            workers.append(w)
            labels.append(label)
            samplers[label] = w.sample
            where[label] = w.where
    else:
        bench = Bench()
        labels = ["this"]
        samplers["this"] = bench.sample
        where["this"] = bench.smtplug.__file__ or "?"

    samples: dict[str, dict[str, list[float]]] = {c: {lb: [] for lb in labels} for c in cases}
    load_start = os.getloadavg()
    try:
        for label in labels:  # warm up: imports, caches, compiled patterns
            for case in cases:
                samplers[label](case, 50)
        for number in range(args.rounds):
            order = labels[number % len(labels) :] + labels[: number % len(labels)]
            for case in cases:
                for label in order:
                    samples[case][label].append(samplers[label](case, args.messages))
    finally:
        for w in workers:
            w.close()
    load_end = os.getloadavg()

    print(
        f"CPU µs per message (time.process_time), median of {args.rounds} rounds; "
        f"{args.messages} messages a sample (100 rcpts, one-shots: a tenth)"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end"
    )
    for label in labels:
        print(f"  {label}: {where[label]}")
    # Beside the medians: each label's median, over the rounds, of its sample
    # divided by the first label's in the same round (the pairs ran back to
    # back, so a burst of load on the machine hits both alike).
    others = labels[1:]
    width = {label: max(12, len(label) + 2) for label in labels}
    ratio_width = {label: max(12, len(label) + len(labels[0]) + 3) for label in others}
    head = f"{'case':<20}" + "".join(f"{label:>{width[label]}}" for label in labels)
    head += "".join(f"{label + '/' + labels[0]:>{ratio_width[label]}}" for label in others)
    print(head)
    for case in cases:
        per = samples[case]
        row = f"{case:<20}"
        row += "".join(f"{statistics.median(per[lb]):>{width[lb]}.1f}" for lb in labels)
        for label in others:
            pairs = zip(per[label], per[labels[0]], strict=True)
            row += f"{statistics.median(a / b for a, b in pairs):>{ratio_width[label]}.3f}"
        print(row)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load": [load_start, load_end],
                    "messages": args.messages,
                    "rounds": args.rounds,
                    "smtplug": where,
                    "samples": samples,
                    "median": {
                        case: {lb: statistics.median(v) for lb, v in per.items()}
                        for case, per in samples.items()
                    },
                },
                out,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
