"""Sending mail from Celery tasks with smtplug (docs/celery.md explains it).

One ``smtplug.Pool`` per worker process, made on first use and closed when
the process ends; one task, ``send_email``, whose outcome becomes Celery's
retry, failure or success. tests/test_celery.py runs this module on Celery's
in-memory broker with a real worker.
"""

from __future__ import annotations

import atexit
import email.parser
import email.policy
import email.utils
import logging
import os
import threading
from typing import Any

from celery import Celery, Task, signals
from celery.utils.time import get_exponential_backoff_interval

import smtplug

logger = logging.getLogger("mail_tasks")

app = Celery("mail_tasks")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    task_serializer="json",  # the message travels as bytes: kombu's JSON keeps them exact
    accept_content=["json"],
    # The options of the worker's smtplug.Pool (docs/pool.md, docs/options.md).
    smtplug_pool={
        "servers": os.environ.get("SMTP_SERVER", "localhost"),
        "ports": int(os.environ.get("SMTP_PORT", "587")),
        "username": os.environ.get("SMTP_USERNAME"),
        "password": os.environ.get("SMTP_PASSWORD"),
        # prefork (Celery's default) runs one task at a time per process: one
        # connection; with --pool threads, the worker's --concurrency.
        "max_connections": 1,
        "max_messages_per_connection": 100,
        "idle_timeout": 60,
    },
    # Retries of a temporary failure, 8 at most: within 60 s, 120 s, 240 s ...
    # (at most an hour; each wait drawn at random below that: full jitter).
    smtplug_retry_delay=60,
    smtplug_retry_delay_max=3600,
    smtplug_max_retries=8,
    # The message options of every send (docs/options.md): deliver to the
    # recipients the server accepts; the refused ones are in the summary.
    smtplug_message_options={"atleastone": True},
)


# -- one pool per worker process ---------------------------------------------------

_pool: smtplug.Pool | None = None
_pool_pid = 0  # the process that made _pool
_pool_lock = threading.Lock()


def get_pool() -> smtplug.Pool:
    """This process's pool, made on first use (threads of one process share it)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # (a pool inherited by fork: not ours)
            _pool = smtplug.Pool(**app.conf.smtplug_pool)
            _pool_pid = os.getpid()
        return _pool


@signals.worker_process_init.connect
def forget_inherited_pool(**_: Any) -> None:
    """In a new worker process: a pool the parent made before the fork holds
    the parent's connections; this process neither uses nor closes them."""
    global _pool, _pool_lock
    if _pool_pid != os.getpid():
        _pool = None
        _pool_lock = threading.Lock()  # (it may have been held at the fork)


@signals.worker_process_shutdown.connect  # a prefork child ending
@signals.worker_shutdown.connect  # the worker's main process (solo, threads pools)
def close_pool(**_: Any) -> None:
    """QUIT and close this process's connections (a no-op without a pool)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and _pool_pid == os.getpid():
        pool.close()


atexit.register(close_pool)  # any other process that sent (eager tasks, a script)


# -- the message ---------------------------------------------------------------------


def with_message_id(message: bytes) -> tuple[bytes, str]:
    """The message with a Message-ID, and that Message-ID.

    Fixed once, before the first attempt: a retried task sends these same
    bytes, so a receiver (or a human) can tell a second delivery of the same
    message from a new one. A Message-ID the message has is kept.
    """
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message)
    message_id = headers["Message-ID"]
    if message_id:
        return message, str(message_id).strip()
    sender = email.utils.parseaddr(str(headers["From"] or ""))[1]
    message_id = email.utils.make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    newline = b"\r\n" if b"\r\n" in message else b"\n"
    return b"Message-ID: " + message_id.encode("ascii") + newline + message, message_id


class MailNotSent(Exception):
    """The message was not sent and will not be tried again.

    ``args[0]`` is the summary ``send_email`` would have returned (status,
    message_id, error, refused ...): JSON, so a result backend keeps it.
    """


# -- the task ------------------------------------------------------------------------


@app.task(bind=True, name="mail.send_email", acks_late=True, throws=(MailNotSent,))
def send_email(
    self: Task,
    message: bytes,
    recipients: list[str] | None = None,
    originator: str | None = None,
) -> dict[str, Any]:
    """Send ``message`` (the bytes of an RFC 5322 message) through this
    process's pool, to ``recipients`` (default: its To, Cc and Bcc).

    Returns a summary, ``{"status": "sent", "message_id": ..., "refused":
    [[address, code, diagnostic], ...], "attempts": n}``; ``"status":
    "unknown"`` when the server may or may not have it (logged at WARNING,
    not retried). Retries a temporary failure; raises :class:`MailNotSent`
    for a permanent one, or once the retries are spent.
    """
    message, message_id = with_message_id(message)
    options: dict[str, Any] = dict(self.app.conf.smtplug_message_options)
    if recipients is not None:
        options["recipients"] = recipients
    if originator is not None:
        options["originator"] = originator
    try:
        outcome = smtplug.Outcome(0, get_pool().sendmessage(message, **options), None)
    except smtplug.SMTPError as exc:
        outcome = smtplug.Outcome(0, None, exc)

    summary: dict[str, Any] = {
        "status": outcome.status,
        "message_id": message_id,
        "attempts": self.request.retries + 1,
    }
    if outcome.result is not None:
        summary["refused"] = [list(refused) for refused in outcome.result]
    if outcome.error is not None:
        summary["error"] = str(outcome.error)

    if outcome.status == "sent":  # (with atleastone=True some recipients may be refused)
        return summary
    if outcome.status == "unknown":
        # The end of the message went out and no reply came back: sending it
        # again may deliver it twice. A human, or a receiver that drops a
        # Message-ID it has seen, decides; the task does not retry.
        logger.warning(
            "delivery unknown, not retried: Message-ID %s (task %s): %s",
            message_id,
            self.request.id,
            outcome.error,
        )
        return summary

    # "refused" or "not_sent": the server does not have the message.
    if outcome.error is not None:
        temporary = outcome.error.transient  # 4xx before the end, a lost connection ...
    else:  # every recipient refused: temporary only if every refusal is (4xx, greylisting)
        temporary = all(refused.transient for refused in outcome.result or ())
    if not temporary:
        raise MailNotSent(summary) from outcome.error
    conf = self.app.conf
    raise self.retry(
        args=(message, recipients, originator),  # the same bytes: the same Message-ID
        kwargs={},
        countdown=get_exponential_backoff_interval(
            conf.smtplug_retry_delay,
            self.request.retries,
            conf.smtplug_retry_delay_max,
            full_jitter=True,
        ),
        max_retries=conf.smtplug_max_retries,
        exc=MailNotSent(summary),  # raised instead once the retries are spent
    )


def queue_email(
    message: bytes, recipients: list[str] | None = None, originator: str | None = None
) -> Any:
    """Hand ``message`` to a worker (the caller's side): its Message-ID is
    fixed here, before the task is queued. Returns the ``AsyncResult``."""
    message, _ = with_message_id(message)
    return send_email.delay(message, recipients, originator)
