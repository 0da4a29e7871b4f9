"""Fixtures for tests against a real Postfix (see postfix.sh and postfix.py).

``postfix`` starts one throwaway Postfix instance per test session and stops
it at the end; ``postfix_clean`` is the same instance with its Maildir
emptied first. Tests using them should be marked ``@pytest.mark.interop``:
on a machine where the harness cannot run (not root, packages not
installable) they skip, and under SMTPLUG_REQUIRE_INTEROP=1 the top-level
conftest turns that skip into a failure.

Where the instance lives: ``$SMTPLUG_POSTFIX_DIR`` when set (kept afterwards,
for looking at), otherwise a fresh directory made with ``tempfile.mkdtemp``
(removed at the end). Not pytest's ``tmp_path_factory``: its base directory
is mode 0700, and Postfix's unprivileged daemons must reach the sasldb and the
Maildir. Ports: ``SMTPLUG_POSTFIX_PLAIN_PORT``/``_SUBMISSION_PORT``/
``_SMTPS_PORT`` when set, otherwise three free ports the kernel picks, so that
test sessions running side by side on one machine do not collide.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripted import machine_lock

from .postfix import Postfix, PostfixUnavailable

_PORT_VARIABLES = (
    "SMTPLUG_POSTFIX_PLAIN_PORT",
    "SMTPLUG_POSTFIX_SUBMISSION_PORT",
    "SMTPLUG_POSTFIX_SMTPS_PORT",
)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def postfix() -> Iterator[Postfix]:
    """A running throwaway Postfix on 127.0.0.1, shared by the whole session."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("the Postfix harness needs root (it installs packages and runs a master)")
    chosen = os.environ.get("SMTPLUG_POSTFIX_DIR")
    if chosen:
        directory = Path(chosen)
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="smtplug-postfix-"))
    ports = [int(os.environ.get(name) or 0) for name in _PORT_VARIABLES]
    server = Postfix()
    try:
        # One session at a time picks free ports and starts its Postfix (until
        # its master listens: start waits for the banners). Two sessions side
        # by side once picked the same port for two masters, which shared it.
        with machine_lock("postfix-start"):
            free = iter(_free_ports(ports.count(0)))
            plain, submission, smtps = (port or next(free) for port in ports)
            server.start(directory, plain_port=plain, submission_port=submission, smtps_port=smtps)
    except PostfixUnavailable as exc:
        if not chosen:
            shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"Postfix harness unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()
        if not chosen:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postfix_clean(postfix: Postfix) -> Postfix:
    """The session's Postfix with an empty Maildir."""
    postfix.clear()
    return postfix
