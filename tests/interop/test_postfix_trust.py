"""Issue 11 against a real Postfix: the outcomes a user relies on.

- A kept Client whose first message was refused over pipelined BDAT (one
  refused recipient, the default atleastone=False) delivers the next message
  under its own sender, once (the refused BDAT left a transaction open that
  the next MAIL joined).
- One Client shared by 40 threads over STARTTLS, with both TLS backends:
  every message delivered exactly once, no crash, no hang.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections import Counter
from email.message import EmailMessage

import pytest

import smtplug
from apis import both_apis

pytestmark = [pytest.mark.interop, both_apis]


def message(subject: str, sender: str = "alice@example.com", to: str = "bob@example.org"):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hello.\n")
    return msg


def delivered(postfix, count):
    raw = postfix.wait_for_messages(count, timeout=30)
    return [email.message_from_bytes(m, policy=email.policy.default) for m in raw]


def test_a_refused_bdat_does_not_leak_into_the_next_message(postfix_clean):
    pf = postfix_clean
    with smtplug.Client(
        servers=[pf.host], ports=[pf.plain_port], usetls=False, client="localhost", timeout=30
    ) as c:
        first = c.sendmessage(message("one", "first@example.com", f"x@{pf.refused_domain}"))
        second = c.sendmessage(message("two", "second@example.com"))
    assert not first.accepted and first.recipients == ()
    ((address, code, _diagnostic),) = first
    assert (address, code, first[0].enhanced) == (f"x@{pf.refused_domain}", 550, "5.1.1")
    assert second.accepted and second == []
    (got,) = delivered(pf, 1)
    time.sleep(0.5)  # nothing else comes
    assert len(pf.messages()) == 1
    assert got["Subject"] == "two"
    assert got["Return-Path"] == "<second@example.com>"
    assert got["X-Original-To"] == "bob@example.org"


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
def test_one_client_shared_by_40_threads_over_starttls(postfix_clean, backend):
    pf = postfix_clean
    threads, each = 40, 3
    errors: list[BaseException] = []
    results: list[smtplug.SendResult] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)
    with smtplug.Client(
        servers=[pf.host], ports=[pf.plain_port], cafile=pf.ca, tls_backend=backend, timeout=30
    ) as c:

        def work(number: int) -> None:
            start.wait()
            for k in range(each):
                try:
                    result = c.sendmessage(message(f"{backend} {number}-{k}"))
                except BaseException as exc:
                    with lock:
                        errors.append(exc)
                else:
                    with lock:
                        results.append(result)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert not any(worker.is_alive() for worker in workers), "a thread hung"
    assert errors == []
    assert len(results) == threads * each
    assert all(r.accepted and r.tls is not None and r.tls.verified for r in results)
    got = delivered(pf, threads * each)
    subjects = Counter(m["Subject"] for m in got)
    assert len(subjects) == threads * each and set(subjects.values()) == {1}


def test_a_message_over_postfix_size_limit_is_refused_before_mail(postfix_clean):
    pf = postfix_clean
    with smtplug.Client(
        servers=[pf.host], ports=[pf.plain_port], usetls=False, client="localhost", timeout=30
    ) as c:
        # Postfix announces SIZE 10240000 (message_size_limit's default).
        assert c.sendmessage(message("probe")).accepted
        msg = message("too big")
        msg.set_content(("x" * 76 + "\n") * 140_000)  # about 10.8 MB
        with pytest.raises(smtplug.MessageTooLargeError) as info:
            c.sendmessage(msg)
        assert "10240000" in info.value.diagnostic
        assert c.sendmessage(message("after")).accepted
    got = delivered(pf, 2)
    time.sleep(0.5)
    assert sorted(m["Subject"] for m in got) == ["after", "probe"]
    assert len(pf.messages()) == 2
