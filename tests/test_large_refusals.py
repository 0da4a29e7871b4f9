"""Issue 15: a refused large message stops the upload, and the refusal is
reported as the server gave it.

A raw server on 127.0.0.1 (a thread; strict about BDAT framing, as Postfix
and Dovecot are) refuses at MAIL, at RCPT, at the first, a middle or the last
BDAT chunk, or in the middle of the DATA octets; after its refusal it answers
further BDAT commands with 503 (reading and discarding their octets, RFC
3030), and may close after a number of bad commands, as Dovecot does after
ten. It counts the octets the client sent after the refusal: at most one
chunk (smtplug looks for a reply between chunks) beyond what the kernel had
already taken from it (its socket send buffer, at most ``tcp_wmem``'s
maximum; the server's receive buffer is kept small), plus the commands
around it. The messages are much larger than that bound.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import smtplug
from apis import both_apis
from smtplug import ResponseError, source

pytestmark = both_apis

CHUNK = source.CHUNK
REFUSAL = b"552 5.3.4 Message size exceeds administrative limit\r\n"


class Refuser:
    def __init__(
        self, *, chunking: bool, pipelining: bool, at: str, close_after_bad: int | None = None
    ) -> None:
        self.capabilities = ["8BITMIME"]
        self.capabilities += ["PIPELINING"] if pipelining else []
        self.capabilities += ["CHUNKING"] if chunking else []
        self.at = at  # "MAIL", "RCPT", "chunk1", "chunk3", "last", "body"
        self.close_after_bad = close_after_bad
        self.listener = socket.socket()
        # A small receive window: what the server counts after its refusal is
        # then what the client wrote, not what sat in the server's buffers.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self.refused_at: int | None = None  # self.received when the refusal went
        self.verbs: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def after_refusal(self) -> int:
        assert self.refused_at is not None, "the server never refused"
        return self.received - self.refused_at

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(20)
                self._serve(conn)
        except (ConnectionError, TimeoutError, OSError) as exc:
            self.error = exc

    def _recv(self, conn: socket.socket) -> bytes:
        data = conn.recv(1 << 16)
        self.received += len(data)
        return data

    def _refuse(self, conn: socket.socket, reply: bytes = REFUSAL) -> None:
        self.refused_at = self.received - len(self.buffer)
        conn.sendall(reply)

    def _serve(self, conn: socket.socket) -> None:
        conn.sendall(b"220 refuser ESMTP\r\n")
        self.buffer = b""
        failed = False  # the transaction failed: later BDATs get 503
        bad = 0
        chunks = 0
        while True:
            while b"\r\n" not in self.buffer:
                data = self._recv(conn)
                if not data:
                    return
                self.buffer += data
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            words = line.decode("ascii", "replace").split()
            verb = words[0].upper() if words else ""
            self.verbs.append(verb)
            if verb == "EHLO":
                lines = ["refuser", *self.capabilities]
                text = "".join(f"250-{c}\r\n" for c in lines[:-1]) + f"250 {lines[-1]}\r\n"
                conn.sendall(text.encode())
            elif verb == "MAIL":
                failed = self.at == "MAIL"
                chunks = 0
                if failed:
                    self._refuse(conn)
                else:
                    conn.sendall(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                if failed:
                    conn.sendall(b"503 5.5.1 need MAIL\r\n")
                    bad += 1
                elif self.at == "RCPT":
                    failed = True
                    self._refuse(conn, b"550 5.1.1 no such user\r\n")
                else:
                    conn.sendall(b"250 2.1.5 ok\r\n")
            elif verb == "BDAT":
                size, last = int(words[1]), len(words) > 2
                while len(self.buffer) < size:  # the octets are read, whatever happens
                    data = self._recv(conn)
                    if not data:
                        return
                    self.buffer += data
                self.buffer = self.buffer[size:]
                chunks += 1
                if failed:
                    conn.sendall(b"503 5.5.1 no transaction\r\n")
                    bad += 1
                elif (self.at == f"chunk{chunks}") or (self.at == "last" and last):
                    failed = True
                    self._refuse(conn)
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n" if not last else b"250 2.0.0 queued\r\n")
            elif verb == "DATA":
                if failed:
                    conn.sendall(b"554 5.5.1 no valid recipients\r\n")
                    bad += 1
                    continue
                conn.sendall(b"354 go on\r\n")
                body = self.buffer
                self.buffer = b""
                refused = False
                while b"\r\n.\r\n" not in body[-(1 << 17) :]:
                    if self.at == "body" and not refused and len(body) > 2 * CHUNK:
                        refused = True
                        self.refused_at = self.received
                        conn.sendall(b"554 5.3.4 message too big\r\n")
                        if self.close_after_bad is not None:
                            time.sleep(0.2)
                            return
                    data = self._recv(conn)
                    if not data:
                        return
                    body += data
                if not refused:
                    conn.sendall(b"250 2.0.0 queued\r\n")
            elif verb == "RSET":
                failed = False
                conn.sendall(b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.2 no\r\n")
            if self.close_after_bad is not None and bad >= self.close_after_bad:
                time.sleep(0.2)  # let the replies leave before the reset
                return

    def close(self) -> None:
        self.thread.join(20)
        self.listener.close()


def _send_buffer_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as limits:
            return int(limits.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20  # Linux's default maximum


SIZE = 24 * CHUNK
#: Octets the client may still send after the refusal: one chunk it could not
#: know about, and what its kernel had already accepted (sent unseen by it).
BOUND = CHUNK + _send_buffer_max() + 4096


def big(octets: int = SIZE) -> bytes:
    line = b"z" * 998 + b"\r\n"
    head = b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: big\r\n\r\n"
    return head + line * (octets // len(line))


def send(server: Refuser, **options):
    return smtplug.sendmessage(
        big(),
        servers="127.0.0.1",
        ports=server.port,
        usetls=False,
        client="localhost",
        timeout=10,
        **options,
    )


SLACK = 4096  # the commands that follow a refusal (RCPT, RSET, QUIT)


def test_the_bound_leaves_most_of_the_message_unsent():
    assert SIZE > 2 * BOUND


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("chunking", [True, False])
def test_a_refused_mail_uploads_nothing(chunking, pipelining):
    server = Refuser(chunking=chunking, pipelining=pipelining, at="MAIL")
    try:
        with pytest.raises(ResponseError) as info:
            send(server)
    finally:
        server.close()
    assert (info.value.code, info.value.enhanced) == (552, "5.3.4")
    assert server.after_refusal < SLACK
    # (A DATA only in the flight with MAIL; the refusal is then reset.)
    assert "BDAT" not in server.verbs and server.verbs[-2:] == ["RSET", "QUIT"]
    assert "DATA" not in server.verbs[:-3]


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("chunking", [True, False])
def test_a_refused_recipient_uploads_nothing(chunking, pipelining):
    server = Refuser(chunking=chunking, pipelining=pipelining, at="RCPT")
    try:
        result = send(server)
    finally:
        server.close()
    assert not result.accepted
    assert result == [("bob@example.org", 550, "5.1.1 no such user")]
    assert server.after_refusal < SLACK
    assert "BDAT" not in server.verbs


@pytest.mark.parametrize("at", ["chunk1", "chunk3", "last"])
@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("close_after_bad", [None, 1])
def test_a_refused_chunk_stops_the_upload(at, pipelining, close_after_bad):
    server = Refuser(chunking=True, pipelining=pipelining, at=at, close_after_bad=close_after_bad)
    try:
        with pytest.raises(ResponseError) as info:
            send(server)
    finally:
        server.close()
    error = info.value
    assert (error.code, error.enhanced) == (552, "5.3.4"), error
    assert error.permanent and not error.transient and not error.may_have_been_delivered
    # At most the chunk in flight when the refusal came, and the commands after.
    assert server.after_refusal <= BOUND


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("close", [False, True])
def test_a_refusal_in_the_middle_of_data_stops_the_upload(pipelining, close):
    server = Refuser(
        chunking=False, pipelining=pipelining, at="body", close_after_bad=1 if close else None
    )
    try:
        with pytest.raises(ResponseError) as info:
            send(server)
    finally:
        server.close()
    assert (info.value.code, info.value.enhanced) == (554, "5.3.4")
    assert server.after_refusal <= BOUND
    assert "." not in server.verbs  # the message was never ended


def test_the_client_works_after_a_refused_chunk():
    server = Refuser(chunking=True, pipelining=True, at="chunk3")
    try:
        with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False, timeout=10) as c:
            with pytest.raises(ResponseError):
                c.sendmessage(big())
            assert c.sendmessage(big(1000)).accepted
    finally:
        server.close()
    assert server.verbs.count("RSET") == 1
