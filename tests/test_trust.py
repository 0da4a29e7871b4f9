"""Issue 11: every outcome truthful under refusals, faults, threads and odd input.

Each test shows one promise smtplug broke once: a refused BDAT left the
transaction open, an error said "transient" where a retry could deliver twice,
a server's refusal was lost to the write error it caused, an unsolicited 421
was called a protocol violation, an observer's exception hid a delivery,
a Client shared by threads broke, and the SIZE limit was left to the server.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from email.message import EmailMessage

import pytest

import smtplug
from apis import both_apis
from scripted import client_for, machine_lock, send_to
from smtplug import (
    ConnectError,
    ConnectionLostError,
    DeliveryUnknownError,
    ResponseError,
    TLSError,
)
from smtplug.testing import CLOSE, STALL, Answer, ScriptedServer

pytestmark = both_apis

PIPE_CHUNK = ["PIPELINING", "CHUNKING", "8BITMIME"]


def message(subject: str = "trust", to: str = "bob@example.org") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("hello\n")
    return msg


def client(server: ScriptedServer, **options) -> smtplug.Client:
    return client_for(server, **options)


def send(server: ScriptedServer, msg: object = None, **options):
    return send_to([server], message() if msg is None else msg, **options)


# -- a refused BDAT resets the transaction -------------------------------------


@pytest.mark.parametrize("capabilities", [PIPE_CHUNK, ["CHUNKING", "8BITMIME"]])
@pytest.mark.parametrize("atleastone", [False, True])
def test_a_refused_bdat_is_followed_by_rset_before_the_next_message(capabilities, atleastone):
    # One recipient refused: with PIPELINING, MAIL, RCPT and BDAT LAST go in one
    # write and the server refuses the BDAT. The transaction the accepted MAIL
    # opened must be reset before the kept session carries the next message.
    def refuse_in_first(command):
        first = len(command.session.transactions) == 1
        return b"554 5.5.1 no valid recipients\r\n" if first else None

    script = {("RCPT", 1): b"550 5.1.1 no such user\r\n", "BDAT": refuse_in_first}
    with ScriptedServer(script, capabilities=capabilities) as server:
        with client(server) as c:
            first = c.sendmessage(message("one"), atleastone=atleastone)
            second = c.sendmessage(message("two"))
        server.wait_idle()
    assert not first.accepted
    assert first == [("bob@example.org", 550, "5.1.1 no such user")]
    assert first.recipients == ()
    assert second.accepted
    verbs = server.sessions[0].verbs
    assert verbs.count("MAIL") == 2
    second_mail = [i for i, verb in enumerate(verbs) if verb == "MAIL"][1]
    assert "RSET" in verbs[:second_mail], verbs
    assert verbs[second_mail - 1] == "RSET", verbs


def test_result_recipients_are_empty_when_nothing_was_sent():
    script = {("RCPT", 2): b"550 5.1.1 no such user\r\n"}
    with ScriptedServer(script, capabilities=["PIPELINING", "8BITMIME"]) as server:
        result = send(server, message(to="bob@example.org, carol@example.org"))
        server.wait_idle()
    assert not result.accepted
    assert result.recipients == ()
    assert result == [("carol@example.org", 550, "5.1.1 no such user")]
    with ScriptedServer(script, capabilities=["PIPELINING", "8BITMIME"]) as server:
        result = send(server, message(to="bob@example.org, carol@example.org"), atleastone=True)
        server.wait_idle()
    assert result.accepted
    assert result.recipients == ("bob@example.org",)


def test_refused_recipients_are_typed_three_tuples():
    script = {
        ("RCPT", 1): b"550 5.1.1 no such user\r\n",
        ("RCPT", 2): b"450 4.2.0 try later\r\n",
        ("RCPT", 3): b"553 mailbox name not allowed\r\n",
    }
    to = "bob@example.org, carol@example.org, dave@example.org, erin@example.org"
    with ScriptedServer(script) as server:
        result = send(server, message(to=to), atleastone=True)
    bob, carol, dave = result
    assert bob == ("bob@example.org", 550, "5.1.1 no such user")
    address, code, diagnostic = carol
    assert (address, code, diagnostic) == ("carol@example.org", 450, "4.2.0 try later")
    assert (bob.address, bob.code, bob.enhanced, bob.transient) == (
        "bob@example.org",
        550,
        "5.1.1",
        False,
    )
    assert (carol.enhanced, carol.transient, carol.permanent) == ("4.2.0", True, False)
    assert (dave.enhanced, dave.transient, dave.permanent) == (None, False, True)
    assert len(bob) == 3
    assert result.recipients == ("erin@example.org",)


# -- retry decisions -----------------------------------------------------------


def test_delivery_unknown_is_not_transient():
    with ScriptedServer({".": CLOSE}) as server, pytest.raises(DeliveryUnknownError) as info:
        send(server)
    error = info.value
    assert error.code == 400
    assert error.may_have_been_delivered
    assert not error.transient
    assert not error.permanent


def test_not_sent_errors_say_they_were_not_delivered():
    script = {"MAIL": b"451 4.3.0 try later\r\n"}
    with ScriptedServer(script) as server, pytest.raises(ResponseError) as info:
        send(server)
    assert info.value.transient
    assert not info.value.may_have_been_delivered
    with ScriptedServer({"DATA": CLOSE}) as server, pytest.raises(ConnectionLostError) as lost:
        send(server)
    assert lost.value.transient
    assert not lost.value.may_have_been_delivered


@pytest.mark.parametrize(
    "error",
    [
        TLSError("bad certificate", certificate=True),
        TLSError("injected", attack=True),
        TLSError("no STARTTLS; the TLS policy says no", policy=True),
    ],
)
def test_tls_refusals_are_not_transient(error):
    assert error.code == 454
    assert not error.transient


def test_a_tls_policy_refusal_from_a_real_send_is_not_transient():
    # The server does not offer STARTTLS; the "require" policy refuses to go on.
    with ScriptedServer() as server, pytest.raises(ConnectError) as info:
        send(server, usetls=True, tlspolicy="require")
    (failure,) = info.value.failures
    assert isinstance(failure.error, TLSError) and failure.error.policy
    assert not failure.error.transient
    assert not info.value.transient


def test_connect_error_is_transient_when_any_server_may_work_later():
    with (
        ScriptedServer() as tls_less,
        ScriptedServer(greeting=b"421 busy\r\n") as busy,
        pytest.raises(ConnectError) as info,
    ):
        smtplug.sendmessage(
            message(),
            servers=["127.0.0.1", "127.0.0.1"],
            ports=[tls_less.port, busy.port],
            client="localhost",
            timeout=5,
            tlspolicy="require",
        )
    first, second = info.value.failures
    assert not first.error.transient and second.error.transient
    assert info.value.transient and not info.value.permanent


# -- a server reply lost to a write error ----------------------------------------


class EarlyRefusal:
    """A raw server on 127.0.0.1 that refuses a message while it is coming in:
    after ``after`` octets of the body (DATA) or at the first BDAT command it
    answers ``refusal`` and closes, the rest of the client's data unread (so
    the client's writes fail with a reset)."""

    def __init__(self, capabilities: list[str], refusal: bytes, *, after: int = 100_000):
        self.capabilities = capabilities
        self.refusal = refusal
        self.after = after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.body_octets = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(b"220 early ESMTP\r\n")
            buffer = b""
            while True:
                while b"\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                line, buffer = buffer.split(b"\r\n", 1)
                verb = line.split(b" ", 1)[0].upper()
                if verb == b"EHLO":
                    lines = ["early", *self.capabilities]
                    text = "".join(f"250-{c}\r\n" for c in lines[:-1]) + f"250 {lines[-1]}\r\n"
                    conn.sendall(text.encode())
                elif verb in (b"MAIL", b"RCPT"):
                    conn.sendall(b"250 ok\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    self.body_octets = len(buffer)
                    while self.body_octets < self.after:
                        data = conn.recv(65536)
                        if not data:
                            return
                        self.body_octets += len(data)
                    self._refuse(conn)
                    return
                elif verb == b"BDAT":
                    self._refuse(conn)
                    return
                else:
                    conn.sendall(b"502 no\r\n")

    def _refuse(self, conn: socket.socket) -> None:
        conn.sendall(self.refusal)
        # Let the replies leave before closing with unread data (which resets the
        # connection and drops whatever is still queued), as a server that
        # waits for its last write does.
        time.sleep(0.2)

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def big_message(octets: int = 8_000_000) -> bytes:
    line = b"x" * 998 + b"\r\n"
    body = line * (octets // len(line))
    return b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: big\r\n\r\n" + body


def send_big(server: EarlyRefusal):
    return smtplug.sendmessage(
        big_message(), servers="127.0.0.1", ports=server.port, usetls=False, timeout=10
    )


@pytest.mark.parametrize(
    "capabilities",
    [
        ["8BITMIME"],
        ["PIPELINING", "8BITMIME"],
        ["CHUNKING", "8BITMIME"],
        ["PIPELINING", "CHUNKING", "8BITMIME"],
    ],
)
@pytest.mark.parametrize("one_shot", [True, False])
def test_a_refusal_while_the_message_is_written_is_reported_as_the_server_gave_it(
    capabilities, one_shot
):
    server = EarlyRefusal(capabilities, b"554 5.3.4 message too big for this system\r\n")
    try:
        with pytest.raises(ResponseError) as info:
            if one_shot:
                send_big(server)
            else:
                with smtplug.Client(
                    servers="127.0.0.1", ports=server.port, usetls=False, timeout=10
                ) as c:
                    c.sendmessage(big_message())
    finally:
        server.close()
    error = info.value
    assert (error.code, error.enhanced) == (554, "5.3.4")
    assert "too big" in error.diagnostic
    assert error.permanent and not error.transient and not error.may_have_been_delivered


def test_a_write_failure_without_a_reply_is_still_a_lost_connection():
    server = EarlyRefusal(["8BITMIME"], b"")
    try:
        with pytest.raises(ConnectionLostError) as info:
            send_big(server)
    finally:
        server.close()
    assert not isinstance(info.value, DeliveryUnknownError)
    assert info.value.transient


# -- an unsolicited 421 --------------------------------------------------------


def test_an_unsolicited_421_between_commands_fails_over_to_the_next_server():
    closing = {"MAIL": Answer(b"250 ok\r\n421 4.3.2 shutting down\r\n", then=CLOSE)}
    with ScriptedServer(closing) as first, ScriptedServer() as second:
        result = smtplug.sendmessage(
            message(),
            servers=["127.0.0.1", "127.0.0.1"],
            ports=[first.port, second.port],
            usetls=False,
            client="localhost",
            timeout=5,
        )
        first.wait_idle()
        second.wait_idle()
    assert result.accepted and result.port == second.port
    assert "RCPT" not in first.sessions[0].verbs
    assert len(second.sessions[0].transactions) == 1


def test_an_unsolicited_421_alone_is_a_421_not_a_protocol_error():
    closing = {"MAIL": Answer(b"250 ok\r\n421 4.3.2 shutting down\r\n", then=CLOSE)}
    with ScriptedServer(closing) as server, pytest.raises(ConnectError) as info:
        send(server)
    (failure,) = info.value.failures
    assert isinstance(failure.error, ResponseError)
    assert (failure.error.code, failure.error.enhanced) == (421, "4.3.2")
    assert info.value.transient


@pytest.mark.parametrize("capabilities", [["8BITMIME"], PIPE_CHUNK])
def test_a_kept_client_reconnects_after_an_unsolicited_421(capabilities):
    def close_after_first(command):
        if command.session.index == 0:
            return Answer(b"250 queued\r\n421 4.3.2 idle too long\r\n", then=CLOSE)
        return None

    with ScriptedServer({".": close_after_first}, capabilities=capabilities) as server:
        with client(server) as c:
            first = c.sendmessage(message("one"))
            server.wait_idle()
            second = c.sendmessage(message("two"))
        server.wait_idle()
    assert first.accepted and second.accepted
    assert [len(s.transactions) for s in server.sessions] == [1, 1]


# -- observers and callbacks after the end of the message ----------------------


class RaisingObserver:
    def __init__(self, when) -> None:
        self.when = when

    @smtplug.hookimpl
    def smtplug_on_reply(self, info, reply):
        if self.when(reply):
            raise RuntimeError("observer failed")


def test_an_observer_failing_at_the_reply_to_the_end_leaves_delivery_unknown():
    observer = RaisingObserver(lambda reply: reply.text.startswith("queued"))
    script = {".": b"250 queued as 1\r\n"}
    with ScriptedServer(script) as server, pytest.raises(DeliveryUnknownError) as info:
        send(server, plugins=[observer])
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.may_have_been_delivered


def test_a_progress_callback_failing_after_the_end_leaves_delivery_unknown():
    def progress(octets):
        if octets >= 20:
            raise RuntimeError("progress failed")

    with ScriptedServer() as server, pytest.raises(DeliveryUnknownError):
        send(server, progress=progress)


def test_an_observer_failing_before_the_end_aborts_and_nothing_is_sent():
    observer = RaisingObserver(lambda reply: reply.code == 354)
    with ScriptedServer() as server, pytest.raises(RuntimeError):
        send(server, plugins=[observer])
    server.wait_idle()
    assert not server.sessions[0].transactions[0].complete


def test_an_observer_failing_at_quit_does_not_hide_a_delivery():
    observer = RaisingObserver(lambda reply: reply.code == 221)
    with ScriptedServer() as server:
        result = send(server, plugins=[observer])
    assert result.accepted


# -- a Client shared by threads ------------------------------------------------


def _send_from_threads(c: smtplug.Client, threads: int, each: int) -> list[object]:
    outcomes: list[object] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(number: int) -> None:
        start.wait()
        for k in range(each):
            try:
                outcome: object = c.sendmessage(message(f"t{number}-{k}"))
            except Exception as exc:
                outcome = exc
            with lock:
                outcomes.append(outcome)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(worker.is_alive() for worker in workers)
    return outcomes


@pytest.mark.parametrize("capabilities", [["8BITMIME"], PIPE_CHUNK])
def test_a_client_shared_by_40_threads_sends_each_message_once(capabilities):
    with ScriptedServer(capabilities=capabilities) as server:
        with client(server) as c:
            outcomes = _send_from_threads(c, 40, 5)
        server.wait_idle()
    assert all(isinstance(o, smtplug.SendResult) and o.accepted for o in outcomes), [
        o for o in outcomes if not isinstance(o, smtplug.SendResult)
    ][:3]
    subjects = [
        line
        for session in server.sessions
        for transaction in session.transactions
        for line in transaction.content.split(b"\r\n")
        if line.startswith(b"Subject: ")
    ]
    assert len(subjects) == 200 and len(set(subjects)) == 200
    assert len(server.sessions) == 1  # one connection, used by one thread at a time


def test_a_client_called_from_its_own_observer_refuses():
    holder: dict[str, smtplug.Client] = {}
    seen: list[BaseException] = []

    class Reentrant:
        @smtplug.hookimpl
        def smtplug_on_reply(self, info, reply):
            if reply.code == 354 and not seen:
                try:
                    holder["client"].sendmessage(message("inner"))
                except smtplug.InvalidInputError as exc:
                    seen.append(exc)

    with ScriptedServer() as server, client(server, plugins=[Reentrant()]) as c:
        holder["client"] = c
        result = c.sendmessage(message("outer"))
    assert result.accepted
    assert len(seen) == 1 and "observer or callback" in str(seen[0])


# -- SIZE ----------------------------------------------------------------------


@pytest.mark.parametrize("capabilities", [["SIZE 1000"], ["SIZE 1000", *PIPE_CHUNK]])
def test_a_message_over_the_servers_size_is_refused_before_mail(capabilities):
    msg = message()
    msg.set_content("x" * 2000 + "\n")
    with ScriptedServer(capabilities=capabilities) as server:
        with pytest.raises(smtplug.MessageTooLargeError) as info:
            send(server, msg)
        server.wait_idle()
    assert info.value.code == 552 and info.value.permanent and not info.value.transient
    assert "SIZE limit (1000 octets" in info.value.diagnostic
    assert "MAIL" not in server.sessions[0].verbs


@pytest.mark.parametrize("capabilities", [["SIZE 1000"], ["SIZE 1000", *PIPE_CHUNK]])
def test_a_stream_growing_over_the_servers_size_is_abandoned_before_its_end(capabilities):
    def lines():
        yield b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: s\r\n\r\n"
        for _ in range(100):
            yield b"y" * 78 + b"\r\n"

    with ScriptedServer(capabilities=capabilities) as server:
        with pytest.raises(smtplug.MessageTooLargeError):
            send(server, lines())
        server.wait_idle()
    assert not any(t.complete for s in server.sessions for t in s.transactions)


def test_size_zero_means_no_limit_and_a_message_at_the_limit_goes():
    msg = message()
    msg.set_content("x" * 2000 + "\n")
    with ScriptedServer(capabilities=["SIZE 0"]) as server:
        assert send(server, msg).accepted
    size = len(msg.as_bytes().replace(b"\n", b"\r\n")) + 200  # with the added fields
    with ScriptedServer(capabilities=[f"SIZE {size}"]) as server:
        assert send(server, msg).accepted


# -- what the user sees: warnings ------------------------------------------------


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_downgrade_to_plain_text_is_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="smtplug")
    with ScriptedServer() as server:  # no STARTTLS offered
        assert send(server, usetls=True).accepted
    (text,) = _warnings(caplog)
    assert "WITHOUT TLS" in text and "does not offer STARTTLS" in text


def test_a_refused_starttls_downgrade_is_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="smtplug")
    script = {"STARTTLS": b"454 4.7.0 TLS not available\r\n"}
    with ScriptedServer(script, capabilities=["STARTTLS", "8BITMIME"]) as server:
        assert send(server, usetls=True).accepted
    (text,) = _warnings(caplog)
    assert "WITHOUT TLS" in text and "454" in text


