"""Issue 15 against a real Postfix: a large message refused before its body
(at RCPT: Postfix's harness refuses the refused domain with 550 5.1.1) is not
uploaded (Postfix offers PIPELINING and CHUNKING: the one-flight path is the
risk), and the refusal is what the
caller sees; the kept Client then delivers the next message once. The
octets handed to the network are counted by the ``progress`` callback
(called after each chunk written). Postfix's own SIZE limit is refused
before MAIL (tests/interop/test_postfix_trust.py).
"""

from __future__ import annotations

import email
import email.policy
import time

import pytest

import smtplug
from apis import both_apis
from smtplug import source

pytestmark = [pytest.mark.interop, both_apis]


def big(to: str, subject: str, octets: int = 6 * source.CHUNK) -> bytes:
    line = b"z" * 998 + b"\r\n"
    head = f"From: alice@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n".encode()
    return head + line * (octets // len(line))


@pytest.mark.parametrize("atleastone", [False, True])
def test_a_large_message_refused_at_rcpt_is_not_uploaded(postfix_clean, atleastone):
    pf = postfix_clean
    uploaded: list[int] = []
    with smtplug.Client(
        servers=[pf.host], ports=[pf.plain_port], usetls=False, client="localhost", timeout=30
    ) as c:
        refused = c.sendmessage(
            big(f"x@{pf.refused_domain}", "refused"),
            atleastone=atleastone,
            progress=uploaded.append,
        )
        assert not refused.accepted and refused.recipients == ()
        ((address, code, _diagnostic),) = refused
        assert (address, code, refused[0].enhanced) == (f"x@{pf.refused_domain}", 550, "5.1.1")
        assert uploaded == [], "octets of the refused message were sent"
        after = c.sendmessage(big("bob@example.org", "after", 2 * source.CHUNK))
        assert after.accepted
    (got,) = pf.wait_for_messages(1, timeout=30)
    time.sleep(0.5)  # nothing else comes
    assert len(pf.messages()) == 1
    assert email.message_from_bytes(got, policy=email.policy.default)["Subject"] == "after"
