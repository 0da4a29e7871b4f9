"""The promises only an asyncio API has, kept by AsyncClient and asendmessage.

The behavioural test modules run against both APIs through blocking faces
(tests/apis.py); these tests are about what those faces cannot show, each
run in an event loop of its own with ``asyncio.run``:

* cancellation (``task.cancel()``, ``asyncio.timeout``) at every stage of a
  send leaves no half-open transaction: the CancelledError / TimeoutError
  reaches the caller, the connection is closed, never reused, and a send
  interrupted after the final "." is logged as delivery unknown;
* nothing starts a thread or calls ``asyncio.run`` (sends work from inside
  an application's running task);
* tasks sharing one AsyncClient are serialised, AsyncClients share nothing;
* an AsyncClient belongs to one event loop;
* asyncio's debug mode finds no pending task, unclosed transport or
  never-awaited coroutine after successes, failures and cancellations.

The servers are :class:`smtplug.testing.ScriptedServer` instances (their own
loop in their own thread, started before any thread is counted). A test
waits for the server to reach a stage by polling its records, with a bound
that only turns a hang into a failure; no test measures time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from email.message import EmailMessage
from typing import Any

import pytest

import smtplug
from servers import refused_port
from smtplug.testing import CLOSE, RESET, STALL, Answer, ScriptedServer
from tlsfixtures import server_context, tls_ca, write_files

BACKENDS = ["stdlib", "pyopenssl"]
UNKNOWN = "may or may not have been delivered"

needs_timeout = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="asyncio.timeout is new in Python 3.11"
)
HOW = ["cancel", pytest.param("timeout", marks=needs_timeout)]


# --- helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs():
    return tls_ca()


@pytest.fixture(scope="module")
def cafile(certs, tmp_path_factory):
    return write_files(certs, tmp_path_factory.mktemp("client-files")).cafile


@pytest.fixture(scope="module")
def good_context(certs, tmp_path_factory):
    return server_context(certs.server, tmp_path_factory.mktemp("server-files"))


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    """``serve(script, **config)``: a started ScriptedServer, stopped at teardown."""
    started: list[ScriptedServer] = []

    def make(script: Any = None, **config: Any) -> ScriptedServer:
        server = ScriptedServer(script, **config).start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


def message(n: int = 0, *, body: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"sender{n}@example.com"
    msg["To"] = f"rcpt{n}@example.org"
    msg["Subject"] = f"message {n}"
    msg.set_content(body if body is not None else f"body of message {n}\n")
    return msg


def options(server: ScriptedServer, **more: Any) -> dict[str, Any]:
    more.setdefault("usetls", False)
    return dict(servers=["127.0.0.1"], ports=[server.port], client="localhost", timeout=10, **more)


def tls_options(server: ScriptedServer, cafile: str, backend: str) -> dict[str, Any]:
    return options(server, usetls=True, cafile=cafile, tls_backend=backend)


async def until(predicate: Callable[[], bool], what: str, bound: float = 30.0) -> None:
    """Wait (in the loop) until ``predicate()``; fail after ``bound`` seconds (a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.002)


class Replies:
    """An observer plugin: the text of every reply the client has read."""

    def __init__(self) -> None:
        self.read: list[str] = []

    @smtplug.hookimpl
    def smtplug_on_reply(self, reply: Any) -> None:
        self.read.append(reply.text)

    def saw(self, text: str) -> bool:
        return any(text in read for read in self.read)


@contextlib.contextmanager
def counting_connections() -> Iterator[list[int]]:
    """Counts the connections this loop's ``create_connection`` has made (the
    client's own view: connected, not merely accepted by the server)."""
    made: list[int] = []
    loop = asyncio.get_running_loop()
    real = loop.create_connection

    async def counting(*args: Any, **kwargs: Any) -> Any:
        connection = await real(*args, **kwargs)
        made.append(1)
        return connection

    loop.create_connection = counting  # type: ignore[method-assign]
    try:
        yield made
    finally:
        del loop.create_connection  # (the class's again)


def only_first_session(rule: Any) -> Callable[[Any], Any]:
    """A script rule that applies on the server's first connection only."""
    return lambda command: rule if command.session.index == 0 else None


