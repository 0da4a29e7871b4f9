"""CPU time per message: smtplug against smtplib, against the same smtp-sink.

    python benchmarks/cpu.py [--messages N] [--rounds R] [--profile smtplug-kept]

Wall-clock figures on a shared machine move with everything else running; the
process's own CPU time (``time.process_time``: user + system of this process
only, not the sink's) moves much less, and says what a client costs per
message. The shapes are those of scenario 2 (one recipient, a kept
connection) and scenario 3 (100 recipients, a new connection per message).
``--profile NAME`` runs one shape under cProfile and prints the top entries.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clients
import sink as sinkmod
from clients import HUNDRED, TO, Job

SHAPES: dict[str, tuple[Callable[[Job], None], list[str], int]] = {
    # name: (runner, recipients, share of --messages)
    "smtplug-kept": (clients.smtplug_kept, [TO], 1),
    "smtplib-kept": (clients.smtplib_kept, [TO], 1),
    "smtplug-100": (clients.smtplug_per_connection, HUNDRED, 20),
    "smtplib-100": (clients.smtplib_per_connection, HUNDRED, 20),
}


def measure(runner: Callable[[Job], None], job: Job) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per message for one timed run."""
    cpu, wall = time.process_time(), time.perf_counter()
    runner(job)
    return (time.process_time() - cpu) / job.count, (time.perf_counter() - wall) / job.count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="per run, one recipient")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=sorted(SHAPES), help="profile one shape")
    args = parser.parse_args(argv)
    with sinkmod.running_sink() as sink:

        def job(recipients: list[str], share: int) -> Job:
            return Job(sink.host, sink.port, max(1, args.messages // share), recipients)

        for runner, recipients, _share in SHAPES.values():  # warm up: imports, caches
            runner(Job(sink.host, sink.port, 20, recipients))
        if args.profile:
            runner, recipients, share = SHAPES[args.profile]
            profile = cProfile.Profile()
            profile.runcall(runner, job(recipients, share))
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return 0
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in SHAPES}
        for _ in range(args.rounds):  # alternate the shapes round after round
            for name, (runner, recipients, share) in SHAPES.items():
                samples[name].append(measure(runner, job(recipients, share)))
    print(f"{'shape':<14} {'CPU us/msg':>11} {'wall us/msg':>12}   (median of {args.rounds})")
    for name, values in samples.items():
        cpu = statistics.median(value[0] for value in values) * 1e6
        wall = statistics.median(value[1] for value in values) * 1e6
        print(f"{name:<14} {cpu:>11.1f} {wall:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
