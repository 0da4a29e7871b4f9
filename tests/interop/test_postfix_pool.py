"""smtplug.Pool and smtplug.AsyncPool against a real Postfix: STARTTLS, both backends.

Every message of a batch is delivered exactly once, and Postfix's log shows
the pool's reuse: few sessions (at most ``max_connections``), many messages
each (smtpd's ``disconnect from ... mail=N`` lines).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time
from email.message import EmailMessage

import pytest

import smtplug

pytestmark = pytest.mark.interop

BACKENDS = ["stdlib", "pyopenssl"]
COUNT = 40
CONNECTIONS = 4


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = subject
    msg.set_content("First line.\n.A line starting with a dot.\nLast line.\n")
    return msg


def sessions_since(pf, offset: int, messages: int, timeout: float = 10.0) -> list[tuple[str, int]]:
    """smtpd's disconnect lines after ``offset``: (the line, its mail= count),
    once they add up to ``messages`` (postlogd writes them a moment late)."""
    deadline = time.monotonic() + timeout
    while True:
        text = pf.log.read_text(errors="replace")[offset:]
        found = [
            (line, int(m.group(1)))
            for line in text.splitlines()
            if "disconnect from" in line and (m := re.search(r" mail=(\d+)", line))
        ]
        if sum(n for _, n in found) >= messages or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def check(pf, offset: int, outcomes: list[smtplug.Outcome], label: str) -> None:
    assert [o.status for o in outcomes] == ["sent"] * COUNT
    assert [o.message_index for o in outcomes] == list(range(COUNT))
    for o in outcomes:
        assert o.result is not None and o.result.tls is not None and o.result.tls.verified
    raw = pf.wait_for_messages(COUNT)
    got = [email.message_from_bytes(m, policy=email.policy.default)["Subject"] for m in raw]
    assert sorted(got) == sorted(f"{label} {i}" for i in range(COUNT))  # each once
    found = sessions_since(pf, offset, COUNT)
    assert sum(n for _, n in found) == COUNT
    assert 1 <= len(found) <= CONNECTIONS, found
    assert all("starttls=1" in line for line, _ in found)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_over_starttls(postfix_clean, backend):
    pf = postfix_clean
    offset = pf.log_offset()
    label = f"pool {backend}"
    with smtplug.Pool(
        servers=pf.host,
        ports=pf.plain_port,
        cafile=pf.ca,
        tls_backend=backend,
        timeout=30,
        max_connections=CONNECTIONS,
    ) as pool:
        outcomes = list(pool.send_many(message(f"{label} {i}") for i in range(COUNT)))
    check(pf, offset, outcomes, label)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_pool_over_starttls(postfix_clean, backend):
    pf = postfix_clean
    offset = pf.log_offset()
    label = f"asyncpool {backend}"

    async def main() -> list[smtplug.Outcome]:
        async with smtplug.AsyncPool(
            servers=pf.host,
            ports=pf.plain_port,
            cafile=pf.ca,
            tls_backend=backend,
            timeout=30,
            max_connections=CONNECTIONS,
        ) as pool:
            return [o async for o in pool.send_many(message(f"{label} {i}") for i in range(COUNT))]

    check(pf, offset, asyncio.run(main()), label)
