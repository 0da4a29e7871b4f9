"""``smtplug demo``: one message through the real client to an in-process server.

The server is aiosmtpd (the ``demo`` extra), listening on 127.0.0.1 on a port
the operating system picks, in a thread of this process; it is stopped before
the demo returns. The client side is exactly what an application gets from
:func:`smtplug.sendmessage`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, TextIO

from smtplug.api import sendmessage
from smtplug.errors import SMTPError
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import ConnectionInfo
from smtplug.protocol import Reply

__all__ = ["run_demo"]


@dataclass
class _Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class _Inbox:
    messages: list[_Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            _Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 OK: queued by the smtplug demo server"


@contextmanager
def _server(inbox: _Inbox) -> Iterator[int]:
    try:
        from aiosmtpd.smtp import SMTP
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "smtplug demo needs aiosmtpd for its local server: pip install 'smtplug[demo]'"
        ) from exc

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            server = await loop.create_server(
                lambda: SMTP(inbox, hostname="demo.smtplug.invalid"), "127.0.0.1", 0
            )
            holder["server"] = server
            holder["port"] = server.sockets[0].getsockname()[1]
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, name="smtplug-demo-server", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise SystemExit("the demo server did not start")
    try:
        yield int(holder["port"])
    finally:

        async def stop() -> None:
            holder["server"].close()
            await holder["server"].wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class _Printer:
    """An observer plugin, passed for this one call: prints the transcript."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    @hookimpl
    def smtplug_on_event(self, info: ConnectionInfo, event: object) -> None:
        print(f"      {event}", file=self.out)

    @hookimpl
    def smtplug_on_command(self, info: ConnectionInfo, command: str) -> None:
        print(f"  C: {command}", file=self.out)

    @hookimpl
    def smtplug_on_reply(self, info: ConnectionInfo, reply: Reply) -> None:
        for line in str(reply).split("\n"):
            print(f"  S: {line}", file=self.out)


def run_demo(out: TextIO, *, recipient: str, subject: str, body: str) -> int:
    """Send the Tcllib manual page's example message; print what happened."""
    message = EmailMessage()
    message["Subject"] = subject
    message.set_content(body)
    inbox = _Inbox()
    with _server(inbox) as port:
        print(f"smtplug demo: an SMTP server is listening on 127.0.0.1:{port}\n", file=out)
        print(
            f"smtplug.sendmessage(message, recipients={recipient!r}, "
            f"servers=['127.0.0.1'], ports=[{port}], client='localhost')\n",
            file=out,
        )
        try:
            result = sendmessage(
                message,
                recipients=recipient,
                servers=["127.0.0.1"],
                ports=[port],
                client="localhost",
                plugins=[_Printer(out)],
            )
        except SMTPError as exc:
            print(f"\nsendmessage raised {type(exc).__name__}: {exc}", file=out)
            return 1
    print(
        f"\nreturned: {list(result)!r} (refused recipients), accepted={result.accepted}", file=out
    )
    for received in inbox.messages:
        print("\nthe server received:", file=out)
        print(f"  envelope sender:     <{received.mail_from}>", file=out)
        print(f"  envelope recipients: {', '.join(received.rcpt_tos)}", file=out)
        print("  message:", file=out)
        text = received.content.decode("utf-8", "backslashreplace")
        for line in text.splitlines():
            print(f"    | {line}", file=out)
    # The caller's message object is never modified:
    assert "From" not in message and "Date" not in message
    return 0 if result.accepted and inbox.messages else 1
