"""The clients under comparison, each in the shapes the scenarios need.

A runner sends ``job.count`` messages to ``job.host:job.port`` and raises
:class:`DeliveryError` unless every one of them was accepted by the client's
own account (smtplug's ``result.accepted``, smtplib's empty refused dict,
aiosmtplib's empty error dict, the floor's reply codes, smtp-source's exit
status). The sink's counters are checked on top of that by the caller.
"""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import floor
import guard

import smtplug

SOURCE = "/usr/sbin/smtp-source"

FROM = "sender@example.com"
TO = "rcpt@example.org"
HUNDRED = [f"r{i}@example.org" for i in range(100)]
_BODY = b"".join(
    f"Line {i:02d} of a small benchmark message; nothing in it needs escaping.\r\n".encode()
    for i in range(12)
)
SMALL_MESSAGE = (
    f"From: {FROM}\r\nTo: {TO}\r\nSubject: smtplug benchmark\r\n"
    "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
    "Message-ID: <benchmark@example.com>\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
).encode() + _BODY


def message_of(kb: int) -> bytes:
    """The benchmark message of about ``kb`` KB: 1 is SMALL_MESSAGE (1045 octets, as
    before); any other size is SMALL_MESSAGE's headers and lines of the same kind,
    padded to exactly ``kb`` * 1024 octets."""
    if kb == 1:
        return SMALL_MESSAGE
    size = kb * 1024
    head, _ = SMALL_MESSAGE.split(b"\r\n\r\n", 1)
    out = head + b"\r\n\r\n"
    number = 0
    while True:
        line = f"Line {number:02d} of a benchmark message; nothing in it needs escaping.\r\n"
        if len(out) + len(line) > size:
            break
        out += line.encode()
        number += 1
    rest = size - len(out)
    if rest >= 2:
        out += b"x" * (rest - 2) + b"\r\n"
    return out


def body_octets(message: bytes) -> int:
    """The octets after the header block (smtp-source's -l)."""
    return len(message.split(b"\r\n\r\n", 1)[1])


class DeliveryError(AssertionError):
    """A client did not deliver what it was asked to."""


class NotAvailable(Exception):
    """This client cannot run this scenario here (the reason is the message)."""


@dataclass(frozen=True)
class Job:
    host: str
    port: int
    count: int  # messages in all
    recipients: list[str]
    message: bytes = SMALL_MESSAGE
    connections: int = 1  # concurrent connections (scenario 6)
    timeout: float = 30.0  # per network operation, every client
    deadline: float = field(default=0.0)  # time.monotonic() limit for subprocesses

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic()) if self.deadline else 600.0


Runner = Callable[[Job], None]


# --- smtplug -------------------------------------------------------------------------------


def _check_smtplug(result: object, job: Job) -> None:
    accepted = getattr(result, "accepted", None)
    if accepted is not True or len(result) != 0:  # type: ignore[arg-type]
        raise DeliveryError(f"smtplug: {result!r}")
    recipients = getattr(result, "recipients", None)
    if recipients is not None and len(recipients) != len(job.recipients):
        raise DeliveryError(f"smtplug: {len(recipients)} of {len(job.recipients)} recipients")


def smtplug_per_connection(job: Job, *, atleastone: bool = False) -> None:
    if not hasattr(smtplug, "sendmessage"):
        raise NotAvailable("smtplug.sendmessage missing")
    for _ in range(job.count):
        result = smtplug.sendmessage(
            job.message,
            servers=[job.host],
            ports=[job.port],
            client="localhost",
            usetls=False,
            originator=FROM,
            recipients=job.recipients,
            timeout=job.timeout,
            **({"atleastone": True} if atleastone else {}),
        )
        _check_smtplug(result, job)


def smtplug_atleastone_per_connection(job: Job) -> None:
    """As smtplug_per_connection with atleastone=True: DATA joins the MAIL/RCPT
    flight, the floor's flights (the default, Tcllib's atleastone=False, waits
    for every RCPT reply before DATA when there is more than one recipient)."""
    smtplug_per_connection(job, atleastone=True)


def _smtplug_kept(job: Job, count: int) -> None:
    client_class = getattr(smtplug, "Client", None)
    if client_class is None:
        raise NotAvailable("smtplug.Client missing")
    with client_class(
        servers=[job.host], ports=[job.port], client="localhost", usetls=False, timeout=job.timeout
    ) as client:
        for _ in range(count):
            _check_smtplug(
                client.sendmessage(job.message, originator=FROM, recipients=job.recipients), job
            )


