"""Waits per phase (RFC 5321 section 4.5.3.2): defaults, options, and each
phase's limit against a server that stops answering (or reading) there."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import smtplug
from apis import both_apis
from smtplug.api import _timeouts
from smtplug.errors import ConnectionLostError, DeliveryUnknownError

pytestmark = both_apis

RFC = {
    "connect": 60.0,
    "greeting": 300.0,
    "command": 300.0,
    "mail": 300.0,
    "rcpt": 300.0,
    "data": 120.0,
    "block": 180.0,
    "final": 600.0,
}


def as_dict(timeouts: smtplug.Timeouts) -> dict[str, float]:
    return {phase: getattr(timeouts, phase) for phase in RFC}


def test_the_defaults_are_rfc_5321s() -> None:
    assert as_dict(smtplug.Timeouts()) == RFC
    assert as_dict(_timeouts(None, None, None)) == RFC


def test_timeout_sets_every_wait_but_the_final_one() -> None:
    assert as_dict(_timeouts(7, None, None)) == {**dict.fromkeys(RFC, 7.0), "final": 600.0}


def test_maxsecs_sets_the_final_wait_as_tcllib_does() -> None:
    assert as_dict(_timeouts(None, 120, None)) == {**RFC, "final": 120.0}
    assert as_dict(_timeouts(7, 120, None)) == {**dict.fromkeys(RFC, 7.0), "final": 120.0}


def test_timeouts_by_phase_keep_the_other_defaults() -> None:
    assert as_dict(_timeouts(None, None, {"rcpt": 30, "final": 900})) == {
        **RFC,
        "rcpt": 30.0,
        "final": 900.0,
    }
    given = smtplug.Timeouts(greeting=5)
    assert _timeouts(None, None, given) == given


# -- each phase against a server that goes quiet there --------------------------


class QuietServer:
    """Answers like a server until ``quiet_at`` (a command verb, or "greeting"),
    then never answers; with ``stop_reading`` it stops reading after the 354
    to DATA, so the client's writes stall."""

    def __init__(self, quiet_at: str, *, stop_reading: bool = False) -> None:
        self.quiet_at = quiet_at
        self.stop_reading = stop_reading
        self.commands: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._done = threading.Event()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        self._listener.close()  # one connection only: later ones are refused
        self._connections.append(conn)
        if self.stop_reading:
            # The smallest receive buffer, so the client's writes stall soon.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        replies = {
            b"EHLO": b"250-quiet.example\r\n250 PIPELINING\r\n",
            b"MAIL": b"250 ok\r\n",
            b"RCPT": b"250 ok\r\n",
            b"DATA": b"354 go on\r\n",
            b"QUIT": b"221 bye\r\n",
        }
        if self.quiet_at != "greeting":
            conn.sendall(b"220 quiet.example ESMTP\r\n")
        buffer = b""
        in_data = False
        while not self._done.is_set():
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n", 1)
                if in_data and line != b".":
                    continue  # message content
                in_data = False
                verb = line[:4].upper()
                self.commands.append(line)
                if verb.decode() == self.quiet_at:
                    self._done.wait()
                    return
                conn.sendall(replies.get(verb, b"250 ok\r\n"))
                in_data = verb == b"DATA"
                if verb == b"DATA" and self.stop_reading:
                    self._done.wait()
                    return

    def close(self) -> None:
        self._done.set()
        self._listener.close()
        for conn in self._connections:
            conn.close()
        self._thread.join(5)


@pytest.fixture
def quiet() -> Iterator[type[QuietServer]]:
    made: list[QuietServer] = []

    class Made(QuietServer):
        def __init__(self, quiet_at: str, **kwargs: bool) -> None:
            super().__init__(quiet_at, **kwargs)
            made.append(self)

    yield Made
    for server in made:
        server.close()


MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: t\r\n\r\nbody\r\n"


def send(server: QuietServer, message: bytes = MESSAGE, **options: object) -> smtplug.SendResult:
    return smtplug.sendmessage(
        message, servers="127.0.0.1", ports=server.port, usetls=False, **options
    )


@pytest.mark.parametrize(
    ("phase", "quiet_at", "what"),
    [
        ("greeting", "greeting", "the greeting"),
        ("command", "EHLO", "EHLO"),
    ],
)
def test_a_wait_before_the_transaction_gives_the_server_up(quiet, phase, quiet_at, what) -> None:
    server = quiet(quiet_at)
    with pytest.raises(smtplug.ConnectError) as caught:
        send(server, timeouts={phase: 0.3})
    assert f"no reply to {what}" in str(caught.value)
    assert "0.3 s" in str(caught.value)


@pytest.mark.parametrize(
    ("phase", "quiet_at", "what"),
    [("mail", "MAIL", "MAIL"), ("rcpt", "RCPT", "RCPT"), ("data", "DATA", "DATA")],
)
def test_a_wait_in_the_transaction_is_its_phases(quiet, phase, quiet_at, what) -> None:
    server = quiet(quiet_at)
    with pytest.raises(ConnectionLostError) as caught:
        send(server, timeouts={phase: 0.3})  # only this phase's wait can run out
    assert not isinstance(caught.value, DeliveryUnknownError)
    assert caught.value.timed_out is True
    assert f"no reply to {what}" in caught.value.diagnostic


def test_the_final_wait_makes_the_delivery_unknown(quiet) -> None:
    server = quiet(".")
    with pytest.raises(DeliveryUnknownError) as caught:
        send(server, maxsecs=0.3)
    assert "0.3 s" in caught.value.diagnostic


def test_the_block_wait_bounds_a_write_the_server_does_not_take(quiet) -> None:
    server = quiet("none", stop_reading=True)
    body = b"From: a@example.com\r\nTo: b@example.org\r\n\r\n" + b"x" * 70 + b"\r\n"
    with pytest.raises(ConnectionLostError) as caught:
        # 14 MB: far more than both sockets' buffers hold.
        send(server, body * 200_000, timeouts={"block": 0.5})
    assert not isinstance(caught.value, DeliveryUnknownError)  # the end never went
    assert caught.value.timed_out is True
    assert "no progress for 0.5 s" in caught.value.diagnostic


def test_a_client_never_reuses_a_connection_whose_wait_ran_out(quiet) -> None:
    server = quiet("RCPT")
    with smtplug.Client(
        servers="127.0.0.1",
        ports=server.port,
        usetls=False,
        timeouts={"rcpt": 0.3, "mail": 0.3},
    ) as client:
        with pytest.raises(ConnectionLostError):
            client.sendmessage(MESSAGE)
        # The quiet server took one connection and refuses more: only a new
        # connection attempt gives ConnectError (a reused one would time out).
        with pytest.raises(smtplug.ConnectError) as caught:
            client.sendmessage(MESSAGE)
    assert "cannot connect" in str(caught.value)
