"""Sending to smtplug.testing.ScriptedServer from tests: the usual options once.

Plain text, a 5 s wait and the EHLO name ``localhost`` unless a test says
otherwise; ``servers`` are the scripted servers given, on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import smtplug
from smtplug.testing import ScriptedServer


def _defaults(options: dict[str, Any]) -> dict[str, Any]:
    options.setdefault("usetls", False)
    options.setdefault("timeout", 5)
    options.setdefault("client", "localhost")
    return options


def send_to(servers: list[ScriptedServer], msg: object, **options: Any) -> smtplug.SendResult:
    """``smtplug.sendmessage(msg)`` to ``servers``, in order (failover)."""
    return smtplug.sendmessage(
        msg,
        servers=["127.0.0.1"] * len(servers),
        ports=[server.port for server in servers],
        **_defaults(options),
    )


def client_for(server: ScriptedServer, **options: Any) -> smtplug.Client:
    """A kept ``smtplug.Client`` for ``server``."""
    return smtplug.Client(servers="127.0.0.1", ports=server.port, **_defaults(options))


def subjects(server: ScriptedServer) -> list[str]:
    """The Subject of every complete transaction the server received."""
    found = []
    for session in server.sessions:
        for transaction in session.transactions:
            if transaction.complete:
                for line in transaction.content.split(b"\r\n"):
                    if line.startswith(b"Subject: "):
                        found.append(line[9:].decode())
    return found


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Held by one test process of the machine at a time (CI runs two
    Pythons' suites side by side): for what both would take at once, such
    as a fixed port or the free ports a Postfix is about to bind."""
    with open(Path(tempfile.gettempdir()) / f"smtplug-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