class Interrupt:
    """Interrupts one awaitable, the way an application would.

    ``how`` is ``"cancel"`` (``task.cancel()`` on the task running it) or
    ``"timeout"`` (an ``asyncio.timeout`` around it, made to expire at that
    moment with ``reschedule``, so no wall-clock time is involved). The
    moment is when ``when()`` first holds (polled), or when :meth:`fire` is
    called (from a callback inside the send).
    """

    def __init__(self, how: str) -> None:
        self.how = how
        self._fire: Callable[[], None] | None = None
        self.fired = False
        self.missed: AssertionError | None = None

    def fire(self) -> None:
        if not self.fired and self._fire is not None:
            self.fired = True
            self._fire()

    async def run(
        self, send: Coroutine[Any, Any, Any], when: Callable[[], bool] | None = None
    ) -> BaseException:
        """Run ``send``, interrupt it; return what reached this caller."""
        loop = asyncio.get_running_loop()
        expected: type[BaseException]
        if self.how == "cancel":
            task = asyncio.ensure_future(send)
            self._fire = task.cancel
            watcher = self._watch(when)
            with pytest.raises(asyncio.CancelledError) as info:
                await task
            assert task.cancelled()
            expected = asyncio.CancelledError
        else:

            async def timed() -> None:
                async with asyncio.timeout(None) as scope:
                    self._fire = lambda: scope.reschedule(loop.time())
                    watcher = self._watch(when)
                    try:
                        await send
                    finally:
                        if watcher is not None:
                            watcher.cancel()

            watcher = None
            with pytest.raises(TimeoutError) as info:
                await timed()
            expected = TimeoutError
        if watcher is not None:
            watcher.cancel()
        if self.missed is not None:
            raise self.missed
        assert self.fired, "the send ended before it was interrupted"
        assert type(info.value) is expected  # not wrapped into an SMTPError
        return info.value

    def _watch(self, when: Callable[[], bool] | None) -> asyncio.Task[None] | None:
        if when is None:
            return None

        async def watch() -> None:
            try:
                await until(when, "the stage where the send is interrupted")
            except AssertionError as exc:
                self.missed = exc  # (interrupted all the same: no hang)
            self.fire()

        return asyncio.ensure_future(watch())


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def wrapper() -> None:
        await main()

    asyncio.run(wrapper())


def assert_sent(server: ScriptedServer, session: int, n: int, transaction: int = -1) -> None:
    """Session ``session`` carried message ``n`` in full (as its last transaction)."""
    transaction = server.sessions[session].transactions[transaction]
    assert transaction.complete
    assert f"<sender{n}@example.com>" in transaction.mail.args
    assert f"Subject: message {n}".encode() in transaction.content


def unknown_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "smtplug" and r.levelno == logging.WARNING and UNKNOWN in r.getMessage()
    ]


# --- 1. cancellation leaves no half-open transaction ---------------------------------


@pytest.mark.parametrize("how", HOW)
def test_interrupted_while_connecting(serve, how, caplog) -> None:
    server = serve()
    gate: dict[str, Any] = {"entered": False, "cancelled": False}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.create_connection

        async def first_never_connects(*args: Any, **kwargs: Any) -> Any:
            if gate["entered"]:
                return await real(*args, **kwargs)
            gate["entered"] = True
            try:
                await asyncio.Event().wait()  # a SYN nobody answers
            except asyncio.CancelledError:
                gate["cancelled"] = True
                raise

        loop.create_connection = first_never_connects  # type: ignore[method-assign]
        async with smtplug.AsyncClient(**options(server)) as client:
            await Interrupt(how).run(client.sendmessage(message(0)), lambda: gate["entered"])
            assert gate["cancelled"], "the connect went on after the send was interrupted"
            assert not client.connected
            assert server.connections == 0
            result = await client.sendmessage(message(1))
            assert result.accepted

    run(main)
    server.wait_idle()
    assert server.connections == 1
    assert_sent(server, 0, 1)
    assert not unknown_warnings(caplog)


@pytest.mark.parametrize("how", HOW)
def test_interrupted_waiting_for_the_greeting(serve, how, caplog) -> None:
    server = serve(greeting=only_first_session(STALL))

    async def main() -> None:
        async with smtplug.AsyncClient(**options(server)) as client:
            with counting_connections() as made:
                # Connected on the client's side (the server's accept alone
                # comes before the client's connect returns: the send could
                # still be connecting), and the server has the session.
                await Interrupt(how).run(
                    client.sendmessage(message(0)),
                    lambda: bool(made) and server.connections == 1,
                )
            assert not client.connected
            await until(server.sessions[0].ended.is_set, "the first connection is closed")
            assert server.sessions[0].received == b""  # not even an EHLO
            assert (await client.sendmessage(message(1))).accepted

    run(main)
    server.wait_idle()
    assert server.connections == 2
    assert_sent(server, 1, 1)
    assert not unknown_warnings(caplog)