def test_no_warning_when_plain_text_was_asked_for(caplog):
    caplog.set_level(logging.WARNING, logger="smtplug")
    with ScriptedServer() as server:
        assert send(server, usetls=False).accepted
    assert _warnings(caplog) == []


def test_a_message_left_unsent_by_a_refused_recipient_is_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="smtplug")
    script = {("RCPT", 2): b"550 5.1.1 no such user\r\n"}
    with ScriptedServer(script) as server:
        result = send(server, message(to="bob@example.org, carol@example.org"))
    assert not result.accepted
    (text,) = _warnings(caplog)
    assert "NOT sent" in text and "carol@example.org: 550" in text and "atleastone" in text


def test_tls_verify_false_is_a_warning(caplog, tmp_path):
    from tlsfixtures import server_context, tls_ca

    caplog.set_level(logging.WARNING, logger="smtplug")
    context = server_context(tls_ca().untrusted, tmp_path)
    with ScriptedServer(tls_context=context) as server:
        result = send(server, usetls=True, tls_verify=False)
    assert result.accepted and result.tls is not None and not result.tls.verified
    (text,) = _warnings(caplog)
    assert "tls_verify=False" in text


# -- the wrong kind of port ------------------------------------------------------


def test_plain_smtp_to_port_465_says_it_expects_implicit_tls():
    with machine_lock("port-465"):  # (the other suite of CI's pair needs it too)
        try:
            listener = socket.create_server(("127.0.0.1", 465))
        except OSError as exc:  # pragma: no cover - the suite runs as root, 465 free
            pytest.fail(f"this test needs 127.0.0.1:465 (root, port free): {exc}")
        # The kernel accepts; nothing greets, as with a server waiting for TLS.
        with listener, pytest.raises(ConnectError) as info:
            smtplug.sendmessage(
                message(),
                servers="127.0.0.1",
                ports=465,
                usetls=False,
                client="localhost",
                timeout=0.3,
            )
    (failure,) = info.value.failures
    assert "port 465 expects implicit TLS: use tlsimport=True" in failure.error.diagnostic


