"""Scenario 5's delayed link: a network namespace behind a veth pair with netem.

Layout (everything created here, and removed on the way out, also on errors
and Ctrl-C)::

    root namespace                      namespace smtplug-bench-<pid>
    veth sbo<pid>  10.x.y.1/30  <--->  veth sbi<pid>  10.x.y.2/30  smtp-sink :2525
       netem delay D                      netem delay D

The only non-loopback addresses used are the two on this pair; the /30 is
chosen so that it overlaps no address or route that already exists, and the
sink is the only process listening inside the namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import guard


class LinkUnavailable(Exception):
    """Why scenario 5 cannot run here (the message says)."""


@dataclass(frozen=True)
class Link:
    netns: str
    outer: str  # veth end in the root namespace
    inner: str  # veth end inside the namespace
    local: str  # address of ``outer``
    remote: str  # address of ``inner``: where the sink listens
    delay_ms: float


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=20)


def _must(command: list[str]) -> None:
    done = _run(command)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise LinkUnavailable(f"`{' '.join(command)}` failed: {reason}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    for command in (
        ["ip", "-4", "-o", "addr", "show"],
        ["ip", "-4", "route", "show", "table", "all"],
    ):
        for line in _run(command).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    network = ipaddress.ip_network(word, strict=False)
                    if isinstance(network, ipaddress.IPv4Network) and network.prefixlen > 0:
                        used.append(network)
    return used


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    pid = os.getpid()
    for attempt in range(200):
        third = (pid + attempt * 7) % 256
        candidate = ipaddress.ip_network(f"10.{250 + attempt % 5}.{third}.0/30")
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise LinkUnavailable("no unused 10.x.y.0/30 for the veth pair")


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise LinkUnavailable("needs root (network namespaces and tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise LinkUnavailable(f"`{tool}` missing (apt-get install iproute2)")


@contextlib.contextmanager
def delayed_link(delay_ms: float = 10.0) -> Iterator[Link]:
    """Yield a Link with ``delay_ms`` each way (0: a plain veth pair, no netem)."""
    _check_prerequisites()
    pid = os.getpid()
    netns = f"smtplug-bench-{pid}"
    outer, inner = f"sbo{pid}"[:15], f"sbi{pid}"[:15]
    created_ns = created_link = False

    def remove() -> None:
        if created_link:
            _run(["ip", "link", "del", outer])  # removes both ends of the pair
        if created_ns:
            _run(["ip", "netns", "del", netns])

    token = guard.register(f"namespace {netns} and veth {outer}", remove)
    try:
        _must(["ip", "netns", "add", netns])
        created_ns = True
        if delay_ms > 0:
            # Probe netem inside the new namespace first: nothing in the root
            # namespace is touched when the kernel lacks it.
            _must(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"])
            done = _run(
                ["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root",
                 "netem", "delay", f"{delay_ms}ms"]
            )  # fmt: skip
            if done.returncode != 0:
                raise LinkUnavailable(
                    f"the kernel has no netem qdisc (tc: {done.stderr.strip()}); "
                    "CONFIG_NET_SCH_NETEM / modprobe sch_netem"
                )
            _must(["ip", "netns", "exec", netns, "tc", "qdisc", "del", "dev", "lo", "root"])
        subnet = _pick_subnet()
        local, remote = (str(host) for host in subnet.hosts())
        _must(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
        created_link = True
        _must(["ip", "link", "set", inner, "netns", netns])
        _must(["ip", "addr", "add", f"{local}/30", "dev", outer])
        _must(["ip", "link", "set", outer, "up"])
        _must(["ip", "netns", "exec", netns, "ip", "addr", "add", f"{remote}/30", "dev", inner])
        _must(["ip", "netns", "exec", netns, "ip", "link", "set", inner, "up"])
        if delay_ms > 0:
            delay = f"{delay_ms}ms"
            _must(["tc", "qdisc", "add", "dev", outer, "root", "netem", "delay", delay])
            _must(["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", inner, "root",
                   "netem", "delay", delay])  # fmt: skip
        yield Link(netns, outer, inner, local, remote, delay_ms)
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the removal finish
        try:
            remove()
        finally:
            guard.unregister(token)
            signal.signal(signal.SIGINT, previous)


def leftovers() -> list[str]:
    """What of this process's link still exists (empty after a clean removal)."""
    pid = os.getpid()
    found = []
    if f"smtplug-bench-{pid}" in _run(["ip", "netns", "list"]).stdout.split():
        found.append(f"namespace smtplug-bench-{pid}")
    if _run(["ip", "link", "show", f"sbo{pid}"[:15]]).returncode == 0:
        found.append(f"link sbo{pid}")
    return found