@pytest.mark.parametrize("how", HOW)
def test_interrupted_after_mail_on_a_kept_session(serve, how, caplog) -> None:
    server = serve({("MAIL", 2): STALL})  # the second MAIL of a connection

    async def main() -> None:
        async with smtplug.AsyncClient(**options(server)) as client:
            assert (await client.sendmessage(message(0))).accepted
            first = server.sessions[0]
            await Interrupt(how).run(
                client.sendmessage(message(1)), lambda: first.verbs.count("MAIL") == 2
            )
            assert not client.connected
            await until(first.ended.is_set, "the kept connection is closed")
            # Neither finished nor reset nor reused: closed right after MAIL.
            assert first.verbs == ["EHLO", "MAIL", "RCPT", "DATA", ".", "MAIL"]
            assert (await client.sendmessage(message(2))).accepted

    run(main)
    server.wait_idle()
    assert server.connections == 2
    assert_sent(server, 0, 0, transaction=0)
    assert len(server.sessions[0].transactions) == 2
    assert not server.sessions[0].transactions[1].rcpts
    assert_sent(server, 1, 2)
    assert server.sessions[1].verbs == ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    assert not unknown_warnings(caplog)


@pytest.mark.parametrize("capabilities", [["8BITMIME"], ["8BITMIME", "PIPELINING", "CHUNKING"]])
@pytest.mark.parametrize("how", HOW)
def test_interrupted_in_the_middle_of_a_large_body(serve, how, capabilities, caplog) -> None:
    server = serve(capabilities=capabilities)
    body = "".join(f"line {i:07d} of a long message, long enough\n" for i in range(100_000))
    interrupt = Interrupt(how)
    sent: list[int] = []

    def progress(octets: int) -> None:
        sent.append(octets)
        if octets >= 1 << 20:
            interrupt.fire()

    async def main() -> None:
        async with smtplug.AsyncClient(**options(server)) as client:
            await interrupt.run(client.sendmessage(message(0, body=body), progress=progress))
            assert not client.connected
            first = server.sessions[0]
            await until(first.ended.is_set, "the connection is closed")
            assert not first.transactions[0].complete  # the server never saw the end
            assert len(first.received) < len(body)
            assert (await client.sendmessage(message(1))).accepted

    run(main)
    server.wait_idle()
    assert max(sent) < len(body)
    assert server.connections == 2
    assert_sent(server, 1, 1)
    assert not unknown_warnings(caplog)  # the end was never sent: not sent, and known


@pytest.mark.parametrize("capabilities", [["8BITMIME"], ["8BITMIME", "PIPELINING", "CHUNKING"]])
@pytest.mark.parametrize("how", HOW)
def test_interrupted_after_the_end_before_the_reply_is_delivery_unknown(
    serve, how, capabilities, caplog
) -> None:
    server = serve({".": only_first_session(STALL)}, capabilities=capabilities)

    async def main() -> None:
        async with smtplug.AsyncClient(**options(server)) as client:

            def ended() -> bool:
                return bool(server.sessions) and any(
                    t.complete for t in server.sessions[0].transactions
                )

            await Interrupt(how).run(client.sendmessage(message(0)), ended)
            first = server.sessions[0]
            assert first.transactions[0].complete  # the server has the whole message
            assert not client.connected
            await until(first.ended.is_set, "the connection is closed")
            end = "BDAT" if "CHUNKING" in capabilities else "."
            assert first.verbs[-1] == end  # no RSET, no QUIT, no next MAIL on it
            assert (await client.sendmessage(message(1))).accepted

    caplog.set_level(logging.WARNING, logger="smtplug")
    run(main)
    server.wait_idle()
    assert server.connections == 2
    assert_sent(server, 1, 1)
    (warning,) = unknown_warnings(caplog)
    assert f"127.0.0.1:{server.port}" in warning.getMessage()


