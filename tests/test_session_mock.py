"""Session behaviour without a socket: both APIs over tests/mockstream.py.

The in-memory peer answers synchronously, so these tests show exactly what
the programs write (every octet) and decide, for both drivers, with no
network, no thread and no wait.
"""

from __future__ import annotations

import pytest

import smtplug
from apis import both_apis
from mockstream import MockServer
from smtplug import ResponseError

pytestmark = both_apis

MESSAGE = (
    b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: mock\r\n"
    b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m@example.com>\r\n\r\n"
    b".leading dot\r\nbody\r\n"
)


def send(server: MockServer, **options: object) -> smtplug.SendResult:
    return smtplug.sendmessage(
        MESSAGE,
        servers="mock.invalid",
        client="localhost",
        usetls=False,
        plugins=[server.plugin()],
        block_plugins=["plain"],
        **options,
    )


def test_one_pipelined_flight_and_the_exact_octets():
    server = MockServer()
    result = send(server, atleastone=True)
    assert result == [] and result.accepted
    (wire,) = server.received
    assert wire == (
        b"EHLO localhost\r\n"
        b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        + MESSAGE.replace(b"\r\n.leading", b"\r\n..leading")
        + b".\r\nQUIT\r\n"
    )


def test_bdat_carries_the_message_unstuffed():
    server = MockServer(capabilities=["PIPELINING", "CHUNKING"])
    assert send(server).accepted
    (wire,) = server.received
    assert f"BDAT {len(MESSAGE)} LAST\r\n".encode() + MESSAGE in wire


def test_a_refused_recipient_leaves_the_message_unsent_and_is_reset():
    server = MockServer({"RCPT": b"550 5.1.1 no such user\r\n"})
    with smtplug.Client(
        servers="mock.invalid",
        client="localhost",
        usetls=False,
        plugins=[server.plugin()],
        block_plugins=["plain"],
    ) as client:
        result = client.sendmessage(MESSAGE)
        assert not result.accepted
        assert [tuple(r) for r in result] == [("bob@example.org", 550, "5.1.1 no such user")]
    (wire,) = server.received
    # DATA went in the flight (one recipient), was refused, and RSET followed.
    assert b"Subject: mock" not in wire
    assert b"DATA\r\nRSET\r\n" in wire


def test_a_refused_mail_is_the_servers_error():
    server = MockServer({"MAIL": b"553 5.1.8 sender refused\r\n"})
    with pytest.raises(ResponseError) as info:
        send(server)
    assert info.value.code == 553 and info.value.enhanced == "5.1.8"


def test_a_kept_client_sends_many_over_one_session():
    server = MockServer()
    with smtplug.Client(
        servers="mock.invalid",
        client="localhost",
        usetls=False,
        plugins=[server.plugin()],
        block_plugins=["plain"],
    ) as client:
        for _ in range(5):
            assert client.sendmessage(MESSAGE).accepted
    (wire,) = server.received
    assert wire.count(b"MAIL FROM:") == 5 and wire.endswith(b"QUIT\r\n")
