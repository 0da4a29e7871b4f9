"""Tests of smtplug.testing.ScriptedServer itself: hostile-server tests rely on it.

Most tests speak to it through a raw socket (:class:`Raw`), so what is checked
is the server, not smtplug; a few run the real client against it.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from email.message import EmailMessage

import pytest

import smtplug
from smtplug.testing import (
    CLOSE,
    RESET,
    SILENT,
    STALL,
    Answer,
    Command,
    ScriptedServer,
)
from tlsfixtures import server_context, tls_ca, write_files


class Raw:
    """A bare SMTP client socket: send bytes, read whole replies."""

    def __init__(self, port: int, *, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.pending = b""

    def reply(self) -> bytes:
        """One complete reply (every line up to the one without "-")."""
        out = b""
        while True:
            while b"\n" not in self.pending:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed after {out + self.pending!r}")
                self.pending += data
            line, _, self.pending = self.pending.partition(b"\n")
            out += line + b"\n"
            if line[3:4] != b"-":
                return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()

    def rest(self) -> bytes:
        """Everything until the server closes."""
        out = self.pending
        self.pending = b""
        while data := self.sock.recv(65536):
            out += data
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw():
    opened: list[Raw] = []

    def connect(server: ScriptedServer) -> Raw:
        client = Raw(server.port)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "scripted"
    msg.set_content(".leading dot\nsecond line\n")
    return msg


def send(server: ScriptedServer, msg: object = None, **options):
    options.setdefault("usetls", False)
    options.setdefault("timeout", 5)
    return smtplug.sendmessage(
        message() if msg is None else msg,
        servers="127.0.0.1",
        ports=server.port,
        client="localhost",
        **options,
    )


# --- defaults ----------------------------------------------------------------------------


def test_default_dialogue_with_smtplug():
    with ScriptedServer(capabilities=["8BITMIME", "SIZE 1000000"]) as server:
        result = send(server)
        server.wait_idle()
    assert result.accepted and list(result) == []
    assert server.connections == 1 and server.errors == []
    session = server.sessions[0]
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    assert session.commands[0].line == "EHLO localhost"
    assert session.commands[1].args.startswith("FROM:<alice@example.com> SIZE=")
    transaction = session.transactions[0]
    assert transaction.mail is session.commands[1]
    assert [c.line for c in transaction.rcpts] == ["RCPT TO:<bob@example.org>"]
    assert transaction.complete
    assert b"\r\n\r\n..leading dot\r\nsecond line\r\n.\r\n" in transaction.data
    assert transaction.data.endswith(b"second line\r\n.\r\n")
    assert transaction.content.endswith(b"\r\n\r\n.leading dot\r\nsecond line\r\n")
    # The capture is exact: every command line and the message, in order.
    assert session.received == b"".join(
        transaction.data if c.verb == "." else c.raw for c in session.commands
    )
    assert session.sent == (
        b"220 scripted.test ESMTP ready\r\n"
        b"250-scripted.test\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"
        b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.0.0 OK: queued\r\n221 2.0.0 Bye\r\n"
    )
    assert session.ended.is_set() and not session.tls and session.error is None


def test_default_replies_to_every_verb(raw):
    with ScriptedServer(capabilities=[]) as server:
        client = raw(server)
        assert client.reply() == b"220 scripted.test ESMTP ready\r\n"
        assert client.ask(b"EHLO me\r\n") == b"250 scripted.test\r\n"
        assert client.ask(b"HELO me\r\n") == b"250 scripted.test\r\n"
        assert client.ask(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"
        assert client.ask(b"RSET\r\n") == b"250 2.0.0 OK\r\n"
        assert client.ask(b"STARTTLS\r\n") == b"454 4.7.0 TLS not available\r\n"
        assert client.ask(b"XYZZY plugh\r\n") == b"502 5.5.2 Command not recognized\r\n"
        assert client.ask(b"BDAT x\r\n").startswith(b"501 ")
        assert client.ask(b"QUIT\r\n") == b"221 2.0.0 Bye\r\n"
        assert client.rest() == b""  # closed after QUIT
        server.wait_idle()
    assert server.sessions[0].verbs == [
        "EHLO", "HELO", "NOOP", "RSET", "STARTTLS", "XYZZY", "BDAT", "QUIT",
    ]  # fmt: skip


# --- capture -----------------------------------------------------------------------------


def test_capture_is_byte_exact_whatever_the_segmentation(raw):
    with ScriptedServer() as server:
        client = raw(server)
        client.reply()
        wire = (
            b"EHLO \xff\x00odd\r\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\r\nDATA\r\n"
            b"bare\nlf\rcr\r\n.\n.x\r\n\r\n..\r\n.\r\nQUIT\r\n"
        )
        for index in range(len(wire)):  # one octet per write
            client.send(wire[index : index + 1])
        assert client.rest().endswith(b"221 2.0.0 Bye\r\n")
        server.wait_idle()
    session = server.sessions[0]
    assert session.received == wire
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    assert session.commands[0].raw == b"EHLO \xff\x00odd\r\n"
    assert session.commands[0].line == "EHLO \\xff\x00odd"
    assert session.commands[1].raw == b"MAIL FROM:<a@b>\n"
    # Only CR LF "." CR LF ends the data; bare LF or CR around a dot does not.
    transaction = session.transactions[0]
    assert transaction.data == b"bare\nlf\rcr\r\n.\n.x\r\n\r\n..\r\n.\r\n"
    # Un-stuffed as a server does: a dot after CR LF goes.
    assert transaction.content == b"bare\nlf\rcr\r\n\n.x\r\n\r\n.\r\n"


@pytest.mark.parametrize(
    "lookalike",
    [b"\n.\n", b"\n.\r\n", b"\r.\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r.\r"],
)
def test_only_crlf_dot_crlf_ends_data(raw, lookalike):
    with ScriptedServer() as server:
        client = raw(server)
        client.reply()
        for line in (b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n"):
            assert client.ask(line).startswith(b"250")
        assert client.ask(b"DATA\r\n").startswith(b"354")
        body = b"x" + lookalike + b"MAIL FROM:<evil@x>\r\n"
        assert client.ask(body + b".\r\n") == b"250 2.0.0 OK: queued\r\n"
        client.ask(b"QUIT\r\n")
        server.wait_idle()
    session = server.sessions[0]
    assert session.verbs == ["MAIL", "RCPT", "DATA", ".", "QUIT"]
    assert session.transactions[0].data == body + b".\r\n"


def test_empty_message_and_pipelined_commands(raw):
    with ScriptedServer() as server:
        client = raw(server)
        client.reply()
        client.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
        assert [client.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        # The terminator right at the start: an empty message; the rest are commands.
        client.send(b".\r\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nRSET\r\nQUIT\r\n")
        assert client.rest().count(b"\r\n") == 5
        server.wait_idle()
    first, second = server.sessions[0].transactions
    assert first.data == b".\r\n" and first.content == b"" and first.complete
    assert second.mail is not None and second.mail.args == "FROM:<e@f>"
    assert not second.complete and second.data == b""


def test_bdat_reads_exact_octets(raw):
    with ScriptedServer(capabilities=["CHUNKING"]) as server:
        client = raw(server)
        client.reply()
        client.ask(b"MAIL FROM:<a@b>\r\n")
        client.ask(b"RCPT TO:<c@d>\r\n")
        # Payloads that look like commands and terminators are content.
        assert client.ask(b"BDAT 13\r\nQUIT\r\n.\r\nRSET") == b"250 2.0.0 OK: 13 octets\r\n"
        assert client.ask(b"BDAT 0\r\n") == b"250 2.0.0 OK: 0 octets\r\n"
        assert client.ask(b"BDAT 3 LAST\r\n\r\nx") == (
            b"250 2.0.0 OK: 3 octets, message queued\r\n"
        )
        assert client.ask(b"BDAT 2 last\r\nab") == b"250 2.0.0 OK: 2 octets, message queued\r\n"
        client.ask(b"QUIT\r\n")
        server.wait_idle()
    session = server.sessions[0]
    assert session.verbs == ["MAIL", "RCPT", "BDAT", "BDAT", "BDAT", "BDAT", "QUIT"]
    first, second = session.transactions
    assert first.chunks == [b"QUIT\r\n.\r\nRSET", b"", b"\r\nx"] and first.complete
    assert first.content == b"QUIT\r\n.\r\nRSET\r\nx"
    assert second.mail is None and second.bdat == b"ab" and second.complete


def test_bdat_with_smtplug():
    with ScriptedServer(capabilities=["CHUNKING", "PIPELINING"]) as server:
        send(server, atleastone=True)
        server.wait_idle()
    session = server.sessions[0]
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "BDAT", "QUIT"]
    transaction = session.transactions[0]
    assert transaction.complete and transaction.data == b""
    assert transaction.bdat.endswith(b"\r\n\r\n.leading dot\r\nsecond line\r\n")
    size = int(session.commands[3].args.split()[0])
    assert size == len(transaction.bdat)


# --- scripts -----------------------------------------------------------------------------


def test_rules_by_verb_and_occurrence(raw):
    seen: list[Command] = []

    def third_rcpt(command: Command):
        seen.append(command)
        return None  # the default answer

    script = {
        "rcpt": b"550 5.1.1 no\r\n",
        ("RCPT", 2): b"251 forwarded\r\n",
        ("RCPT", 3): third_rcpt,
        ("NOOP", 1): lambda c: f"250 noop {c.occurrence} {c.args}\r\n".encode(),
        "MAIL": [b"25", b"0-split\r\n", b"250 ", b"chunks\r\n"],
    }
    with ScriptedServer(script) as server:
        client = raw(server)
        client.reply()
        assert client.ask(b"MAIL FROM:<a@b>\r\n") == b"250-split\r\n250 chunks\r\n"
        assert client.ask(b"RCPT TO:<1@x>\r\n") == b"550 5.1.1 no\r\n"
        assert client.ask(b"RCPT TO:<2@x>\r\n") == b"251 forwarded\r\n"
        assert client.ask(b"RCPT TO:<3@x>\r\n") == b"250 2.1.5 OK\r\n"
        assert client.ask(b"RCPT TO:<4@x>\r\n") == b"550 5.1.1 no\r\n"
        assert client.ask(b"NOOP  hello \r\n") == b"250 noop 1 hello\r\n"
        assert client.ask(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"
        client.ask(b"QUIT\r\n")
        server.wait_idle()
    assert [(c.verb, c.occurrence, c.args) for c in seen] == [("RCPT", 3, "TO:<3@x>")]
    assert seen[0].session is server.sessions[0]
    assert [len(t.rcpts) for t in server.sessions[0].transactions] == [4]


def test_callable_can_tell_connections_apart():
    script = {".": lambda c: b"451 4.3.0 try later\r\n" if c.session.index == 0 else None}
    with ScriptedServer(script) as server:
        with pytest.raises(smtplug.ResponseError) as info:
            send(server)
        assert info.value.code == 451
        assert send(server).accepted
        server.wait_idle()
    assert server.connections == 2


def test_silent_reads_without_answering(raw):
    with ScriptedServer({"NOOP": SILENT}) as server:
        client = raw(server)
        client.reply()
        client.send(b"NOOP\r\nNOOP\r\n")
        assert client.ask(b"RSET\r\n") == b"250 2.0.0 OK\r\n"
        client.ask(b"QUIT\r\n")
        server.wait_idle()
    assert server.sessions[0].verbs == ["NOOP", "NOOP", "RSET", "QUIT"]


def test_greeting_is_raw(raw):
    with ScriptedServer(greeting=b"220-first\r\n220 second\r\n999 junk") as server:
        client = raw(server)
        assert client.reply() == b"220-first\r\n220 second\r\n"
        client.send(b"QUIT\r\n")
        assert client.rest() == b"999 junk221 2.0.0 Bye\r\n"


def test_greeting_callable_and_close(raw):
    greeting = lambda c: Answer(b"421 busy\r\n", then=CLOSE) if c.verb == "GREETING" else None  # noqa: E731
    with ScriptedServer(greeting=greeting) as server:
        client = raw(server)
        assert client.rest() == b"421 busy\r\n"
        server.wait_idle()
    assert server.sessions[0].commands == []


def test_endless_reply_is_generated_lazily_and_stops_with_the_client(raw):
    produced = 0

    def endless():
        nonlocal produced
        while True:
            produced += 1
            yield b"250-x\r\n"

    with ScriptedServer({"EHLO": endless()}) as server:
        client = raw(server)
        client.reply()
        client.send(b"EHLO me\r\n")
        received = b""
        while len(received) < 100_000:
            received += client.sock.recv(65536)
        client.close()
        server.wait_idle()
    assert received.startswith(b"250-x\r\n250-x\r\n")
    session = server.sessions[0]
    # Written with flow control: it stopped soon after the client left.
    assert isinstance(session.error, OSError)
    assert produced < 10_000_000 and server.errors == []


def test_a_failing_callable_is_reported(raw):
    def broken(command: Command) -> bytes:
        raise RuntimeError("script bug")

    with ScriptedServer({"MAIL": broken}) as server:
        client = raw(server)
        client.reply()
        client.send(b"MAIL FROM:<a@b>\r\n")
        assert client.rest() == b""
        server.wait_idle()
    assert [str(e) for e in server.errors] == ["script bug"]
    assert isinstance(server.sessions[0].error, RuntimeError)


def test_bad_scripts_are_refused():
    with pytest.raises(ValueError):
        ScriptedServer({("RCPT", 0): b"250\r\n"})
    with pytest.raises(ValueError):
        ScriptedServer({42: b"250\r\n"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        ScriptedServer(implicit_tls=True)
    with pytest.raises(ValueError):
        ScriptedServer(drip=(0, 0.1))
    with pytest.raises(ValueError):
        Answer(b"x", drip=(1, -1))
    with pytest.raises(RuntimeError):
        ScriptedServer().port  # noqa: B018


# --- actions, drip -----------------------------------------------------------------------


def test_close_after_the_final_dot():
    with ScriptedServer({".": CLOSE}) as server:
        with pytest.raises(smtplug.DeliveryUnknownError):
            send(server)
        server.wait_idle()
    assert server.sessions[0].verbs == ["EHLO", "MAIL", "RCPT", "DATA", "."]


def test_reset_sends_a_tcp_rst(raw):
    with ScriptedServer({"NOOP": Answer(b"250 ok\r\n", then=RESET)}) as server:
        client = raw(server)
        client.reply()
        client.send(b"NOOP\r\n")
        with pytest.raises(ConnectionResetError):
            while client.sock.recv(65536):
                pass
        server.wait_idle()


def test_stall_never_answers_but_still_records():
    with ScriptedServer({".": STALL}) as server:
        started = time.monotonic()
        with pytest.raises(smtplug.DeliveryUnknownError) as info:
            send(server, maxsecs=0.3)
        assert 0.3 <= time.monotonic() - started < 3
        assert info.value.__cause__ is not None
        server.wait_idle()
    session = server.sessions[0]
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "DATA", "."]
    assert session.sent.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")


def test_stalled_session_keeps_recording_raw_bytes(raw):
    with ScriptedServer({"NOOP": STALL}) as server:
        client = raw(server)
        client.reply()
        client.send(b"NOOP\r\n")
        client.send(b"RSET\r\nQUIT\r\n")
        client.sock.shutdown(socket.SHUT_WR)
        assert client.rest() == b""
        server.wait_idle()
    session = server.sessions[0]
    assert session.received == b"NOOP\r\nRSET\r\nQUIT\r\n"
    assert session.verbs == ["NOOP"]  # nothing parsed after the stall


def test_drip_sends_in_pieces_with_delays(raw):
    reply = b"250 2.1.0 slowly but surely\r\n"  # 30 octets: 10 pieces, 9 pauses
    with ScriptedServer({"MAIL": Answer(reply, drip=(3, 0.02))}) as server:
        client = raw(server)
        client.reply()
        started = time.monotonic()
        assert client.ask(b"MAIL FROM:<a@b>\r\n") == reply
        assert time.monotonic() - started >= 9 * 0.02
        client.ask(b"QUIT\r\n")


def test_server_wide_drip_applies_to_the_greeting(raw):
    with ScriptedServer(drip=(1, 0.01)) as server:
        started = time.monotonic()
        assert raw(server).reply() == b"220 scripted.test ESMTP ready\r\n"
        assert time.monotonic() - started >= 30 * 0.01


# --- AUTH --------------------------------------------------------------------------------


def test_lines_after_a_334_are_sasl(raw):
    script = {
        "AUTH": b"334 VXNlcm5hbWU6\r\n",
        ("SASL", 1): b"334 UGFzc3dvcmQ6\r\n",
        ("SASL", 2): b"535 5.7.8 no\r\n",
    }
    with ScriptedServer(script, capabilities=["AUTH LOGIN"]) as server:
        client = raw(server)
        client.reply()
        assert client.ask(b"AUTH LOGIN\r\n").startswith(b"334")
        assert client.ask(b"dXNlcg==\r\n").startswith(b"334")
        assert client.ask(b"cGFzcw==\r\n").startswith(b"535")
        assert client.ask(b"NOOP\r\n").startswith(b"250")  # a command again
        assert client.ask(b"AUTH LOGIN\r\n").startswith(b"334")
        assert client.ask(b"*\r\n").startswith(b"501")  # the default for a cancel
        client.ask(b"QUIT\r\n")
        server.wait_idle()
    commands = server.sessions[0].commands
    assert [(c.verb, c.args) for c in commands[:4]] == [
        ("AUTH", "LOGIN"),
        ("SASL", "dXNlcg=="),
        ("SASL", "cGFzcw=="),
        ("NOOP", ""),
    ]
    assert [c.verb for c in commands[4:]] == ["AUTH", "SASL", "QUIT"]


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    certs = tls_ca()
    directory = tmp_path_factory.mktemp("scripted-tls")
    return write_files(certs, directory).cafile, server_context(certs.server, directory)


def test_starttls_then_real_tls(tls):
    cafile, context = tls
    with ScriptedServer(
        tls_context=context,
        capabilities=["STARTTLS", "X-BEFORE"],
        tls_capabilities=["X-AFTER", "8BITMIME"],
    ) as server:
        result = send(server, usetls=True, cafile=cafile, tlspolicy="require")
        server.wait_idle()
    assert result.accepted and result.tls is not None and result.tls.verified
    session = server.sessions[0]
    assert session.tls and session.error is None
    assert session.verbs == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    assert [c.tls for c in session.commands] == [False, False] + [True] * 6
    assert session.sent.startswith(
        b"220 scripted.test ESMTP ready\r\n"
        b"250-scripted.test\r\n250-STARTTLS\r\n250 X-BEFORE\r\n"
        b"220 2.0.0 Ready to start TLS\r\n"
        b"250-scripted.test\r\n250-X-AFTER\r\n250 8BITMIME\r\n"
    )
    # received holds the decrypted commands, not the handshake.
    assert session.received.startswith(b"EHLO localhost\r\nSTARTTLS\r\nEHLO localhost\r\n")


def test_default_capabilities_offer_starttls_with_a_context(tls):
    _, context = tls
    server = ScriptedServer(tls_context=context)
    assert server.capabilities == ["8BITMIME", "STARTTLS"]
    assert server.tls_capabilities == ["8BITMIME"]
    assert ScriptedServer(tls_context=context, implicit_tls=True).capabilities == ["8BITMIME"]


def test_implicit_tls(tls):
    cafile, context = tls
    with ScriptedServer(tls_context=context, implicit_tls=True) as server:
        result = send(server, tlsimport=True, cafile=cafile)
        server.wait_idle()
    assert result.accepted and result.tls is not None
    session = server.sessions[0]
    assert session.tls and all(c.tls for c in session.commands)
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]


def test_implicit_tls_handshake_failure_is_quiet(tls):
    _, context = tls
    with (
        ScriptedServer(tls_context=context, implicit_tls=True) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        sock.sendall(b"EHLO not tls\r\n")
        sock.recv(100)  # the server drops the connection
    assert server.connections == 0  # no session without a handshake
    assert server.errors == []


def test_injection_goes_in_the_same_write_as_the_220(tls, raw):
    _, context = tls
    with ScriptedServer(tls_context=context, starttls_inject=b"250 injected") as server:
        client = raw(server)
        client.reply()
        client.send(b"STARTTLS\r\n")
        data = b""
        while not data.endswith(b"250 injected"):
            data += client.sock.recv(100)
        assert data == b"220 2.0.0 Ready to start TLS\r\n250 injected"
        client.close()
        server.wait_idle()
    assert server.sessions[0].error is not None  # no handshake followed


def test_bytes_pipelined_after_starttls_are_discarded(tls):
    cafile, context = tls
    with ScriptedServer(tls_context=context) as server:
        client = Raw(server.port)
        client.reply()
        client.send(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n")
        assert client.reply().startswith(b"220")
        client_context = ssl.create_default_context(cafile=cafile)
        sock = client_context.wrap_socket(client.sock, server_hostname="localhost")
        sock.sendall(b"NOOP\r\n")
        assert sock.recv(100) == b"250 2.0.0 OK\r\n"
        sock.close()
        server.wait_idle()
    session = server.sessions[0]
    assert session.verbs == ["STARTTLS", "NOOP"]
    assert session.received == b"STARTTLS\r\nMAIL FROM:<injected@x>\r\nNOOP\r\n"


def tls_with_first_command(sock: socket.socket, context: ssl.SSLContext, data: bytes) -> bytes:
    """Handshake over ``sock`` and send ``data`` in the same write as the
    client's last handshake message; return everything the server answers."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    tls.write(data)
    sock.sendall(outgoing.read())  # Finished and the commands, one segment
    answer = b""
    while True:
        try:
            data = tls.read(65536)
        except ssl.SSLWantReadError:
            received = sock.recv(65536)
            if not received:
                return answer
            incoming.write(received)
            continue
        if not data:  # the server's close_notify
            return answer
        answer += data