def test_asendmessage_cancelled_after_the_end_is_delivery_unknown(serve, caplog) -> None:
    server = serve({".": STALL})

    async def main() -> None:
        await Interrupt("cancel").run(
            smtplug.asendmessage(message(0), **options(server)),
            lambda: bool(server.sessions) and "." in server.sessions[0].verbs,
        )
        await until(server.sessions[0].ended.is_set, "the connection is closed")

    caplog.set_level(logging.WARNING, logger="smtplug")
    run(main)
    assert len(unknown_warnings(caplog)) == 1
    assert server.sessions[0].verbs == ["EHLO", "MAIL", "RCPT", "DATA", "."]


@pytest.mark.parametrize(
    "capabilities",
    [["8BITMIME"], ["PIPELINING", "8BITMIME"]],
    ids=["quit-after", "quit-pipelined"],
)
def test_asendmessage_cancelled_after_the_250_says_it_was_delivered(
    serve, caplog, capabilities
) -> None:
    # The 250 came, the 221 to QUIT never does (QUIT sent after the 250, or
    # pipelined behind the end of the message).
    server = serve(
        {".": Answer(b"250 2.0.0 queued as X\r\n", then=STALL)}, capabilities=capabilities
    )

    replies = Replies()

    def waiting_for_the_221() -> bool:
        # The client has read the 250 and the server has the QUIT. (With QUIT
        # pipelined the server has it with the end of the message, before the
        # client reads the 250. After STALL it records bytes, parses nothing.)
        return replies.saw("queued as X") and b"QUIT\r\n" in server.sessions[0].received

    async def main() -> None:
        await Interrupt("cancel").run(
            smtplug.asendmessage(message(0), **options(server), plugins=[replies]),
            waiting_for_the_221,
        )
        await until(server.sessions[0].ended.is_set, "the connection is closed")

    caplog.set_level(logging.WARNING, logger="smtplug")
    run(main)
    assert not unknown_warnings(caplog)
    delivered = [r for r in caplog.records if "it WAS delivered" in r.getMessage()]
    assert len(delivered) == 1
    assert "queued as X" in delivered[0].getMessage()


def test_interrupted_during_the_starttls_handshake(serve, cafile, caplog) -> None:
    # A server that says 220 to STARTTLS and then never takes part in a handshake.
    server = serve(
        {"STARTTLS": only_first_session(Answer(b"220 go ahead\r\n", then=STALL))},
        capabilities=["8BITMIME", "STARTTLS"],
    )

    replies = Replies()

    def in_the_handshake() -> bool:
        # The client has read the 220 and its ClientHello reached the server
        # (after STALL the server records bytes, parses nothing). That the
        # server has sent the 220 does not say the client has read it.
        if not (replies.saw("go ahead") and server.sessions):
            return False
        received = server.sessions[0].received
        return len(received) > received.index(b"STARTTLS\r\n") + len(b"STARTTLS\r\n")

    async def main() -> None:
        async with smtplug.AsyncClient(
            **tls_options(server, cafile, "stdlib"), plugins=[replies]
        ) as client:
            await Interrupt("cancel").run(client.sendmessage(message(0)), in_the_handshake)
            assert not client.connected
            await until(server.sessions[0].ended.is_set, "the connection is closed")

    run(main)
    assert server.sessions[0].verbs == ["EHLO", "STARTTLS"]
    assert not unknown_warnings(caplog)


# --- 2. no thread, no asyncio.run ----------------------------------------------------


@contextlib.contextmanager
def refusing_to_leave_the_loop() -> Iterator[list[str]]:
    """Records (and refuses) every way out of the running loop: a thread
    started, an executor used, asyncio.run, another event loop."""
    calls: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called during an asyncio send")

        return refused

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threading.Thread, "start", refuse("Thread.start"))
        patch.setattr(asyncio, "run", refuse("asyncio.run"))
        patch.setattr(asyncio, "new_event_loop", refuse("asyncio.new_event_loop"))
        patch.setattr(asyncio, "to_thread", refuse("asyncio.to_thread"))
        patch.setattr(asyncio.BaseEventLoop, "run_until_complete", refuse("run_until_complete"))
        patch.setattr(asyncio.BaseEventLoop, "run_in_executor", refuse("run_in_executor"))
        yield calls


