"""The transcript as logging records whose data are attributes (for JSON
log handlers), credentials redacted in them as everywhere."""

from __future__ import annotations

import base64
import logging
from email.message import EmailMessage

from scripted import client_for, send_to
from smtplug.testing import ScriptedServer

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
