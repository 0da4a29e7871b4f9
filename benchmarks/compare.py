"""smtplug against CPython's smtplib, aiosmtplib and Postfix's smtp-source.

Usage: python benchmarks/compare.py [--quick] [--scenarios 1,2,3,4,5,6] [--rounds N]

Every scenario runs each client in turn, round after round (so machine noise
hits them all alike), against Postfix's smtp-sink on 127.0.0.1 (scenario 5:
inside a network namespace this script creates, behind a veth pair with
10 ms of netem delay each way; it is removed afterwards). See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import smtplug

SINK = "/usr/sbin/smtp-sink"
SOURCE = "/usr/sbin/smtp-source"
FROM = "sender@example.com"
TO = "rcpt@example.org"
BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 16).encode()
MESSAGE = (
    f"From: {FROM}\r\nTo: {TO}\r\nSubject: benchmark\r\n"
    "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench@example.com>\r\n\r\n"
).encode() + BODY
HUNDRED = [f"r{i}@example.org" for i in range(100)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def sink(host: str, netns: str | None = None) -> Iterator[int]:
    """smtp-sink on host:port (in ``netns`` when given), stopped by its PID."""
    port = free_port() if netns is None else 2525
    command = [SINK, "-u", "nobody", f"{host}:{port}", "1000"]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((host, port), timeout=1) as probe:
                    probe.recv(100)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("smtp-sink did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the clients ----------------------------------------------------------------------


def smtplug_one_per_connection(host: str, port: int, n: int, rcpts: list[str]) -> None:
    for _ in range(n):
        result = smtplug.sendmessage(
            MESSAGE, servers=host, ports=port, client="localhost", usetls=False,
            originator=FROM, recipients=rcpts,
        )  # fmt: skip
        assert result.accepted and not result, result


def smtplib_one_per_connection(host: str, port: int, n: int, rcpts: list[str]) -> None:
    import smtplib

    for _ in range(n):
        with smtplib.SMTP(host, port, local_hostname="localhost") as client:
            assert not client.sendmail(FROM, rcpts, MESSAGE)


def aiosmtplib_one_per_connection(host: str, port: int, n: int, rcpts: list[str]) -> None:
    import aiosmtplib

    async def run() -> None:
        for _ in range(n):
            errors, _ = await aiosmtplib.send(
                MESSAGE, sender=FROM, recipients=rcpts, hostname=host, port=port,
                local_hostname="localhost", use_tls=False, start_tls=False,
            )  # fmt: skip
            assert not errors

    asyncio.run(run())


def smtplug_kept(host: str, port: int, n: int, rcpts: list[str]) -> None:
    with smtplug.Client(servers=host, ports=port, client="localhost", usetls=False) as client:
        for _ in range(n):
            result = client.sendmessage(MESSAGE, originator=FROM, recipients=rcpts)
            assert result.accepted and not result


def smtplib_kept(host: str, port: int, n: int, rcpts: list[str]) -> None:
    import smtplib

    with smtplib.SMTP(host, port, local_hostname="localhost") as client:
        for _ in range(n):
            assert not client.sendmail(FROM, rcpts, MESSAGE)


def aiosmtplib_kept(host: str, port: int, n: int, rcpts: list[str]) -> None:
    import aiosmtplib

    async def run() -> None:
        client = aiosmtplib.SMTP(
            hostname=host, port=port, local_hostname="localhost", use_tls=False, start_tls=False
        )
        async with client:
            for _ in range(n):
                errors, _ = await client.sendmail(FROM, rcpts, MESSAGE)
                assert not errors

    asyncio.run(run())


def source(host: str, port: int, n: int, rcpts: list[str], *, kept: bool) -> None:
    command = [SOURCE, "-s", "1", "-m", str(n), "-l", str(len(BODY)), "-M", "localhost"]
    command += ["-r", str(len(rcpts))] + (["-d"] if kept else []) + [f"{host}:{port}"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=600)


def concurrently(worker: Callable[[str, int, int, list[str]], None], threads: int = 8):
    def run(host: str, port: int, n: int, rcpts: list[str]) -> None:
        errors: list[BaseException] = []

        def one() -> None:
            try:
                worker(host, port, n // threads, rcpts)
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=one) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        if errors:
            raise errors[0]

    return run


def aiosmtplib_concurrent(host: str, port: int, n: int, rcpts: list[str]) -> None:
    import aiosmtplib

    async def one(count: int) -> None:
        client = aiosmtplib.SMTP(
            hostname=host, port=port, local_hostname="localhost", use_tls=False, start_tls=False
        )
        async with client:
            for _ in range(count):
                errors, _ = await client.sendmail(FROM, rcpts, MESSAGE)
                assert not errors

    async def run() -> None:
        await asyncio.gather(*(one(n // 8) for _ in range(8)))

    asyncio.run(run())


# --- running and reporting --------------------------------------------------------------


@dataclass
class Result:
    name: str
    samples: dict[str, list[float]] = field(default_factory=dict)  # client -> messages/s
    unit: str = "msg/s"


def run_rounds(
    name: str,
    clients: dict[str, Callable[[str, int, int, list[str]], None]],
    host: str,
    port: int,
    n: int,
    rcpts: list[str],
    rounds: int,
) -> Result:
    result = Result(name)
    for client in clients.values():  # warm-up: imports, first connection
        client(host, port, max(1, n // 20), rcpts)
    for number in range(rounds):
        order = list(clients.items())
        if number % 2:
            order.reverse()
        for label, client in order:
            started = time.perf_counter()
            client(host, port, n, rcpts)
            elapsed = time.perf_counter() - started
            result.samples.setdefault(label, []).append(n / elapsed)
    return result


BIG_CODE = textwrap.dedent(
    """
    import resource, sys, time, tracemalloc
    client, host, path = sys.argv[1], sys.argv[2], sys.argv[5]
    port, size = int(sys.argv[3]), int(sys.argv[4])
    line = b"0123456789" * 7 + b"\\r\\n"
    head = b"From: a@example.com\\r\\nTo: b@example.org\\r\\nSubject: big\\r\\n\\r\\n"
    message = head + line * (size // len(line))
    import smtplug, smtplib, asyncio, aiosmtplib, smtplug.plugins
    smtplug.plugins.build_registry()  # load the plugins before measuring
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    if client == "smtplug":
        r = smtplug.sendmessage(message, servers=host, ports=port, usetls=False, client="localhost")
        assert r.accepted
    elif client == "smtplug (file)":
        del message
        with open(path, "rb") as f:
            r = smtplug.sendmessage(f, servers=host, ports=port, usetls=False, client="localhost")
        assert r.accepted
    elif client == "smtplib":
        with smtplib.SMTP(host, port, local_hostname="localhost") as c:
            assert not c.sendmail("a@example.com", ["b@example.org"], message)
    else:
        async def run():
            errors, _ = await aiosmtplib.send(message, sender="a@example.com",
                recipients=["b@example.org"], hostname=host, port=port, use_tls=False,
                start_tls=False, timeout=120)
            assert not errors
        asyncio.run(run())
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss
    print(elapsed, peak, rss * 1024)
    """
)


def big_message(
    host: str, port: int, size: int, rounds: int
) -> dict[str, list[tuple[float, int, int]]]:
    out: dict[str, list[tuple[float, int, int]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "big.eml")
        line = b"0123456789" * 7 + b"\r\n"
        with open(path, "wb") as handle:
            handle.write(b"From: a@example.com\r\nTo: b@example.org\r\nSubject: big\r\n\r\n")
            handle.write(line * (size // len(line)))
        for _ in range(rounds):
            for client in ("smtplug", "smtplug (file)", "smtplib", "aiosmtplib"):
                done = subprocess.run(
                    [sys.executable, "-c", BIG_CODE, client, host, str(port), str(size), path],
                    capture_output=True, text=True, timeout=600, check=True,
                )  # fmt: skip
                elapsed, peak, rss = done.stdout.split()
                out.setdefault(client, []).append((float(elapsed), int(peak), int(rss)))
    return out


@contextlib.contextmanager
def delayed_link(delay_ms: int = 10) -> Iterator[tuple[str, str] | None]:
    """A namespace behind a veth pair with netem delay each way: (ns, address)."""
    ns = f"smtplug-bench-{os.getpid()}"
    outer, inner = f"sbo{os.getpid() % 100000}", f"sbi{os.getpid() % 100000}"
    here, there = "10.253.77.1", "10.253.77.2"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
        ["ip", "link", "set", inner, "netns", ns],
        ["ip", "addr", "add", f"{here}/30", "dev", outer],
        ["ip", "link", "set", outer, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{there}/30", "dev", inner],
        ["ip", "netns", "exec", ns, "ip", "link", "set", inner, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
        ["tc", "qdisc", "add", "dev", outer, "root", "netem", "delay", f"{delay_ms}ms"],
        ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", inner, "root", "netem",
         "delay", f"{delay_ms}ms"],
    ]  # fmt: skip
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"scenario 5 skipped: {' '.join(step)}: {done.stderr.strip()}")
                yield None
                return
        yield ns, there
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def report(result: Result) -> None:
    print(f"\n{result.name}")
    medians = {c: statistics.median(v) for c, v in result.samples.items()}
    ours = medians.get("smtplug")
    for client, samples in result.samples.items():
        spread = (max(samples) - min(samples)) / 2 if len(samples) > 1 else 0.0
        ratio = (
            f"   smtplug is {ours / medians[client]:5.2f}x" if ours and client != "smtplug" else ""
        )
        print(f"  {client:<12} {medians[client]:9.1f} {result.unit} (±{spread:.1f}){ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a minute in all")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    wanted = {int(s) for s in args.scenarios.split(",")}
    quick = args.quick
    rounds = args.rounds or (3 if quick else 5)
    for tool in (SINK, SOURCE):
        if not os.path.exists(tool):
            print(f"{tool} is missing: apt-get install postfix")
            return 2
    import aiosmtplib

    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, smtplug "
          f"{smtplug.__version__}, aiosmtplib {aiosmtplib.__version__}")  # fmt: skip
    host = "127.0.0.1"
    with sink(host) as port:
        if 1 in wanted:
            report(run_rounds(
                "1. one small message per connection", {
                    "smtplug": smtplug_one_per_connection,
                    "smtplib": smtplib_one_per_connection,
                    "aiosmtplib": aiosmtplib_one_per_connection,
                    "smtp-source": lambda h, p, n, r: source(h, p, n, r, kept=False),
                }, host, port, 100 if quick else 500, [TO], rounds))  # fmt: skip
        if 2 in wanted:
            report(run_rounds(
                "2. small messages over one connection", {
                    "smtplug": smtplug_kept,
                    "smtplib": smtplib_kept,
                    "aiosmtplib": aiosmtplib_kept,
                    "smtp-source": lambda h, p, n, r: source(h, p, n, r, kept=True),
                }, host, port, 500 if quick else 5000, [TO], rounds))  # fmt: skip
        if 3 in wanted:
            report(run_rounds(
                "3. one message to 100 recipients, new connection each", {
                    "smtplug": smtplug_one_per_connection,
                    "smtplib": smtplib_one_per_connection,
                    "aiosmtplib": aiosmtplib_one_per_connection,
                    "smtp-source": lambda h, p, n, r: source(h, p, n, r, kept=False),
                }, host, port, 20 if quick else 200, HUNDRED, rounds))  # fmt: skip
        if 6 in wanted:
            report(run_rounds(
                "6. small messages over 8 concurrent connections", {
                    "smtplug": concurrently(smtplug_kept),
                    "smtplib": concurrently(smtplib_kept),
                    "aiosmtplib": aiosmtplib_concurrent,
                }, host, port, 8 * (50 if quick else 500), [TO], rounds))  # fmt: skip
        if 4 in wanted:
            size = (5 if quick else 50) * 1024 * 1024
            print(f"\n4. one {size // 2**20} MB message (time; memory beyond the caller's copy)")
            results = big_message(host, port, size, 1 if quick else 3)
            for client, samples in results.items():
                elapsed = statistics.median(s[0] for s in samples)
                peak = statistics.median(s[1] for s in samples) / size
                rss = statistics.median(s[2] for s in samples) / size
                print(f"  {client:<15} {elapsed:6.2f} s   traced peak {peak:5.2f}x   "
                      f"max RSS growth {rss:5.2f}x the message size")  # fmt: skip
    if 5 in wanted:
        with delayed_link() as link:
            if link is not None:
                ns, address = link
                with sink(address, netns=ns) as port:
                    report(run_rounds(
                        "5. scenario 3 over 10 ms delay each way", {
                            "smtplug": smtplug_one_per_connection,
                            "smtplib": smtplib_one_per_connection,
                            "aiosmtplib": aiosmtplib_one_per_connection,
                            "smtp-source": lambda h, p, n, r: source(h, p, n, r, kept=False),
                        }, address, port, 3 if quick else 10, HUNDRED, min(rounds, 3)))  # fmt: skip
    return 0


if __name__ == "__main__":
    if shutil.which("ip") is None:
        print("note: iproute2 is missing; scenario 5 will be skipped")
    raise SystemExit(main())