@pytest.mark.parametrize(
    ("transport", "backend"),
    [("plain", None)] + [(t, b) for t in ("starttls", "implicit-tls") for b in BACKENDS],
)
def test_no_thread_is_started_and_nothing_runs_a_loop(
    serve, cafile, good_context, backend, transport
) -> None:
    if transport == "plain":
        server = serve()
        common = options(server)
    elif transport == "starttls":
        server = serve(tls_context=good_context)
        common = tls_options(server, cafile, backend)
    else:
        server = serve(tls_context=good_context, implicit_tls=True)
        common = {**tls_options(server, cafile, backend), "tlsimport": True}
    counts: list[int] = []
    results: list[smtplug.SendResult] = []

    async def application() -> None:
        # A task of the application's loop, as a web framework's handler is.
        counts.append(threading.active_count())
        results.append(await smtplug.asendmessage(message(0), **common))
        async with smtplug.AsyncClient(**common) as client:
            for n in (1, 2):
                results.append(await client.sendmessage(message(n)))
        counts.append(threading.active_count())

    async def main() -> None:
        with refusing_to_leave_the_loop() as calls:
            await asyncio.create_task(application())
        assert calls == []

    asyncio.run(main())
    assert counts[0] == counts[1]
    assert all(r.accepted for r in results)
    assert all((r.tls is not None) == (transport != "plain") for r in results)
    server.wait_idle()
    assert server.connections == 2


def test_a_host_name_is_resolved_by_the_loop_never_blocking_it(serve) -> None:
    # The one thing asyncio itself does in a thread: getaddrinfo for a name
    # (loop.getaddrinfo, in the loop's default executor). An IP literal, as
    # above, needs none; a name must never be resolved on the loop's thread.
    server = serve()
    resolved_on: list[threading.Thread] = []
    real = socket.getaddrinfo

    def recording(*args: Any, **kwargs: Any) -> Any:
        resolved_on.append(threading.current_thread())
        return real(*args, **kwargs)

    async def main() -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(socket, "getaddrinfo", recording)
            result = await smtplug.asendmessage(
                message(0), **{**options(server), "servers": ["localhost"]}
            )
        assert result.accepted

    asyncio.run(main())
    assert resolved_on and threading.main_thread() not in resolved_on


# --- 3. tasks sharing one AsyncClient are serialised -----------------------------------


def check_serialised(server: ScriptedServer, count: int, capabilities: list[str]) -> None:
    """One connection carried ``count`` whole transactions, one after the other."""
    assert server.connections == 1
    (session,) = server.sessions
    end = ["BDAT"] if "CHUNKING" in capabilities else ["DATA", "."]
    assert session.verbs == ["EHLO", *(["MAIL", "RCPT", *end] * count), "QUIT"]
    seen = []
    for transaction in session.transactions:
        assert transaction.complete
        n = int(transaction.mail.args.removeprefix("FROM:<sender").split("@")[0])
        assert [r.args for r in transaction.rcpts] == [f"TO:<rcpt{n}@example.org>"]
        assert f"Subject: message {n}\r\n".encode() in transaction.content
        assert f"body of message {n}\r\n".encode() in transaction.content
        seen.append(n)
    assert sorted(seen) == list(range(count))  # each message exactly once


@pytest.mark.parametrize(
    "capabilities", [["8BITMIME"], ["8BITMIME", "PIPELINING"], ["PIPELINING", "CHUNKING"]]
)
def test_tasks_sharing_a_client_are_serialised(serve, capabilities) -> None:
    # Replies dripped a few octets at a time: every reply takes several reads,
    # so the tasks get every chance to interleave if nothing serialises them.
    server = serve(capabilities=capabilities, drip=(3, 0))

    async def main() -> None:
        async with smtplug.AsyncClient(**options(server)) as client:
            results = await asyncio.gather(*(client.sendmessage(message(n)) for n in range(30)))
        assert all(r.accepted and r == [] for r in results)
        assert [r.recipients for r in results] == [(f"rcpt{n}@example.org",) for n in range(30)]

    run(main)
    server.wait_idle()
    check_serialised(server, 30, capabilities)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tasks_sharing_a_client_over_starttls_are_serialised(
    serve, cafile, good_context, backend
) -> None:
    server = serve(tls_context=good_context, capabilities=["PIPELINING", "STARTTLS"])

    async def main() -> None:
        async with smtplug.AsyncClient(**tls_options(server, cafile, backend)) as client:
            results = await asyncio.gather(*(client.sendmessage(message(n)) for n in range(30)))
        assert all(r.accepted and r.tls is not None for r in results)

    run(main)
    server.wait_idle()
    assert server.sessions[0].verbs[:3] == ["EHLO", "STARTTLS", "EHLO"]
    server.sessions[0].commands[:] = server.sessions[0].commands[2:]
    check_serialised(server, 30, ["PIPELINING"])


