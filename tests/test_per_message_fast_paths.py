"""The per-message shortcuts of issue 16 behave exactly as the paths they skip.

Without a transcript, a retry policy, a deadline or anyone listening to
events, a send skips that machinery (no recording context, no retry wrapper,
no event object built); each test shows the shortcut is taken and that
whoever does ask still gets everything: the observers their events, the
transcript its lines, a deadline or retry its wrapper. Both APIs, over the
in-memory peer (tests/mockstream.py).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

import smtplug
from apis import both_apis
from mockstream import MockServer
from smtplug import events, hookimpl, retry

pytestmark = both_apis

MESSAGE = (
    b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: mock\r\n"
    b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m@example.com>\r\n\r\n"
    b"body\r\n"
)


def options(server: MockServer, **more: Any) -> dict[str, Any]:
    return {
        "servers": "mock.invalid",
        "client": "localhost",
        "usetls": False,
        "plugins": [server.plugin(), *more.pop("plugins", [])],
        "block_plugins": ["plain"],
        **more,
    }


@pytest.fixture
def built_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kinds of the Connecting events built (connect.py builds them
    through ``events.Connecting``)."""
    made: list[str] = []
    real = events.Connecting

    def counting(*args: Any, **kwargs: Any) -> events.Connecting:
        made.append("connecting")
        return real(*args, **kwargs)

    monkeypatch.setattr(events, "Connecting", counting)
    return made


class Listener:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    @hookimpl
    def smtplug_on_event(self, info: object, event: events.Event) -> None:
        self.kinds.append(event.kind)


def test_no_event_is_built_when_nobody_listens(api, built_events, caplog):
    caplog.set_level(logging.INFO, logger="smtplug")
    result = smtplug.sendmessage(MESSAGE, **options(MockServer()))
    assert result.accepted
    assert built_events == []


def test_an_observer_still_gets_every_event(api, built_events):
    listener = Listener()
    result = smtplug.sendmessage(MESSAGE, **options(MockServer(), plugins=[listener]))
    assert result.accepted
    assert listener.kinds == ["connecting", "closed"]
    assert built_events == ["connecting"]


def test_the_debug_log_still_gets_every_event(api, built_events, caplog):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    assert smtplug.sendmessage(MESSAGE, **options(MockServer())).accepted
    kinds = [getattr(r, "smtplug_event", None) for r in caplog.records]
    assert "connecting" in kinds and "closed" in kinds
    assert built_events == ["connecting"]


def test_debug_and_the_transcript_still_get_every_event(api, built_events, capsys):
    result = smtplug.sendmessage(MESSAGE, **options(MockServer(), debug=True, transcript=True))
    assert result.transcript is not None
    assert result.transcript[0] == "    ... Trying mock.invalid:25..."
    assert result.transcript[-1] == "    ... closed"
    assert "    ... Trying mock.invalid:25..." in capsys.readouterr().err
    assert built_events == ["connecting"]


def test_without_a_transcript_no_recording_is_made(api):
    server = MockServer()
    client = smtplug.Client(**options(server))
    observers = getattr(client, "client", client)._observers  # (the asyncio face's)
    assert observers.recording() is observers.recording()  # one shared null context
    with observers.recording() as lines:
        assert lines is None


def test_a_refused_send_without_a_transcript_carries_none(api):
    server = MockServer({"MAIL": b"550 5.7.1 no\r\n"})
    with pytest.raises(smtplug.ResponseError) as caught:
        smtplug.sendmessage(MESSAGE, **options(server))
    assert caught.value.transcript is None


@pytest.fixture
def guarded_calls(monkeypatch: pytest.MonkeyPatch) -> list[retry.Limits]:
    calls: list[retry.Limits] = []
    real = retry.guarded

    def counting(attempt: Any, limits: retry.Limits, *args: Any, **kwargs: Any) -> Any:
        calls.append(limits)
        return real(attempt, limits, *args, **kwargs)

    monkeypatch.setattr(retry, "guarded", counting)
    return calls


def test_no_retry_wrapper_without_retry_or_deadline(api, guarded_calls):
    assert smtplug.sendmessage(MESSAGE, **options(MockServer())).accepted
    assert guarded_calls == []


@pytest.mark.parametrize(
    ("client_options", "send_options", "expected"),
    [
        ({"deadline": 30}, {}, retry.Limits(None, 30.0)),
        ({}, {"deadline": 30}, retry.Limits(None, 30.0)),
        ({"retry": smtplug.Retry(attempts=2)}, {}, retry.Limits(smtplug.Retry(attempts=2))),
        ({}, {"retry": smtplug.Retry(attempts=2)}, retry.Limits(smtplug.Retry(attempts=2))),
        ({"retry": smtplug.Retry(attempts=2)}, {"retry": False}, retry.Limits(None, None)),
    ],
)
def test_a_retry_or_a_deadline_still_gets_the_wrapper(
    api, guarded_calls, client_options, send_options, expected
):
    server = MockServer()
    with smtplug.Client(**options(server, **client_options)) as client:
        assert client.sendmessage(MESSAGE, **send_options).accepted
    assert guarded_calls == [expected]


def test_a_bad_retry_on_a_send_is_refused_before_the_message_is_read(api):
    with pytest.raises(smtplug.InvalidInputError, match="retry must be"):
        smtplug.sendmessage(b"not a message at all", retry=3, **options(MockServer()))
