"""Postfix's smtp-sink as the benchmark's server, started and stopped by its PID.

The sink runs with ``-c``: it writes running counters ("sess=N quit=N
mesg=N" followed by a carriage return) whenever a session ends, QUIT is
executed or a message's "." is received. They go to a file that
:meth:`Sink.counters` reads, so every timed run can be checked against what
the sink actually received: a client that fails fast cannot pass for a fast one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import guard

SINK = "/usr/sbin/smtp-sink"

# -c counters; -a no AUTH (smtp-sink answers AUTH with 250 rather than 235),
# -C no XCLIENT, -F no XFORWARD (Postfix-only extensions no client here uses).
# PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES and DSN stay advertised.
SINK_FLAGS = ["-c", "-a", "-C", "-F"]

_RECORD = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


class SinkError(RuntimeError):
    pass


@dataclass(frozen=True)
class Counters:
    sessions: int
    quits: int
    messages: int


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at ``host`` right now (checked twice)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if not listening(host, port):
            return port
    raise SinkError("no free port found on 127.0.0.1")


def listening(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect((host, port))
        except OSError:
            return False
    return True


def listeners(port: int, netns: str | None = None) -> list[int] | None:
    """PIDs of the processes listening on TCP ``port`` (None when ``ss`` is missing)."""
    if shutil.which("ss") is None:
        return None
    command = ["ss", "-Hltnp", f"sport = :{port}"]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    return [int(pid) for pid in re.findall(r"pid=(\d+)", done.stdout)]


class Sink:
    """One smtp-sink process; use :func:`running_sink` to start and stop it."""

    def __init__(self, host: str, port: int, directory: str, netns: str | None = None) -> None:
        self.host = host
        self.port = port
        self.netns = netns
        self.out_path = os.path.join(directory, f"sink-{port}.counters")
        self.err_path = os.path.join(directory, f"sink-{port}.log")
        self.process: subprocess.Popen[bytes] | None = None
        self._out = -1
        self._token = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        command = [SINK, *SINK_FLAGS]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]  # smtp-sink refuses to run as root otherwise
        command += [f"{self.host}:{self.port}", "1000"]
        if self.netns is not None:
            # `ip netns exec` execs the command: the PID is smtp-sink's own.
            command = ["ip", "netns", "exec", self.netns, *command]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        self._token = guard.register(f"smtp-sink pid {self.process.pid}", self._kill)
        self._out = os.open(self.out_path, os.O_RDONLY)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise SinkError(f"smtp-sink exited at start: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as probe:
                    banner = probe.recv(200)
                if banner.startswith(b"220"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SinkError(f"smtp-sink did not answer within 10 s: {self.log_tail()}")
            time.sleep(0.05)
        pids = listeners(self.port, self.netns)
        if pids is not None and set(pids) != {self.process.pid}:
            raise SinkError(
                f"port {self.port} is shared with other processes {sorted(set(pids))} "
                f"(ours is {self.process.pid}): refusing to measure"
            )
        # The probe connection above is one session: wait until it is counted.
        self.wait_for(lambda c: c.sessions >= 1, 5)

    def counters(self) -> Counters:
        size = os.fstat(self._out).st_size
        tail = os.pread(self._out, 512, max(0, size - 512))
        records = _RECORD.findall(tail.rsplit(b"\r", 1)[0]) if b"\r" in tail else []
        if not records:
            return Counters(0, 0, 0)
        sessions, quits, messages = (int(value) for value in records[-1])
        return Counters(sessions, quits, messages)

    def wait_for(self, condition, seconds: float) -> Counters:
        """Poll the counters until ``condition(counters)`` holds or time is up."""
        deadline = time.monotonic() + seconds
        while True:
            current = self.counters()
            if condition(current) or time.monotonic() > deadline:
                return current
            time.sleep(0.002)

    def settle(self, seconds: float = 3.0) -> Counters:
        """Wait until the counters stop moving (100 ms unchanged), at most ``seconds``."""
        deadline = time.monotonic() + seconds
        previous = self.counters()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            current = self.counters()
            if current == previous:
                return current
            previous = current
        return previous

    def log_tail(self) -> str:
        try:
            with open(self.err_path, "rb") as handle:
                return handle.read()[-500:].decode("utf-8", "replace").strip() or "(no output)"
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # by PID: the process started by start()
            self.process.wait(5)

    def stop(self) -> None:
        guard.unregister(self._token)
        process, self.process = self.process, None
        if self._out >= 0:
            os.close(self._out)
            self._out = -1
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # by PID: only the process we started
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def running_sink(host: str = "127.0.0.1", netns: str | None = None) -> Iterator[Sink]:
    """smtp-sink on a free port of ``host`` (port 2525 inside ``netns``), stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="smtplug-bench-") as directory:
        port = free_port(host) if netns is None else 2525
        sink = Sink(host, port, directory, netns)
        try:
            sink.start()
            yield sink
        finally:
            sink.stop()