def test_a_task_cancelled_while_waiting_for_a_shared_client_sends_nothing(serve) -> None:
    gate = threading.Event()

    def held(command: Any) -> None:  # (runs in the server's thread)
        # The first MAIL's answer waits until the test lets it go: however
        # long the test takes to see the MAIL (a bound here would answer it
        # on its own, and the test would cancel a task that holds the client).
        gate.wait()

    server = serve({("MAIL", 1): held})

    async def main() -> None:
        async with smtplug.AsyncClient(**options(server)) as client:
            first = asyncio.ensure_future(client.sendmessage(message(0)))
            waiting = asyncio.ensure_future(client.sendmessage(message(1)))
            third = asyncio.ensure_future(client.sendmessage(message(2)))
            await until(
                lambda: bool(server.sessions) and server.sessions[0].verbs == ["EHLO", "MAIL"],
                "the first task's MAIL",
            )
            waiting.cancel()
            gate.set()
            assert (await first).accepted and (await third).accepted
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert client.connected  # the first task's session, kept for the third

    try:
        run(main)
    finally:
        gate.set()  # (the server's thread is never left held)
    server.wait_idle()
    assert server.connections == 1
    assert [t.mail.args for t in server.sessions[0].transactions] == [
        "FROM:<sender0@example.com>",
        "FROM:<sender2@example.com>",
    ]


def test_a_task_cancelled_mid_transaction_leaves_the_others_whole(serve) -> None:
    # Ten tasks share a client; the fourth is cancelled once the server has
    # its RCPT. The others go on, on a new connection, each exactly once.
    gate = threading.Event()

    def hold_the_fourth(command: Any) -> None:  # (runs in the server's thread)
        if "<rcpt3@" in command.args:
            gate.wait()  # (no bound: answered, the RCPT is behind the cancel)

    server = serve({"RCPT": hold_the_fourth})

    async def main() -> None:
        async with smtplug.AsyncClient(**options(server)) as client:
            tasks = [asyncio.ensure_future(client.sendmessage(message(n))) for n in range(10)]
            await until(
                lambda: any("<rcpt3@" in c.args for s in server.sessions for c in s.commands),
                "the fourth task's RCPT",
            )
            tasks[3].cancel()
            gate.set()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(outcomes[3], asyncio.CancelledError)
        assert all(r.accepted for i, r in enumerate(outcomes) if i != 3)

    try:
        run(main)
    finally:
        gate.set()  # (the server's thread is never left held)
    server.wait_idle()
    assert server.connections == 2
    first, second = server.sessions
    assert first.verbs == ["EHLO", *["MAIL", "RCPT", "DATA", "."] * 3, "MAIL", "RCPT"]
    assert second.verbs == ["EHLO", *["MAIL", "RCPT", "DATA", "."] * 6, "QUIT"]
    delivered = [t.mail.args for s in server.sessions for t in s.transactions if t.complete]
    assert delivered == [f"FROM:<sender{n}@example.com>" for n in range(10) if n != 3]


# --- 4. one event loop per AsyncClient ---------------------------------------------


def test_an_async_client_used_from_a_second_loop_is_refused(serve) -> None:
    server = serve()
    client = smtplug.AsyncClient(**options(server))
    first = asyncio.new_event_loop()
    try:
        assert first.run_until_complete(client.sendmessage(message(0))).accepted
        for call in (lambda: client.sendmessage(message(1)), client.close):
            with pytest.raises(smtplug.InvalidInputError, match="another event loop"):
                asyncio.run(call())
        # Nothing went out from the second loop; the first still owns a sound session.
        assert server.sessions[0].verbs == ["EHLO", "MAIL", "RCPT", "DATA", "."]
        assert client.connected
        assert first.run_until_complete(client.sendmessage(message(2))).accepted
        first.run_until_complete(client.close())
    finally:
        first.close()
    server.wait_idle()
    assert server.connections == 1
    assert server.sessions[0].verbs[-1] == "QUIT"


def test_the_loop_check_is_an_smtp_error_raised_before_any_io(serve) -> None:
    server = serve()
    client = smtplug.AsyncClient(**options(server))
    asyncio.run(client.close())  # first use: this (then closed) loop owns it

    async def elsewhere() -> None:
        with pytest.raises(smtplug.SMTPError) as info:
            await client.sendmessage(message(0))
        assert isinstance(info.value, smtplug.InvalidInputError)

    asyncio.run(elsewhere())
    assert server.connections == 0