def smtplug_kept(job: Job) -> None:
    _smtplug_kept(job, job.count)


# --- the floor: benchmarks/floor.py, a minimal pipelined client ----------------------------


def floor_per_connection(job: Job) -> None:
    try:
        for _ in range(job.count):
            floor.send_per_connection(
                job.host, job.port, FROM, job.recipients, job.message, timeout=job.timeout
            )
    except floor.FloorError as exc:
        raise DeliveryError(f"floor: {exc}") from exc


def _floor_kept(job: Job, count: int) -> None:
    try:
        floor.send_kept(
            job.host, job.port, FROM, job.recipients, job.message, count, timeout=job.timeout
        )
    except floor.FloorError as exc:
        raise DeliveryError(f"floor: {exc}") from exc


def floor_kept(job: Job) -> None:
    _floor_kept(job, job.count)


# --- smtplib -------------------------------------------------------------------------------


def _check_smtplib(refused: dict[str, tuple[int, bytes]]) -> None:
    if refused:
        raise DeliveryError(f"smtplib refused: {refused!r}")


def smtplib_per_connection(job: Job) -> None:
    for _ in range(job.count):
        with smtplib.SMTP(
            job.host, job.port, local_hostname="localhost", timeout=job.timeout
        ) as client:
            _check_smtplib(client.sendmail(FROM, job.recipients, job.message))


def _smtplib_kept(job: Job, count: int) -> None:
    with smtplib.SMTP(
        job.host, job.port, local_hostname="localhost", timeout=job.timeout
    ) as client:
        for _ in range(count):
            _check_smtplib(client.sendmail(FROM, job.recipients, job.message))


def smtplib_kept(job: Job) -> None:
    _smtplib_kept(job, job.count)


# --- aiosmtplib (its asyncio loop runs here, one loop per timed run) -----------------------


def _aiosmtplib():  # imported lazily: a missing aiosmtplib only costs its column
    try:
        import aiosmtplib
    except ImportError:
        raise NotAvailable("aiosmtplib not installed (pip install aiosmtplib)") from None
    return aiosmtplib


async def _aio_connection(job: Job, count: int) -> None:
    aiosmtplib = _aiosmtplib()
    client = aiosmtplib.SMTP(
        hostname=job.host,
        port=job.port,
        local_hostname="localhost",
        use_tls=False,
        start_tls=False,
        timeout=job.timeout,
    )
    async with client:  # connects, and QUITs on the way out
        for _ in range(count):
            errors, response = await client.sendmail(FROM, job.recipients, job.message)
            if errors:
                raise DeliveryError(f"aiosmtplib refused: {errors!r} ({response})")


def aiosmtplib_per_connection(job: Job) -> None:
    _aiosmtplib()

    async def run() -> None:
        for _ in range(job.count):
            await _aio_connection(job, 1)

    asyncio.run(run())


def aiosmtplib_kept(job: Job) -> None:
    _aiosmtplib()
    asyncio.run(_aio_connection(job, job.count))


def aiosmtplib_concurrent(job: Job) -> None:
    _aiosmtplib()

    async def run() -> None:
        shares = _shares(job.count, job.connections)
        await asyncio.gather(*(_aio_connection(job, share) for share in shares))

    asyncio.run(run())


# --- smtplug's asyncio API (smtplug.asendmessage, smtplug.AsyncClient) ---------------------


async def _smtplug_async_kept(job: Job, count: int) -> None:
    async with smtplug.AsyncClient(
        servers=[job.host], ports=[job.port], client="localhost", usetls=False, timeout=job.timeout
    ) as client:
        for _ in range(count):
            _check_smtplug(
                await client.sendmessage(job.message, originator=FROM, recipients=job.recipients),
                job,
            )


def smtplug_async_per_connection(job: Job) -> None:
    if not hasattr(smtplug, "asendmessage"):
        raise NotAvailable("smtplug.asendmessage missing")

    async def run() -> None:
        for _ in range(job.count):
            result = await smtplug.asendmessage(
                job.message,
                servers=[job.host],
                ports=[job.port],
                client="localhost",
                usetls=False,
                originator=FROM,
                recipients=job.recipients,
                timeout=job.timeout,
            )
            _check_smtplug(result, job)

    asyncio.run(run())


