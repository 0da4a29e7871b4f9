"""Clean shutdown whatever the clients are doing.

A signal handler that raises (KeyboardInterrupt, SystemExit) can be swallowed
inside a client library's event loop, so Ctrl-C, SIGTERM and SIGHUP do not
rely on unwinding: every resource the benchmark creates (the smtp-sink
process, the delay relay, child processes, the namespace and veth pair)
registers how to undo it here, and the handler undoes all of it, newest
first, then exits. A watchdog thread does the same when a scenario overruns
its time budget by far (its own SIGALRM limit failed to stop it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

_lock = threading.Lock()
_actions: dict[int, tuple[str, Callable[[], None]]] = {}
_tokens = itertools.count(1)


def register(label: str, action: Callable[[], None]) -> int:
    with _lock:
        token = next(_tokens)
        _actions[token] = (label, action)
    return token


def unregister(token: int) -> None:
    with _lock:
        _actions.pop(token, None)


def emergency_exit(code: int, why: str) -> NoReturn:
    """Undo everything registered (newest first) and leave at once."""
    with _lock:
        pending = sorted(_actions.items(), reverse=True)
        _actions.clear()
    _say(f"\n{why}: cleaning up ({len(pending)} item(s))")
    for _, (label, action) in pending:
        try:
            action()
        except BaseException as exc:  # keep going: the rest must be undone too
            _say(f"  could not undo {label}: {exc!r}")
        else:
            _say(f"  undone: {label}")
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    os._exit(code)


def _say(text: str) -> None:
    # os.write, not print: this may run inside a signal handler that
    # interrupted a print (a buffered stream is not reentrant).
    with contextlib.suppress(OSError):
        os.write(2, (text + "\n").encode())


def install_signal_handlers() -> None:
    def handler(signum: int, frame: object) -> None:
        emergency_exit(128 + signum, f"interrupted by {signal.Signals(signum).name}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


class Watchdog:
    """Hard stop when the armed deadline passes (checked twice a second)."""

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._label = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._thread.start()

    def arm(self, seconds: float, label: str) -> None:
        self._label = label
        self._deadline = time.monotonic() + seconds

    def disarm(self) -> None:
        self._deadline = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                emergency_exit(3, f"watchdog: {self._label} overran its hard limit")
