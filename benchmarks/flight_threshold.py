"""Which messages should ride whole in the MAIL/RCPT flight (issue 15).

With PIPELINING and CHUNKING, a message sent with ``atleastone=True`` (or to
one recipient) can go in the same write as MAIL and RCPT ("one flight"): one
round trip per message. Or the client can wait for the MAIL/RCPT replies
first ("wait first"): a round trip more, but a server that refuses the
sender or the recipient is never sent the message. ``smtplug.session.
WHOLE_FLIGHT_MAX`` is the largest message that takes the one flight (at
most one BDAT chunk: a larger message is several chunks and always waits).

This measures both sides of that choice, for a few message sizes, over
loopback and over a link with a delay each way (benchmarks/delayproxy.py, a
user-space relay: latency without a bandwidth limit):

* accepted: the wall time per message of a kept ``smtplug.Client`` sending
  to a server that takes everything, with the one flight and waiting first;
* refused: a server that refuses the recipient (550 at RCPT): the octets of
  the message the server was sent before the refusal reached the client,
  and the wall time per refused message, both ways.

The server is ``smtplug.testing.ScriptedServer`` in a process of its own
(it counts what it receives), so its CPU time is not the client's. Run:

    python benchmarks/flight_threshold.py [--delay-ms 10] [--messages 20]

Only loopback; every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import smtplug
import smtplug.session as session

HERE = os.path.dirname(os.path.abspath(__file__))

SERVER = r"""
import json, sys, threading
from smtplug.testing import ScriptedServer
refuse = sys.argv[1] == "refuse"
script = {"RCPT": b"550 5.1.1 no such user\r\n"} if refuse else {}
server = ScriptedServer(script, capabilities=["PIPELINING", "CHUNKING", "8BITMIME"]).start()
print("ready", server.port, flush=True)
for line in sys.stdin:  # "count": octets of BDAT chunks received so far
    octets = sum(len(c) for s in server.sessions for t in s.transactions for c in t.chunks)
    print(json.dumps({"octets": octets}), flush=True)
server.stop()
"""


@contextmanager
def server(kind: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        words = process.stdout.readline().split()
        if words[:1] != ["ready"]:
            raise SystemExit("the scripted server did not start")
        yield int(words[1]), process
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def received(process: subprocess.Popen[str]) -> int:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("count\n")
    process.stdin.flush()
    return int(json.loads(process.stdout.readline())["octets"])


@contextmanager
def relay(port: int, delay_ms: float) -> Iterator[int]:
    """delayproxy.py in front of ``port`` (or nothing for no delay)."""
    if not delay_ms:
        yield port
        return
    command = [sys.executable, os.path.join(HERE, "delayproxy.py"), "127.0.0.1", str(port)]
    process = subprocess.Popen([*command, str(delay_ms), "3600"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        words = process.stdout.readline().split()
        if words[:1] != ["ready"]:
            raise SystemExit("the delay relay did not start")
        yield int(words[1])
    finally:
        process.kill()
        process.wait()


def message(size: int) -> bytes:
    head = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: size\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def per_message(port: int, body: bytes, count: int, *, one_flight: bool) -> float:
    """Seconds per message of a kept Client (median of the messages)."""
    session.WHOLE_FLIGHT_MAX = session.source.CHUNK if one_flight else -1
    times = []
    with smtplug.Client(servers="127.0.0.1", ports=port, usetls=False, timeout=60) as client:
        client.sendmessage(body, atleastone=True)  # the session is up before timing
        for _ in range(count):
            started = time.perf_counter()
            with contextlib.suppress(smtplug.ResponseError):  # the refusing server
                client.sendmessage(body, atleastone=True)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=10.0, help="each way (0: loopback only)")
    parser.add_argument("--messages", type=int, default=20, help="per size and way")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    # The largest just under one chunk with the headers prepare() adds.
    sizes = [16 << 10, 256 << 10, (1 << 20) - (8 << 10)]
    logging.getLogger("smtplug").setLevel(logging.ERROR)  # the refusals' warnings
    default = session.WHOLE_FLIGHT_MAX
    rows = []
    try:
        for delay in sorted({0.0, args.delay_ms}):
            for kind in ("accept", "refuse"):
                with server(kind) as (port, process), relay(port, delay) as front:
                    for size in sizes:
                        body = message(size)
                        row = {"delay_ms": delay, "server": kind, "size": len(body)}
                        for one_flight in (True, False):
                            before = received(process)
                            seconds = per_message(front, body, args.messages, one_flight=one_flight)
                            sent = (received(process) - before) / (args.messages + 1)
                            way = "one_flight" if one_flight else "wait_first"
                            row[f"{way}_ms"] = round(seconds * 1000, 2)
                            row[f"{way}_octets"] = round(sent)
                        rows.append(row)
    finally:
        session.WHOLE_FLIGHT_MAX = default
    print(f"{'delay':>6} {'server':>7} {'size':>9} | {'one flight':>18} | {'wait first':>18}")
    units = f"{'ms/msg':>8} {'octets':>9}"
    print(f"{'ms':>6} {'':>7} {'octets':>9} | {units} | {units}")
    for r in rows:
        print(
            f"{r['delay_ms']:>6g} {r['server']:>7} {r['size']:>9} | "
            f"{r['one_flight_ms']:>8} {r['one_flight_octets']:>9} | "
            f"{r['wait_first_ms']:>8} {r['wait_first_octets']:>9}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