def smtplug_async_kept(job: Job) -> None:
    if not hasattr(smtplug, "AsyncClient"):
        raise NotAvailable("smtplug.AsyncClient missing")
    asyncio.run(_smtplug_async_kept(job, job.count))


def smtplug_async_concurrent(job: Job) -> None:
    if not hasattr(smtplug, "AsyncClient"):
        raise NotAvailable("smtplug.AsyncClient missing")

    async def run() -> None:
        shares = _shares(job.count, job.connections)
        await asyncio.gather(*(_smtplug_async_kept(job, share) for share in shares))

    asyncio.run(run())


# --- threads, one connection each (scenario 6) ----------------------------------------------


def _shares(count: int, connections: int) -> list[int]:
    return [
        count // connections + (1 if i < count % connections else 0) for i in range(connections)
    ]


def threaded(kept: Callable[[Job, int], None]) -> Runner:
    def run(job: Job) -> None:
        errors: list[BaseException] = []

        def one(share: int) -> None:
            try:
                kept(job, share)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=one, args=(share,), daemon=True)
            for share in _shares(job.count, job.connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:  # bounded: every client has a per-operation timeout
            thread.join(job.remaining())
            if thread.is_alive():
                raise DeliveryError("a sending thread did not finish in time")
        if errors:
            if isinstance(errors[0], NotAvailable):
                raise errors[0]
            raise DeliveryError(f"{len(errors)} of {len(threads)} threads failed: {errors[0]!r}")

    return run


smtplug_concurrent = threaded(_smtplug_kept)
smtplib_concurrent = threaded(_smtplib_kept)
floor_concurrent = threaded(_floor_kept)


# --- smtplug's pools (Pool.send_many: an event loop of its own; AsyncPool: tasks) ---------


def _check_outcome(outcome: object, job: Job) -> None:
    if getattr(outcome, "status", None) != "sent":
        raise DeliveryError(f"smtplug pool: {outcome!r}")
    _check_smtplug(outcome.result, job)  # type: ignore[attr-defined]


def smtplug_pool(job: Job) -> None:
    """``Pool(max_connections=job.connections).send_many``: one worker thread per
    connection, the messages from a generator."""
    pool_class = getattr(smtplug, "Pool", None)
    if pool_class is None:
        raise NotAvailable("smtplug.Pool missing")
    with pool_class(
        servers=[job.host],
        ports=[job.port],
        client="localhost",
        usetls=False,
        timeout=job.timeout,
        max_connections=job.connections,
    ) as pool:
        messages = (job.message for _ in range(job.count))
        for outcome in pool.send_many(messages, originator=FROM, recipients=job.recipients):
            _check_outcome(outcome, job)


def smtplug_asyncpool(job: Job) -> None:
    """``AsyncPool(max_connections=job.connections).send_many``: tasks on one loop."""
    if not hasattr(smtplug, "AsyncPool"):
        raise NotAvailable("smtplug.AsyncPool missing")

    async def run() -> None:
        async with smtplug.AsyncPool(
            servers=[job.host],
            ports=[job.port],
            client="localhost",
            usetls=False,
            timeout=job.timeout,
            max_connections=job.connections,
        ) as pool:
            messages = (job.message for _ in range(job.count))
            async for outcome in pool.send_many(
                messages, originator=FROM, recipients=job.recipients
            ):
                _check_outcome(outcome, job)

    asyncio.run(run())


# --- smtp-source (Postfix's C load generator, timed end to end as a subprocess) ------------


def smtp_source(*, kept: bool) -> Runner:
    def run(job: Job) -> None:
        command = [SOURCE, "-s", str(job.connections), "-m", str(job.count)]
        command += ["-l", str(body_octets(job.message)), "-M", "localhost", "-f", FROM, "-t", TO]
        command += ["-r", str(len(job.recipients)), "-S", "smtplug benchmark"]
        command += (["-d"] if kept else []) + [f"{job.host}:{job.port}"]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        token = guard.register(f"smtp-source pid {process.pid}", process.kill)
        try:
            _, err = process.communicate(timeout=job.remaining())
        except BaseException:
            process.kill()  # by PID: the process started just above
            process.wait(5)
            raise
        finally:
            guard.unregister(token)
        if process.returncode != 0:
            raise DeliveryError(
                f"smtp-source exited {process.returncode}: {err.decode(errors='replace')[-300:]}"
            )

    return run
