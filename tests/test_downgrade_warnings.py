"""Issue 11, what the user sees: a downgrade to plain text under the
opportunistic policy is a WARNING for each cause the issue names. STARTTLS
absent and refused are in tests/test_trust.py; here the two after a 220 to
STARTTLS: the handshake failed (the server hangs up) and the handshake timed
out (the server says nothing). Both APIs.
"""

from __future__ import annotations

import logging

import pytest

from apis import both_apis
from scripted import send_to
from smtplug.testing import CLOSE, STALL, Answer, ScriptedServer
from test_trust import message

pytestmark = both_apis


def first_session(action):
    """STARTTLS answered 220, then ``action``; the client's fresh plain
    session (after the downgrade) never asks again."""

    def rule(command):
        return Answer(b"220 2.0.0 go ahead\r\n", then=action)

    return rule


@pytest.mark.parametrize("action", [CLOSE, STALL], ids=["hang-up", "silent"])
def test_a_downgrade_after_a_failed_handshake_is_a_warning(caplog, action):
    caplog.set_level(logging.WARNING, logger="smtplug")
    script = {"STARTTLS": first_session(action)}
    with ScriptedServer(script, capabilities=["STARTTLS", "8BITMIME"]) as server:
        result = send_to([server], message(), usetls=True, timeout=1)
        server.wait_idle()
    assert result.accepted and result.tls is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "WITHOUT TLS" in warnings[0] and "(handshake:" in warnings[0], warnings
    if action is STALL:
        assert "timed out" in warnings[0], warnings
    # The message went over the second, plain session.
    assert [len(s.transactions) for s in server.sessions] == [0, 1]
