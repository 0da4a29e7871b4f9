"""docs/examples/celery_tasks.py (docs/celery.md) run by a real Celery worker.

The worker runs in a thread of this process (celery.contrib.testing's
start_worker, the solo pool) on Celery's in-memory broker and result backend,
and sends to smtplug.testing.ScriptedServer: every outcome of a send becomes
the task's success, retry or failure as docs/celery.md says.
"""

from __future__ import annotations

import contextlib
import email
import importlib.util
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery import signals
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state

from smtplug.testing import CLOSE, ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "celery_tasks.py"
DOC = ROOT / "docs" / "celery.md"
WAIT = 60.0  # (a bound on waiting for a result, never a measured time)

MESSAGE = (
    b"From: shop@example.com\r\n"
    b"To: alice@example.org, bob@example.org\r\n"
    b"Subject: Your order\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=latin-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Danke sch\xf6n.\r\n"  # not UTF-8: kombu's JSON carries it as base64
)


def message_id(content: bytes) -> str | None:
    value = email.message_from_bytes(content)["Message-ID"]
    return None if value is None else str(value).strip()


def keep_logging(**_: Any) -> None:
    """A setup_logging receiver: Celery then configures no logging at all."""


@pytest.fixture(scope="module")
def tasks() -> Iterator[ModuleType]:
    """The example module, as a worker imports it, on the in-memory broker.

    Celery's worker set-up would change the process's logging (the root
    logger's level and handlers), capture warnings and set environment
    variables: for the tests after these, none of it is left behind.
    """
    spec = importlib.util.spec_from_file_location("celery_tasks", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["celery_tasks"] = module  # (where the result backend finds MailNotSent)
    signals.setup_logging.connect(keep_logging)
    environ = dict(os.environ)
    try:
        spec.loader.exec_module(module)
        module.app.conf.update(
            broker_url="memory://",
            result_backend="cache+memory://",
            # The worker looks for tasks every 50 ms, not every second.
            broker_transport_options={"polling_interval": 0.05},
            smtplug_retry_delay=0,  # retried at once: the test waits on results, not time
            worker_hijack_root_logger=False,
        )
        with warnings.catch_warnings():  # (Celery's warnings filters)
            yield module
    finally:
        with contextlib.suppress(Exception):
            module.close_pool()
        sys.modules.pop("celery_tasks", None)
        signals.setup_logging.disconnect(keep_logging)
        logging.captureWarnings(False)
        os.environ.clear()
        os.environ.update(environ)


@contextlib.contextmanager
def worker(tasks: ModuleType, server: ScriptedServer, **conf: Any) -> Iterator[None]:
    """A real worker (solo pool, in a thread) whose pool sends to ``server``."""
    app = tasks.app
    saved = {name: app.conf[name] for name in conf}
    app.conf.smtplug_pool = {
        "servers": "127.0.0.1",
        "ports": server.port,
        "usetls": False,
        "max_connections": 1,
    }
    app.conf.update(conf)
    stopped = threading.Event()

    def on_shutdown(**_: Any) -> None:
        stopped.set()

    signals.worker_shutdown.connect(on_shutdown, weak=False)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=WAIT):
            yield
            # A warm shutdown, as SIGTERM asks a worker for: its loop raises
            # WorkerShutdown and the worker sends worker_shutdown as it stops
            # (start_worker alone would stop it cold, without that signal).
            # It takes two turns of the worker's loop, about 4 s, idle.
            worker_state.should_stop = 0
            assert stopped.wait(WAIT)
    finally:
        worker_state.should_stop = None
        signals.worker_shutdown.disconnect(on_shutdown)
        app.conf.update(saved)
    assert tasks._pool is None  # closed by close_pool at worker_shutdown


@pytest.fixture
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("mail_tasks")
    level = logger.level
    logger.setLevel(logging.WARNING)  # (whatever the root logger says)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_sent_through_one_pool_closed_at_worker_shutdown(tasks):
    def no_bob(command: Any) -> bytes | None:
        return b"550 5.1.1 No such user\r\n" if "bob@" in command.args else None

    with ScriptedServer({"RCPT": no_bob}) as server:
        with worker(tasks, server):
            first = tasks.queue_email(MESSAGE).get(timeout=WAIT, interval=0.05)
            second = tasks.queue_email(MESSAGE).get(timeout=WAIT, interval=0.05)
            # Both over the one connection of the worker's pool, still open.
            assert server.connections == 1
            assert "QUIT" not in server.sessions[0].verbs
        server.wait_idle()

    session = server.sessions[0]
    assert session.verbs[-1] == "QUIT"  # the worker's shutdown closed the pool
    assert [t.complete for t in session.transactions] == [True, True]
    for summary, transaction in zip([first, second], session.transactions, strict=True):
        assert summary["status"] == "sent"
        assert summary["attempts"] == 1
        assert summary["refused"] == [["bob@example.org", 550, "5.1.1 No such user"]]
        assert transaction.content.endswith(b"\r\n\r\nDanke sch\xf6n.\r\n")  # byte for byte
        assert message_id(transaction.content) == summary["message_id"]
    assert first["message_id"] != second["message_id"]


