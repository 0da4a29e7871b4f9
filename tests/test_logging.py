"""The transcript as logging records whose data are attributes (for JSON
log handlers), credentials redacted in them as everywhere."""

from __future__ import annotations

import base64
import json
import logging
from email.message import EmailMessage

import pytest

import smtplug
from apis import both_apis
from scripted import client_for, send_to
from smtplug.testing import CLOSE, ScriptedServer

PASSWORD = "s3cret-Pa55word"


def message(subject: str = "logs") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = subject
    msg.set_content("hello\n")
    return msg


def records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "smtplug_direction")]


def test_each_command_reply_and_event_is_a_record_with_its_data(caplog):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    with ScriptedServer({"RCPT": b"250 2.1.5 fine\r\n"}) as server:
        send_to([server], message())
    found = records(caplog)
    sent = [r for r in found if r.smtplug_direction == "sent"]
    received = [r for r in found if r.smtplug_direction == "received"]
    events = [r for r in found if r.smtplug_direction == "event"]
    assert [r.smtplug_verb for r in sent][:3] == ["EHLO", "MAIL", "RCPT"]
    rcpt = next(r for r in received if r.smtplug_code == 250 and r.smtplug_enhanced == "2.1.5")
    assert rcpt.getMessage().endswith("<-- 250 2.1.5 fine")
    assert events and all(r.levelno == logging.DEBUG for r in found)
    for record in found:
        assert record.smtplug_server == "127.0.0.1" and record.smtplug_port == server.port
        assert record.smtplug_tls is False
    assert len({r.smtplug_connection for r in found}) == 1
    assert found[0].smtplug_connection > 0


def test_two_connections_are_told_apart(caplog):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    with ScriptedServer() as server:
        send_to([server], message("one"))
        send_to([server], message("two"))
    assert len({r.smtplug_connection for r in records(caplog)}) == 2


def test_no_credential_in_any_record(caplog):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    with (
        ScriptedServer(capabilities=["AUTH PLAIN LOGIN", "8BITMIME"]) as server,
        client_for(server, username="alice", password=PASSWORD) as c,
    ):
        assert c.sendmessage(message()).accepted
    plain = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        assert PASSWORD not in text and plain not in text
    assert any(getattr(r, "smtplug_verb", None) == "AUTH" for r in caplog.records)


def test_no_record_work_when_debug_logging_is_off(caplog):
    caplog.set_level(logging.INFO, logger="smtplug")
    with ScriptedServer() as server:
        assert send_to([server], message()).accepted
    assert records(caplog) == []


# --- phases, typed event fields, a JSON handler --------------------------------------------

PHASES = {
    "connect",
    "greeting",
    "ehlo",
    "starttls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "bdat",
    "rset",
    "quit",
    "close",
}


def by_line(found: list[logging.LogRecord]) -> dict[str, str]:
    """The phase of each record, by its transcript text (the first of a kind)."""
    phases: dict[str, str] = {}
    for record in found:
        text = record.getMessage().split(" ", 1)[1]
        phases.setdefault(text, record.smtplug_phase)
    return phases


def test_every_record_has_the_phase_the_session_was_in(caplog):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    script = {("RCPT", 1): b"550 5.1.1 nobody\r\n"}
    with (
        ScriptedServer(script, capabilities=["AUTH PLAIN", "8BITMIME"]) as server,
        client_for(server, username="alice", password=PASSWORD) as c,
    ):
        assert not c.sendmessage(message()).accepted  # refused: RSET follows
        assert c.sendmessage(message()).accepted
    found = records(caplog)
    assert all(r.smtplug_phase in PHASES for r in found)
    phases = by_line(found)
    assert phases["<-- 220 scripted.test ESMTP ready"] == "greeting"
    assert phases["--> EHLO localhost"] == "ehlo"
    assert phases["--> AUTH PLAIN <redacted>"] == "auth"
    assert phases["    ... authenticated with PLAIN"] == "auth"
    assert phases["--> MAIL FROM:<alice@example.com>"] == "mail"
    assert phases["<-- 550 5.1.1 nobody"] == "rcpt"
    assert phases["--> RSET"] == "rset"
    assert phases["--> DATA"] == "data"
    assert phases["    ... closed"] == "close"
    assert phases[f"    ... Trying 127.0.0.1:{server.port}..."] == "connect"
    replies = [r for r in found if r.smtplug_direction == "received"]
    sent = [r for r in found if r.smtplug_direction == "sent"]
    assert [r.smtplug_phase for r in replies if r.smtplug_code == 354] == ["data"]
    assert "quit" in {r.smtplug_phase for r in sent} & {r.smtplug_phase for r in replies}


