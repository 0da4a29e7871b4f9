"""CPU pinning for `run.py --pin`: the sink on one CPU, the clients on another.

Only processes the benchmark itself runs are pinned: the harness (every one
of its threads, so the clients running in it and the child processes it
starts afterwards, smtp-source and scenario 4's children, inherit the client
CPU), and the smtp-sink and delay relay processes it started (by their PIDs).
Unpinning gives each of them back the harness's CPU set from start-up.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


class PinningUnavailable(Exception):
    """Pinning cannot run here (the reason is the message)."""


@dataclass(frozen=True)
class Plan:
    server: frozenset[int]  # smtp-sink, delay relay
    client: frozenset[int]  # the harness and its children
    everything: frozenset[int]  # the harness's CPU set at start-up: the unpinned state

    def describe(self) -> str:
        return f"sink CPU {_cpus(self.server)}, clients CPU {_cpus(self.client)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def make_plan() -> Plan:
    """The first two CPUs this process may use: the sink on one, the clients on the other."""
    if not hasattr(os, "sched_setaffinity"):
        raise PinningUnavailable("os.sched_setaffinity is not available on this platform")
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        raise PinningUnavailable(f"needs two usable CPUs, this process has {len(usable)}")
    return Plan(frozenset({usable[0]}), frozenset({usable[1]}), frozenset(usable))


def threads_of(pid: int) -> list[int]:
    """The thread IDs of ``pid`` (sched_setaffinity sets one thread's mask)."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def set_affinity(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of ``pid`` (a process the benchmark started, or itself) on ``cpus``."""
    for tid in threads_of(pid):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(tid, cpus)
    got = os.sched_getaffinity(pid)
    if got != cpus:
        raise PinningUnavailable(f"pid {pid} runs on CPUs {sorted(got)}, not {sorted(cpus)}")


def affinity(pid: int) -> str:
    """``pid``'s CPU set, as text."""
    return _cpus(frozenset(os.sched_getaffinity(pid)))
