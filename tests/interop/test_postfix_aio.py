"""The asyncio API's own promises against a real Postfix on loopback.

tests/test_aio_api.py shows them against scripted servers; here the peer is
Postfix (tests/interop/postfix.sh) and what counts is what it delivered:

* 30 tasks sharing one AsyncClient over STARTTLS, with either TLS backend,
  deliver 30 messages, each exactly once, over one session;
* a send cancelled in the middle of a large body delivers nothing (Postfix
  never saw the end of the message), and the next send on the same client
  opens a new connection and is delivered.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time
from collections.abc import Callable
from email.message import EmailMessage

import pytest

import smtplug

pytestmark = pytest.mark.interop

BACKENDS = ["stdlib", "pyopenssl"]


def message(n: int, body: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = f"aio {n}"
    msg.set_content(body if body is not None else f"message number {n}\n")
    return msg


def subjects(raw: list[bytes]) -> list[str]:
    return [str(email.message_from_bytes(m, policy=email.policy.default)["Subject"]) for m in raw]


def starttls(pf, backend: str) -> dict[str, object]:
    return dict(
        servers=[pf.host], ports=[pf.plain_port], cafile=pf.ca, tls_backend=backend, timeout=30
    )


def log_until(pf, offset: int, done: Callable[[str], bool], bound: float = 10.0) -> str:
    """Postfix's log after ``offset`` once ``done`` holds for it (its daemons
    log asynchronously); the log so far after ``bound`` seconds (a hang)."""
    deadline = time.monotonic() + bound
    while True:
        text = pf.log.read_text(errors="replace")[offset:]
        if done(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_thirty_tasks_sharing_one_client_over_starttls(postfix_clean, backend) -> None:
    pf = postfix_clean
    offset = pf.log_offset()

    async def main() -> list[smtplug.SendResult]:
        async with smtplug.AsyncClient(**starttls(pf, backend)) as client:
            return await asyncio.gather(*(client.sendmessage(message(n)) for n in range(30)))

    results = asyncio.run(main())
    assert all(r == [] and r.accepted for r in results)
    assert all(r.tls is not None and r.tls.verified and r.tls.backend == backend for r in results)
    assert len({r.reply for r in results}) == 30  # each 250 names its own queue id
    delivered = pf.wait_for_messages(30)
    assert sorted(subjects(delivered)) == sorted(f"aio {n}" for n in range(30))
    # One session carried them all, one transaction after the other.
    log = pf.wait_for_log("disconnect from", offset)
    assert log.count(" connect from ") == 1, log
    assert re.search(r"disconnect from .* starttls=1 mail=30 rcpt=30 (bdat|data)=30 quit=1", log), (
        log
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_send_cancelled_mid_body_delivers_nothing(postfix_clean, backend) -> None:
    pf = postfix_clean
    body = "".join(f"line {i:07d} of a long message\n" for i in range(200_000))
    offset = pf.log_offset()

    async def main() -> None:
        async with smtplug.AsyncClient(**starttls(pf, backend)) as client:
            task: asyncio.Task[smtplug.SendResult] | None = None
            fired: list[int] = []

            def progress(octets: int) -> None:
                if octets > 1 << 20 and not fired and task is not None:
                    fired.append(octets)
                    task.cancel()

            task = asyncio.ensure_future(client.sendmessage(message(0, body), progress=progress))
            with pytest.raises(asyncio.CancelledError):
                await task
            assert fired and fired[0] < len(body)
            assert not client.connected
            result = await client.sendmessage(message(1))
            assert result.accepted and result.tls is not None

    asyncio.run(main())
    delivered = pf.wait_for_messages(1)
    # Postfix saw the first connection end in the middle of the message.
    log = log_until(pf, offset, lambda text: text.count("disconnect from") == 2)
    assert re.search(r"lost connection after (BDAT|DATA)", log), log
    assert log.count(" connect from ") == 2, log
    assert subjects(delivered) == ["aio 1"]
    assert subjects(pf.messages()) == ["aio 1"]