# --- 6. many AsyncClients share nothing -----------------------------------------------


@pytest.mark.parametrize("transport", ["plain", "starttls-stdlib", "starttls-pyopenssl"])
def test_fifty_concurrent_clients_share_nothing(serve, cafile, good_context, transport) -> None:
    if transport == "plain":
        server = serve(capabilities=["PIPELINING"])
        common = options(server)
    else:
        server = serve(tls_context=good_context, capabilities=["PIPELINING", "STARTTLS"])
        common = tls_options(server, cafile, transport.removeprefix("starttls-"))

    async def one(k: int) -> list[smtplug.SendResult]:
        async with smtplug.AsyncClient(**common) as client:
            return [await client.sendmessage(message(100 * k + i)) for i in range(3)]

    async def main() -> None:
        everything = await asyncio.gather(*(one(k) for k in range(50)))
        for k, results in enumerate(everything):
            assert [r.recipients for r in results] == [
                (f"rcpt{100 * k + i}@example.org",) for i in range(3)
            ]

    run(main)
    server.wait_idle()
    assert server.connections == 50
    for session in server.sessions:
        # Each connection carried one client's three messages, in its order.
        senders = [int(t.mail.args.split("<sender")[1].split("@")[0]) for t in session.transactions]
        k = senders[0] // 100
        assert senders == [100 * k, 100 * k + 1, 100 * k + 2]
        assert all(t.complete for t in session.transactions)
        assert session.verbs[-1] == "QUIT"
    firsts = sorted(
        int(s.transactions[0].mail.args.split("<sender")[1].split("@")[0]) for s in server.sessions
    )
    assert firsts == [100 * k for k in range(50)]


# --- 5. asyncio's debug mode finds nothing left behind ---------------------------------


def run_in_debug_mode(main: Callable[[], Awaitable[None]]) -> list[str]:
    """Run ``main`` with ``asyncio.run(..., debug=True)``, every warning
    recorded (as ``-W error::ResourceWarning`` would fail on them) and the
    loop's exception handler watched; returns what went wrong: tasks still
    pending at the end, "Task was destroyed but it is pending", unclosed
    transports or sockets, never-awaited coroutines, unhandled errors."""
    problems: list[str] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        problems.append(f"loop: {context.get('message')} {context.get('exception')!r}")

    async def wrapper() -> None:
        asyncio.get_running_loop().set_exception_handler(handler)
        await main()
        me = asyncio.current_task()
        problems.extend(f"still pending: {t!r}" for t in asyncio.all_tasks() if t is not me)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(wrapper(), debug=True)
        gc.collect()
    problems.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    return problems