def test_a_greeting_that_never_comes_suggests_implicit_tls():
    with ScriptedServer(greeting=STALL) as server, pytest.raises(ConnectError) as info:
        send(server, timeout=0.3)
    (failure,) = info.value.failures
    assert "if this port expects implicit TLS (usually 465)" in failure.error.diagnostic


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
def test_implicit_tls_to_a_plain_smtp_port_says_so(backend):
    with ScriptedServer() as server, pytest.raises(ConnectError) as info:
        send(server, tlsimport=True, tls_backend=backend)
    (failure,) = info.value.failures
    assert isinstance(failure.error, TLSError)
    assert "the server spoke plain text, not TLS" in failure.error.diagnostic


def test_the_repr_of_tls_info_is_short_and_holds_no_binding():
    from smtplug.interfaces import TLSInfo

    info = TLSInfo(
        "stdlib",
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        b"\x30" * 900,
        True,
        {"tls-exporter": b"\x01" * 32},
    )
    text = repr(info)
    assert len(text) < 200 and "x30" not in text and "x01" not in text
    assert "TLSv1.3" in text and "verified=True" in text


def test_replies_still_due_after_a_refused_chunk_are_never_paired_with_later_commands():
    # Found by the chaos soak: pipelined BDAT chunks, the first refused, the
    # replies to the next ones late. The session raised the refusal and the
    # RSET went out with those replies still due: a late 554 answered the
    # RSET, the RSET's 250 the next MAIL, and so on, until a BDAT the server
    # refused was reported sent.
    def after(seconds: float, reply: bytes):
        def rule(command):
            time.sleep(seconds)  # the client writes the next chunks meanwhile
            return reply

        return rule

    script = {
        ("BDAT", 1): after(0.1, b"554 5.6.0 first chunk refused\r\n"),
        ("BDAT", 2): after(0.3, b"554 5.6.0 late\r\n"),
        ("BDAT", 3): after(0.3, b"554 5.6.0 late\r\n"),
        "BDAT": b"552 5.3.4 refused\r\n",
    }
    with ScriptedServer(script, capabilities=PIPE_CHUNK) as server:
        with client(server, timeout=2) as c:
            with pytest.raises(ResponseError) as first:
                c.sendmessage(big_message(3_000_000))
            outcome: object
            try:
                outcome = c.sendmessage(message("second"))
            except smtplug.SMTPError as exc:
                outcome = exc
        server.wait_idle()
    assert first.value.code == 554
    # The second message was refused (552): never reported sent.
    assert isinstance(outcome, ResponseError) and outcome.code == 552, outcome
    # The replies due were read before the session was used again.
    verbs = server.sessions[0].verbs
    assert verbs[:6] == ["EHLO", "MAIL", "RCPT", "BDAT", "BDAT", "BDAT"]