def test_pipelined_replies_get_the_phase_of_their_command(caplog):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    caps = ["PIPELINING", "8BITMIME"]
    with ScriptedServer({"RCPT": b"250 2.1.5 fine\r\n"}, capabilities=caps) as server:
        assert send_to([server], message()).accepted
    found = records(caplog)
    received = [r for r in found if r.smtplug_direction == "received"]
    assert [r.smtplug_phase for r in received if r.smtplug_enhanced == "2.1.5"] == ["rcpt"]
    assert [r.smtplug_phase for r in received if r.smtplug_code == 354] == ["data"]


def test_bdat_phase(caplog):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    with ScriptedServer(capabilities=["CHUNKING", "8BITMIME"]) as server:
        assert send_to([server], message()).accepted
    phases = {r.smtplug_phase for r in records(caplog) if r.smtplug_direction == "sent"}
    assert "bdat" in phases and "data" not in phases


def test_event_records_carry_the_kind_and_fields(caplog):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    with ScriptedServer(greeting=b"554 5.3.2 go away\r\n") as first, ScriptedServer() as second:
        assert send_to([first, second], message(), usetls=True).accepted
    found = [r for r in records(caplog) if r.smtplug_direction == "event"]
    kinds = [r.smtplug_event for r in found]
    assert kinds[:3] == ["connecting", "closed", "server_failed"]
    failed = found[2]
    assert failed.smtplug_port == first.port
    assert (failed.smtplug_error, failed.smtplug_code) == ("ResponseError", 554)
    assert "go away" in failed.smtplug_diagnostic
    tls = next(r for r in found if r.smtplug_event == "tls_not_used")
    assert (tls.smtplug_reason, tls.smtplug_policy, tls.smtplug_decision) == (
        "absent",
        "opportunistic",
        "insecure",
    )
    assert tls.smtplug_phase == "ehlo"