async def silent_listener(seen: list[bytes], closed: list[bool]) -> asyncio.AbstractServer:
    """A TCP server in this loop that reads until the client closes, never answering."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            seen.append(data)
        writer.close()
        await writer.wait_closed()
        closed.append(True)

    return await asyncio.start_server(handle, "127.0.0.1", 0)


SCENARIOS = [
    "sent",
    "kept-session",
    "starttls-stdlib",
    "starttls-pyopenssl",
    "implicit-tls-pyopenssl",
    "refused",
    "greeting-421",
    "mail-421",
    "closed-at-mail",
    "reset-at-the-end",
    "closed-after-starttls-220",
    "starttls-wrong-host-certificate",
    "smtplug-timeout",
    "cancelled-at-the-greeting",
    "cancelled-mid-body",
    "cancelled-after-the-end",
    "asyncio-timeout-after-mail",
    "cancelled-during-a-tls-handshake",
]


#: the scenarios where asendmessage raises an SMTPError
FAILING = (
    "refused",
    "greeting-421",
    "mail-421",
    "starttls-wrong-host-certificate",
)
# ("closed-after-starttls-220" is sent: the default policy, opportunistic,
# goes on in plain text over a fresh connection.)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_debug_mode_finds_nothing_left_behind(
    serve, certs, cafile, good_context, tmp_path, scenario, request
) -> None:
    tls = scenario.startswith(("starttls", "implicit", "closed-after-starttls"))
    script: dict[Any, Any] = {
        "mail-421": {"MAIL": Answer(b"421 4.3.2 going down\r\n", then=CLOSE)},
        "closed-at-mail": {"MAIL": CLOSE},
        "reset-at-the-end": {".": RESET},
        "closed-after-starttls-220": {"STARTTLS": Answer(b"220 go ahead\r\n", then=CLOSE)},
        "smtplug-timeout": {"MAIL": STALL},
        "cancelled-after-the-end": {".": STALL},
        "asyncio-timeout-after-mail": {"MAIL": STALL},
    }.get(scenario, {})
    config: dict[str, Any] = {}
    if scenario == "greeting-421":
        config["greeting"] = Answer(b"421 4.3.2 not now\r\n", then=CLOSE)
    elif scenario == "cancelled-at-the-greeting":
        config["greeting"] = STALL
    if tls:
        config.update(tls_context=good_context, implicit_tls=scenario.startswith("implicit"))
    if scenario == "starttls-wrong-host-certificate":
        config["tls_context"] = server_context(certs.wrong_host, tmp_path)
    server = serve(script, **config)
    backend = "pyopenssl" if scenario.endswith("pyopenssl") else "stdlib"
    common = tls_options(server, cafile, backend) if tls else options(server)
    if scenario.startswith("implicit"):
        common["tlsimport"] = True
    if scenario == "refused":
        held = refused_port()  # (bound, never listened on: no other suite's server takes it)
        common["ports"] = [held.__enter__()]
        request.addfinalizer(lambda: held.__exit__(None, None, None))
    if scenario == "smtplug-timeout":
        common["timeout"] = 0.05
    body = "".join(f"line {i:07d} of a long message\n" for i in range(60_000))

    async def main() -> None:
        if scenario in ("sent", *FAILING) or tls:
            if scenario in FAILING:
                with pytest.raises(smtplug.SMTPError):
                    await smtplug.asendmessage(message(0), **common)
            else:
                assert (await smtplug.asendmessage(message(0), **common)).accepted
        elif scenario == "kept-session":
            async with smtplug.AsyncClient(**common) as client:
                for n in range(3):
                    assert (await client.sendmessage(message(n))).accepted
        elif scenario in ("closed-at-mail", "reset-at-the-end", "smtplug-timeout"):
            async with smtplug.AsyncClient(**common) as client:
                with pytest.raises(smtplug.SMTPError):
                    await client.sendmessage(message(0))
        elif scenario == "cancelled-at-the-greeting":
            # (The client's wait outlasts the watcher's: CI once saw the
            # server take 10 s to register the connection on a loaded machine.)
            with counting_connections() as made:
                # (Connected on the client's side too: waiting for the greeting.)
                await Interrupt("cancel").run(
                    smtplug.asendmessage(message(0), **{**common, "timeout": 60}),
                    lambda: bool(made) and server.connections == 1,
                )
        elif scenario == "cancelled-mid-body":
            interrupt = Interrupt("cancel")
            await interrupt.run(
                smtplug.asendmessage(
                    message(0, body=body),
                    progress=lambda octets: octets > 100_000 and interrupt.fire(),
                    **common,
                )
            )
        elif scenario == "cancelled-after-the-end":
            async with smtplug.AsyncClient(**common) as client:
                await Interrupt("cancel").run(
                    client.sendmessage(message(0)),
                    lambda: bool(server.sessions) and "." in server.sessions[0].verbs,
                )
        elif scenario == "asyncio-timeout-after-mail":
            how = "timeout" if sys.version_info >= (3, 11) else "cancel"
            async with smtplug.AsyncClient(**common) as client:
                await Interrupt(how).run(
                    client.sendmessage(message(0)),
                    lambda: bool(server.sessions) and "MAIL" in server.sessions[0].verbs,
                )
        elif scenario == "cancelled-during-a-tls-handshake":
            seen: list[bytes] = []
            closed: list[bool] = []
            listener = await silent_listener(seen, closed)
            port = listener.sockets[0].getsockname()[1]
            async with listener:
                await Interrupt("cancel").run(
                    smtplug.asendmessage(
                        message(0),
                        **{
                            **common,
                            "ports": [port],
                            "tlsimport": True,
                            "usetls": True,
                            "cafile": cafile,
                        },
                    ),
                    lambda: bool(seen),  # the ClientHello arrived
                )
                await until(lambda: bool(closed), "the client closes the connection")
        else:
            raise AssertionError(scenario)

    problems = run_in_debug_mode(main)
    assert problems == [], "\n".join(problems)
