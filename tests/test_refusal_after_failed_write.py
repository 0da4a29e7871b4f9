"""Issue 11 (a server reply lost to a write error), for both drivers, without
a socket: the server refuses the message and resets the connection, so the
client's write of the message fails while the refusal waits unread. The
driver must read what the server sent before giving up (its drain), and the
refusal, not the broken write, is what the caller sees.

Over loopback the refusal usually arrives between two chunks and is found by
the look the session takes there (tests/test_trust.py), so the read after a
failed write is not exercised; the in-memory peer makes the write fail every
time.
"""

from __future__ import annotations

import pytest

import smtplug
from apis import both_apis
from mockstream import MockServer, MockSession
from smtplug import ConnectionLostError, DeliveryUnknownError, ResponseError

pytestmark = both_apis

MESSAGE = (
    b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: mock\r\n"
    b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m@example.com>\r\n\r\n"
    b"body\r\n"
)
REFUSAL = b"554 5.3.4 message refused\r\n"


class RefusingSession(MockSession):
    """Answers the end of the message (the final "." or ``BDAT ... LAST``)
    with ``REFUSAL`` and resets the connection: the write that carried the end
    fails, the refusal unread."""

    reset = False

    def answer(self, verb: str) -> None:
        if verb == "." and self.server.refusing:  # type: ignore[attr-defined]
            self.server.refusing = False  # type: ignore[attr-defined]
            self.outgoing += REFUSAL
            self.closed = self.reset = True
            return
        super().answer(verb)

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.reset:
            raise ConnectionLostError("write to mock failed: [Errno 104] Connection reset by peer")


class RefusingServer(MockServer):
    refusing = True  # only the first message is refused

    def open(self) -> MockSession:
        session = RefusingSession(self)
        self.sessions.append(session)
        return session


CAPABILITIES = [["8BITMIME"], ["PIPELINING"], ["CHUNKING"], ["PIPELINING", "CHUNKING"]]
OPTIONS = {"servers": "mock.invalid", "client": "localhost", "usetls": False}


@pytest.mark.parametrize("capabilities", CAPABILITIES, ids="+".join)
def test_a_one_shot_send_reports_the_refusal_not_the_reset(capabilities):
    server = RefusingServer(capabilities=capabilities)
    with pytest.raises(ResponseError) as info:
        smtplug.sendmessage(MESSAGE, plugins=[server.plugin()], block_plugins=["plain"], **OPTIONS)
    error = info.value
    assert not isinstance(error, DeliveryUnknownError)
    assert (error.code, error.enhanced) == (554, "5.3.4"), error
    assert error.permanent and not error.transient and not error.may_have_been_delivered


@pytest.mark.parametrize("capabilities", CAPABILITIES, ids="+".join)
def test_a_kept_client_reports_the_refusal_and_reconnects(capabilities):
    server = RefusingServer(capabilities=capabilities)
    with smtplug.Client(plugins=[server.plugin()], block_plugins=["plain"], **OPTIONS) as c:
        with pytest.raises(ResponseError) as info:
            c.sendmessage(MESSAGE)
        assert (info.value.code, info.value.enhanced) == (554, "5.3.4"), info.value
        assert not info.value.may_have_been_delivered
        assert c.sendmessage(MESSAGE).accepted
    assert len(server.sessions) == 2