@pytest.mark.parametrize(
    "script",
    [
        {".": b"554 5.6.0 Message rejected\r\n"},
        {"RCPT": b"550 5.1.1 No such user\r\n"},  # every recipient refused
        {"MAIL": b"553 5.7.1 Sender not allowed\r\n"},
    ],
    ids=["end-of-data", "every-recipient", "mail"],
)
def test_permanent_refusal_fails_without_retry(tasks, script):
    with ScriptedServer(script) as server:
        with worker(tasks, server):
            result = tasks.queue_email(MESSAGE)
            with pytest.raises(tasks.MailNotSent) as failed:
                result.get(timeout=WAIT, interval=0.05)
            assert result.state == "FAILURE"
        server.wait_idle()

    summary = failed.value.args[0]
    assert summary["status"] == "refused"
    assert summary["attempts"] == 1
    assert server.connections == 1
    assert len(server.sessions[0].transactions) == 1  # one attempt, none after it


def test_421_is_retried_with_the_same_message_id(tasks):
    def busy_first(command: Any) -> bytes | None:
        return b"421 4.3.2 Shutting down\r\n" if command.session.index == 0 else None

    # Queued without a Message-ID: the task fixes one before its first attempt.
    assert message_id(MESSAGE) is None
    with ScriptedServer({".": busy_first}) as server:
        with worker(tasks, server):
            summary = tasks.send_email.delay(MESSAGE).get(timeout=WAIT, interval=0.05)
        server.wait_idle()

    assert summary["status"] == "sent"
    assert summary["attempts"] == 2
    refused, accepted = server.sessions  # the 421 broke the first connection
    assert [t.complete for t in refused.transactions] == [True]
    assert [t.complete for t in accepted.transactions] == [True]  # the server has it once
    assert message_id(refused.transactions[0].content) == summary["message_id"]
    assert message_id(accepted.transactions[0].content) == summary["message_id"]


def test_retries_are_bounded(tasks):
    with ScriptedServer({"MAIL": b"451 4.3.0 Try again later\r\n"}) as server:
        with worker(tasks, server, smtplug_max_retries=2):
            result = tasks.queue_email(MESSAGE)
            with pytest.raises(tasks.MailNotSent) as failed:
                result.get(timeout=WAIT, interval=0.05)
        server.wait_idle()

    summary = failed.value.args[0]
    assert summary["status"] == "refused"
    assert summary["attempts"] == 3  # the first and two retries
    mails = [c for s in server.sessions for c in s.commands if c.verb == "MAIL"]
    assert len(mails) == 3


def test_delivery_unknown_is_flagged_not_retried(tasks, warnings_logged):
    def close_first(command: Any) -> Any:
        return CLOSE if command.session.index == 0 else None

    with ScriptedServer({".": close_first}) as server:
        with worker(tasks, server):
            summary = tasks.queue_email(MESSAGE).get(timeout=WAIT, interval=0.05)
        server.wait_idle()

    assert summary["status"] == "unknown"
    assert summary["attempts"] == 1
    assert server.connections == 1  # not sent again (a retry would have been accepted)
    transaction = server.sessions[0].transactions[0]
    assert transaction.complete
    assert message_id(transaction.content) == summary["message_id"]
    [record] = warnings_logged
    assert record.levelno == logging.WARNING
    assert summary["message_id"] in record.getMessage()


def test_a_forked_worker_process_leaves_the_parents_pool_alone(tasks):
    """The worker_process_init handler in a child process: the pool made by
    the parent is dropped there, neither used nor closed (no QUIT on the
    parent's connection), and the parent goes on using it."""
    receivers = tasks.signals.worker_process_init._live_receivers(sender=None)
    assert tasks.forget_inherited_pool in receivers
    with ScriptedServer() as server:
        tasks.app.conf.smtplug_pool = {
            "servers": "127.0.0.1",
            "ports": server.port,
            "usetls": False,
            "max_connections": 1,
        }
        try:
            pool = tasks.get_pool()
            pool.sendmessage(MESSAGE)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # (fork with threads)
                child = os.fork()
            if child == 0:  # the child: as little as possible, then _exit
                code = 1
                try:
                    tasks.forget_inherited_pool()
                    inherited_dropped = tasks._pool is None
                    tasks.close_pool()  # as worker_process_shutdown would
                    code = 0 if inherited_dropped else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(child, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert tasks.get_pool() is pool  # the parent's own, still
            pool.sendmessage(MESSAGE)  # over the same connection
            assert server.connections == 1
            assert "QUIT" not in server.sessions[0].verbs
        finally:
            tasks.close_pool()
        server.wait_idle()
    assert server.sessions[0].verbs[-1] == "QUIT"


def test_the_doc_shows_the_code_that_runs():
    """Every python block of docs/celery.md is a verbatim excerpt of the module."""
    code = EXAMPLE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        assert block in code, block