def test_commands_with_the_last_handshake_message_are_kept(tls):
    # The client's first command can arrive together with its Finished
    # message, before start_tls returns on the server side.
    cafile, context = tls
    client_context = ssl.create_default_context(cafile=cafile)
    with ScriptedServer(tls_context=context) as server:
        for _ in range(5):
            client = Raw(server.port)
            client.reply()
            assert client.ask(b"STARTTLS\r\n").startswith(b"220")
            answer = tls_with_first_command(client.sock, client_context, b"NOOP\r\nQUIT\r\n")
            client.close()
            assert answer == b"250 2.0.0 OK\r\n221 2.0.0 Bye\r\n"
        server.wait_idle()
    assert all(s.verbs == ["STARTTLS", "NOOP", "QUIT"] for s in server.sessions)


# --- life cycle --------------------------------------------------------------------------


def test_stop_closes_clients_and_thread(raw):
    before = set(threading.enumerate())
    server = ScriptedServer({"NOOP": STALL}).start()
    client = raw(server)
    client.reply()
    client.send(b"NOOP\r\n")
    with pytest.raises(TimeoutError):
        server.wait_idle(0.05)
    assert server.connections == 1
    server.stop()
    assert client.rest() == b""  # closed by the server
    assert set(threading.enumerate()) <= before
    server.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_many_connections_are_counted():
    with ScriptedServer() as server:
        with smtplug.Client(
            servers="127.0.0.1", ports=server.port, usetls=False, client="localhost"
        ) as client:
            for _ in range(3):
                client.sendmessage(message())
        for _ in range(2):
            send(server)
        server.wait_idle()
    assert server.connections == 3
    assert server.sessions[0].verbs.count(".") == 3
    assert [s.index for s in server.sessions] == [0, 1, 2]
