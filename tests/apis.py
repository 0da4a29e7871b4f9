"""Run the behavioural tests against both APIs, by parametrising, not copying.

A test module opts in with ``pytestmark = both_apis`` (or a test with
``@both_apis``): each of its tests then runs twice, ``[blocking]`` as
written and ``[asyncio]`` with ``smtplug.sendmessage`` and ``smtplug.Client``
replaced by thin blocking faces of :func:`smtplug.asendmessage` and
:class:`smtplug.AsyncClient`, which run on one event loop in a thread of
their own. So every assertion a test makes about results, errors,
transcripts and what the server received is made of the asyncio API too.
A test about the blocking API itself (threads sharing a Client, a
transport plugin without an async variant) is marked ``blocking_only``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import smtplug

T = TypeVar("T")

both_apis = pytest.mark.usefixtures("api")
blocking_only = pytest.mark.blocking_only

_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_guard = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _guard:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="asyncio-api", daemon=True)
            _thread.start()
        return _loop


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the shared loop and wait for it."""
    loop = _event_loop()
    if threading.current_thread() is _thread:
        coroutine.close()
        # (The blocking Client refuses a call from inside its own send the same way.)
        raise smtplug.InvalidInputError(
            "this Client is in the middle of a send on this thread (the call came "
            "from an observer or callback): use another Client"
        )
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


def asendmessage(message: object, **options: Any) -> smtplug.SendResult:
    return run(smtplug.asendmessage(message, **options))  # type: ignore[arg-type]


class AsyncClientFace:
    """:class:`smtplug.Client`'s shape over an :class:`smtplug.AsyncClient`."""

    def __init__(self, **options: Any) -> None:
        self.client = smtplug.AsyncClient(**options)

    def sendmessage(self, message: object, **options: Any) -> smtplug.SendResult:
        return run(self.client.sendmessage(message, **options))  # type: ignore[arg-type]

    def close(self) -> None:
        run(self.client.close())

    @property
    def connected(self) -> bool:
        return self.client.connected

    def __enter__(self) -> AsyncClientFace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self.client)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "api" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("blocking_only") is not None
    metafunc.parametrize("api", ["blocking"] if only else ["blocking", "asyncio"], indirect=True)


@pytest.fixture
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Which API this run of the test uses: ``"blocking"`` or ``"asyncio"``."""
    if request.param == "asyncio":
        # The loop thread first: a test counting threads or descriptors
        # around a send then sees only the send's.
        _event_loop()
        monkeypatch.setattr(smtplug, "sendmessage", asendmessage)
        monkeypatch.setattr(smtplug, "Client", AsyncClientFace)
    yield request.param
