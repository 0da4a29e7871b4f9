"""A server that refuses the message between its 354 and the message's octets
(a 554 right behind the 354, then it closes: the chaos soak's "refused
mid-body") is the server's word, not a protocol violation: the message is
refused with that reply, and nothing of it is written.

The 554 arrives in the same read as the 354, so the client finds it already
parsed when it is about to write the message (the check of unsolicited bytes
before a write), with PIPELINING (the flight's replies) and without.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import smtplug
from smtplug.errors import ProtocolError, ResponseError
from smtplug.testing import CLOSE, Answer, ScriptedServer

MESSAGE = (
    b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: early\r\n"
    b"Message-ID: <early@example.com>\r\n\r\nhello\r\n"
)
REFUSED = Answer(b"354 go ahead\r\n554 5.3.4 refused before the message\r\n", then=CLOSE)
ENVELOPE = {"originator": "alice@example.com", "recipients": ["bob@example.org"]}
CAPABILITIES = [["8BITMIME"], ["8BITMIME", "PIPELINING"]]


def options(server: ScriptedServer) -> dict[str, Any]:
    return {
        "servers": "127.0.0.1",
        "ports": server.port,
        "usetls": False,
        "client": "localhost",
        "timeout": 5,
        **ENVELOPE,
    }


def check(error: BaseException, server: ScriptedServer) -> None:
    assert isinstance(error, ResponseError) and not isinstance(error, ProtocolError)
    assert error.code == 554 and "refused before the message" in str(error)
    assert not error.transient
    server.wait_idle()
    (session,) = server.sessions
    assert not session.transactions[-1].content  # nothing of the message was written


@pytest.mark.parametrize("capabilities", CAPABILITIES, ids=["plain", "pipelining"])
def test_sendmessage(capabilities: list[str]) -> None:
    with ScriptedServer({"DATA": REFUSED}, capabilities=capabilities) as server:
        with pytest.raises(smtplug.SMTPError) as info:
            smtplug.sendmessage(MESSAGE, **options(server))
        check(info.value, server)


@pytest.mark.parametrize("capabilities", CAPABILITIES, ids=["plain", "pipelining"])
def test_asendmessage(capabilities: list[str]) -> None:
    with ScriptedServer({"DATA": REFUSED}, capabilities=capabilities) as server:
        with pytest.raises(smtplug.SMTPError) as info:
            asyncio.run(smtplug.asendmessage(MESSAGE, **options(server)))
        check(info.value, server)


def test_a_pool_batch_reports_it_refused() -> None:
    def first_session(command: Any) -> Answer | None:
        return REFUSED if command.session.index == 0 else None

    with ScriptedServer({"DATA": first_session}, capabilities=["8BITMIME", "PIPELINING"]) as server:
        connection = {k: v for k, v in options(server).items() if k not in ENVELOPE}
        with smtplug.Pool(**connection, max_connections=1) as pool:
            outcomes = list(pool.send_many([MESSAGE, MESSAGE], **ENVELOPE))
    assert [o.status for o in outcomes] == ["refused", "sent"]
    assert isinstance(outcomes[0].error, ResponseError) and outcomes[0].error.code == 554
    assert len(server.sessions) == 2  # (the refused one's connection is not reused)
