"""``python -m smtplug send-many`` against the real Postfix on loopback:
50 files of a directory over 4 connections, STARTTLS with --cafile; each
delivered once, and Postfix's log shows the reuse (at most 4 sessions)."""

from __future__ import annotations

import email
import email.policy

import pytest

from .test_postfix_cli import run
from .test_postfix_pool import sessions_since

pytestmark = pytest.mark.interop

COUNT = 50
CONNECTIONS = 4


def test_send_many_50_files_over_4_connections(postfix_clean, tmp_path):
    pf = postfix_clean
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    names = []
    for i in range(COUNT):
        name = f"{i:03}.eml"
        (outbox / name).write_bytes(
            f"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: send-many {i}\r\n"
            f"\r\nLine one.\r\n.A line starting with a dot.\r\n".encode()
        )
        names.append(name)
    offset = pf.log_offset()
    done = run(
        *("--server", f"{pf.host}:{pf.plain_port}", "--cafile", pf.ca),
        *("--connections", str(CONNECTIONS), str(outbox)),
        command="send-many",
        wait=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{outbox / n}: sent to 1 recipient" for n in names]
    assert done.stderr.splitlines() == [
        f"smtplug: {COUNT} messages: {COUNT} sent, 0 not sent, 0 delivery unknown"
    ]
    raw = pf.wait_for_messages(COUNT)
    got = [email.message_from_bytes(m, policy=email.policy.default) for m in raw]
    assert sorted(str(m["Subject"]) for m in got) == sorted(f"send-many {i}" for i in range(COUNT))
    assert all(".A line starting with a dot." in m.get_content() for m in got)
    found = sessions_since(pf, offset, COUNT)
    assert sum(n for _, n in found) == COUNT
    assert 1 <= len(found) <= CONNECTIONS < COUNT, found
    assert all("starttls=1" in line for line, _ in found)
