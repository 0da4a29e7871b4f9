"""Shared fixtures: in-process recording SMTP servers on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from apis import api, pytest_generate_tests  # noqa: F401 (fixtures for every test module)
from servers import RecordingServer
from smtplug.testing import server as servermod


@pytest.fixture
def smtp_server() -> Iterator[RecordingServer]:
    """A started RecordingServer with the default configuration."""
    with RecordingServer() as server:
        yield server


@pytest.fixture
def make_server() -> Iterator[Callable[..., RecordingServer]]:
    """A factory: ``make_server(**config)`` returns a started RecordingServer.

    Every server it made is stopped at teardown.
    """
    started: list[RecordingServer] = []

    def make(**config: Any) -> RecordingServer:
        server = RecordingServer(**config)
        server.start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under SMTPLUG_REQUIRE_INTEROP=1 (set by .ci/run) an interop skip fails.

    Interop tests skip on a machine without tclsh or Tcllib; CI installs them,
    so a skip there means the real peer was never exercised, and that must
    not pass.
    """
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and item.get_closest_marker("interop") is not None
        and os.environ.get("SMTPLUG_REQUIRE_INTEROP") == "1"
    ):
        report.outcome = "failed"
        report.longrepr = f"interop test skipped under SMTPLUG_REQUIRE_INTEROP=1: {report.longrepr}"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected socket pair: ours (with a 30 s timeout) and theirs."""
    ours, theirs = socket.socketpair()
    ours.settimeout(30)
    with ours, theirs:
        yield ours, theirs


@pytest.fixture
def pieces(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """What every ScriptedServer of the test read, one item per read (for
    tests of what went in one write: tests/test_chained_flights*.py)."""
    seen: list[bytes] = []
    received = servermod._Connection.data_received

    def record(self: Any, data: bytes) -> None:
        seen.append(bytes(data))
        received(self, data)

    monkeypatch.setattr(servermod._Connection, "data_received", record)
    yield seen