class JSONHandler(logging.Handler):
    """What a JSON log handler does: json.dumps the record's smtplug_* data."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        data = {k: v for k, v in vars(record).items() if k.startswith("smtplug_")}
        self.lines.append(json.dumps(data))  # no default=: every value must be JSON data


def test_a_json_handler_gets_data_for_every_record():
    handler = JSONHandler()
    smtplug_logger = logging.getLogger("smtplug")
    smtplug_logger.addHandler(handler)
    old = smtplug_logger.level
    smtplug_logger.setLevel(logging.DEBUG)
    try:
        with (
            ScriptedServer(capabilities=["AUTH PLAIN", "8BITMIME"]) as server,
            client_for(server, username="alice", password=PASSWORD, usetls=True) as c,
        ):
            assert c.sendmessage(message()).accepted
    finally:
        smtplug_logger.removeHandler(handler)
        smtplug_logger.setLevel(old)
    parsed = [json.loads(line) for line in handler.lines]
    data = [d for d in parsed if d]
    assert len(data) > 10
    for item in data:
        assert {"smtplug_direction", "smtplug_phase", "smtplug_server", "smtplug_port"} <= set(item)
        assert item["smtplug_phase"] in PHASES
        if item["smtplug_direction"] == "event":
            assert item["smtplug_event"] in smtplug.events.KINDS
    assert {"connecting", "tls_not_used", "authenticated", "closed"} <= {
        d.get("smtplug_event") for d in data
    }
    text = "\n".join(handler.lines)
    assert PASSWORD not in text and base64.b64encode(PASSWORD.encode()).decode() not in text


# --- the transcript on the result and on the error ----------------------------------------


@both_apis
def test_no_transcript_by_default():
    with ScriptedServer() as server:
        assert send_to([server], message()).transcript is None
    with (
        ScriptedServer({".": b"554 5.6.0 no\r\n"}) as server,
        client_for(server) as c,
        pytest.raises(smtplug.ResponseError) as info,
    ):
        c.sendmessage(message())
    assert info.value.transcript is None


@both_apis
def test_transcript_on_the_result_is_what_debug_prints(capsys):
    with ScriptedServer(capabilities=["AUTH PLAIN", "8BITMIME"]) as server:
        result = send_to(
            [server], message(), transcript=True, debug=True, username="alice", password=PASSWORD
        )
    printed = capsys.readouterr().err.splitlines()
    transcript = result.transcript
    assert isinstance(transcript, tuple) and transcript
    assert list(transcript) == printed  # the whole call, to the QUIT and the close
    assert transcript[0] == f"    ... Trying 127.0.0.1:{server.port}..."
    assert "--> AUTH PLAIN <redacted>" in transcript
    assert transcript[-3:] == ("--> QUIT", "<-- 221 2.0.0 Bye", "    ... closed")
    plain = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    assert not any(PASSWORD in line or plain in line for line in transcript)
    assert "transcript" not in repr(result) and "-->" not in repr(result)


@both_apis
def test_each_send_of_a_client_has_its_own_transcript():
    with ScriptedServer() as server, client_for(server, transcript=True) as c:
        first = c.sendmessage(message("one"))
        second = c.sendmessage(message("two"))
    assert first.transcript is not None and second.transcript is not None
    assert first.transcript[0].startswith("    ... Trying ")
    assert "--> EHLO localhost" in first.transcript
    # The second send reuses the session: its own lines only.
    assert not any("Trying" in line or "EHLO" in line for line in second.transcript)
    assert any(line.startswith("--> MAIL FROM:") for line in second.transcript)


@both_apis
def test_an_error_carries_the_transcript_of_its_send():
    with (
        ScriptedServer({".": CLOSE}) as server,
        pytest.raises(smtplug.DeliveryUnknownError) as info,
    ):
        send_to([server], message(), transcript=True)
    transcript = info.value.transcript
    assert transcript is not None
    assert "--> DATA" in transcript
    assert any(line.startswith("--> <message: ") for line in transcript)
    assert "transcript" not in repr(info.value) and "-->" not in repr(info.value)


@both_apis
def test_a_connect_error_carries_every_server_tried():
    with (
        ScriptedServer(greeting=b"554 5.3.2 go away\r\n") as server,
        pytest.raises(smtplug.ConnectError) as info,
    ):
        send_to([server], message(), transcript=True)
    transcript = info.value.transcript
    assert transcript is not None
    assert "<-- 554 5.3.2 go away" in transcript
    assert any(line.startswith("    ... server failed: 554") for line in transcript)


def test_a_pool_keeps_the_transcript_of_each_send_and_of_each_batch_message():
    with (
        ScriptedServer() as server,
        smtplug.Pool(servers="127.0.0.1", ports=server.port, usetls=False, transcript=True) as pool,
    ):
        result = pool.sendmessage(message("one"))
        outcomes = list(pool.send_many([message("two"), message("three")]))
    assert result.transcript is not None
    assert any(line.startswith("--> MAIL FROM:") for line in result.transcript)
    for outcome in outcomes:
        assert outcome.result is not None and outcome.result.transcript is not None
        assert sum(line.startswith("--> MAIL FROM:") for line in outcome.result.transcript) == 1


def test_an_async_pool_keeps_the_transcript_of_each_send_and_of_each_batch_message():
    import asyncio

    async def main(port: int) -> list[smtplug.SendResult]:
        async with smtplug.AsyncPool(
            servers="127.0.0.1", ports=port, usetls=False, transcript=True
        ) as pool:
            sent = list(await asyncio.gather(*(pool.sendmessage(message(n)) for n in "ab")))
            batch = [o.result async for o in pool.send_many([message("c"), message("d")])]
            return [*sent, *(r for r in batch if r is not None)]

    with ScriptedServer() as server:
        results = asyncio.run(main(server.port))
    assert len(results) == 4
    for result in results:
        assert result.transcript is not None
        assert sum(line.startswith("--> MAIL FROM:") for line in result.transcript) == 1


@both_apis
def test_transcript_is_a_flag():
    with pytest.raises(smtplug.InvalidInputError, match="transcript must be True or False"):
        smtplug.sendmessage(message(), servers="127.0.0.1", transcript="yes")


# --- no credential anywhere: records' fields, events, transcripts, reprs ----------------


@both_apis
def test_no_credential_in_events_fields_transcripts_or_reprs(caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    token = "ya29.secret-oauth-token"
    seen: list[object] = []

    class Observer:
        @smtplug.hookimpl
        def smtplug_on_event(self, info, event):
            seen.append(event)

    script = {("AUTH", 1): b"535 5.7.8 Bad token\r\n"}
    caps = ["AUTH XOAUTH2 PLAIN", "8BITMIME"]
    with ScriptedServer(script, capabilities=caps) as server:
        result = send_to(
            [server],
            message(),
            transcript=True,
            debug=True,
            plugins=[Observer()],
            username="alice",
            oauth_token=lambda: token,
            mechanisms=["XOAUTH2"],
        )
    with (
        ScriptedServer({"AUTH": b"535 5.7.8 no\r\n"}, capabilities=caps) as server,
        client_for(
            server, username="alice", password=PASSWORD, mechanisms=["PLAIN"], transcript=True
        ) as c,
        pytest.raises(smtplug.AuthenticationError) as info,
    ):
        c.sendmessage(message())
    assert any(isinstance(e, smtplug.events.TokenRefresh) for e in seen)
    texts = [record.getMessage() + repr(vars(record)) for record in caplog.records]
    texts += [str(e) + repr(e) + repr(getattr(e, "log_fields", dict)()) for e in seen]
    texts += list(result.transcript or ()) + list(info.value.transcript or ())
    texts += [repr(result), repr(info.value), str(info.value), capsys.readouterr().err]
    secrets = [PASSWORD, token, base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()]
    secrets.append(base64.b64encode(f"user=alice\x01auth=Bearer {token}\x01\x01".encode()).decode())
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert info.value.transcript and "--> AUTH PLAIN <redacted>" in info.value.transcript
