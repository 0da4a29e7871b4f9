"""The blocking socket stream's write: RFC 5321's "data block" wait bounds
each send() call, not the whole write (sendall's timeout, since Python 3.5,
bounds the whole call: a slow link that keeps taking a 1 MiB chunk for longer
than the wait would fail though it never stopped making progress)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from smtplug.errors import ConnectionLostError
from smtplug_plugins._sockets import SocketStream


class TrickleSocket:
    """Takes at most ``per_call`` bytes per send(); records each call's
    timeout. ``stall_after`` calls later, a send times out (no progress)."""

    def __init__(self, per_call: int, stall_after: int | None = None) -> None:
        self.per_call = per_call
        self.stall_after = stall_after
        self.timeout: float | None = None
        self.calls: list[tuple[int, float | None]] = []
        self.received = bytearray()

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def send(self, data: memoryview) -> int:
        if self.stall_after is not None and len(self.calls) >= self.stall_after:
            raise TimeoutError("timed out")
        taken = bytes(data[: self.per_call])
        self.calls.append((len(data), self.timeout))
        self.received += taken
        return len(taken)

    def sendall(self, data: bytes) -> None:  # pragma: no cover - must not be used
        raise AssertionError("sendall bounds the whole write, not each send")

    def close(self) -> None:
        pass


def stream(sock: TrickleSocket) -> SocketStream:
    return SocketStream(sock, "test")  # type: ignore[arg-type]


def test_a_write_is_sent_call_by_call_each_under_the_timeout() -> None:
    sock = TrickleSocket(per_call=1000)
    data = bytes(range(256)) * 4096  # 1 MiB: one chunk of a message
    stream(sock).write(data, 180)
    assert bytes(sock.received) == data
    assert len(sock.calls) == -(-len(data) // 1000)  # partial sends resumed
    assert all(timeout == 180 for _, timeout in sock.calls)
    assert max(size for size, _ in sock.calls) <= 1 << 16  # TLS sockets too: slices


def test_no_progress_within_the_timeout_is_a_timed_out_write() -> None:
    sock = TrickleSocket(per_call=1000, stall_after=3)
    with pytest.raises(ConnectionLostError) as caught:
        stream(sock).write(b"x" * 10_000, 0.5)
    assert caught.value.timed_out is True
    assert "no progress for 0.5 s" in caught.value.diagnostic
    assert len(sock.received) == 3000


def test_a_real_socket_write_arrives_whole() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with server:
            data = b"y" * 300_000
            writer = stream(client)  # type: ignore[arg-type]
            got = bytearray()

            def drain() -> None:
                while len(got) < len(data):
                    chunk = server.recv(65536)
                    if not chunk:
                        return
                    got.extend(chunk)

            reader = threading.Thread(target=drain)
            reader.start()
            writer.write(data, 5)
            reader.join(10)
            writer.close()
    assert bytes(got) == data


# -- a plain socket: non-blocking, each wait a poll of its own -------------------------


class Calls:
    """The calls made on ``sock`` (send, recv, settimeout), in order."""

    def __init__(self, sock: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        for name in ("send", "recv", "settimeout"):
            real = getattr(socket.socket, name)
            monkeypatch.setattr(socket.socket, name, self._counting(sock, name, real))

    def _counting(self, watched: socket.socket, name: str, real: Any) -> Any:
        def call(sock: socket.socket, *args: Any) -> Any:
            if sock is watched:
                self.names.append(name)
            return real(sock, *args)

        return call


def test_a_plain_socket_is_non_blocking_and_given_back_with_its_timeout(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = pair
    stream = SocketStream(ours, "peer")
    assert ours.gettimeout() == 0.0  # (so send and recv make no poll of their own)
    calls = Calls(ours, monkeypatch)
    # A transaction's shape: the commands with one wait, the message with
    # another, the final reply with a third: no settimeout in between.
    stream.write(b"MAIL FROM:<a@example.com>\r\n", 300)
    assert theirs.recv(100) == b"MAIL FROM:<a@example.com>\r\n"
    theirs.sendall(b"250 ok\r\n")
    assert stream.read(65536, 300) == b"250 ok\r\n"
    stream.write(b"body\r\n.\r\n", 180)
    theirs.sendall(b"250 queued\r\n")
    assert stream.read(65536, 600) == b"250 queued\r\n"
    assert calls.names == ["send", "recv", "send", "recv"]
    assert stream.detach().gettimeout() == 30  # (for a TLS backend to wrap)


def test_a_plain_socket_read_waits_its_own_time_then_times_out(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = SocketStream(ours, "peer")
    with pytest.raises(ConnectionLostError, match=r"timed out after 0\.05 s") as caught:
        stream.read(65536, 0.05)
    assert caught.value.timed_out
    theirs.close()
    assert stream.read(65536, 30) == b""  # the end, at once


def test_a_plain_socket_write_to_a_peer_that_reads_nothing_times_out() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stream = SocketStream(ours, "peer")
        with pytest.raises(ConnectionLostError, match=r"made no progress for 0\.05 s") as caught:
            stream.write(b"z" * (8 << 20), 0.05)  # far more than the buffers hold
        assert caught.value.timed_out


def test_a_plain_socket_write_to_a_slow_reader_arrives_whole() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        data = bytes(range(256)) * 2048  # 512 KiB through buffers of a few KiB
        got = bytearray()

        def drain() -> None:
            while len(got) < len(data):
                chunk = theirs.recv(1000)  # (small reads: many partial sends)
                if not chunk:
                    return
                got.extend(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        SocketStream(ours, "peer").write(data, 30)
        reader.join(60)
    assert bytes(got) == data


def test_a_plain_socket_write_to_a_closed_peer_is_a_lost_connection(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    stream = SocketStream(ours, "peer")
    theirs.close()
    with pytest.raises(ConnectionLostError, match="failed") as caught:
        for _ in range(100):  # (the first send may still be taken)
            stream.write(b"x" * 65536, 5)
    assert not caught.value.timed_out


def test_a_name_the_resolver_refuses_is_a_connect_error() -> None:
    """Below the option checks (a plugin's own name): the IDNA step of
    getaddrinfo raises UnicodeError, not OSError; it is a ConnectError too."""
    from smtplug.errors import ConnectError
    from smtplug_plugins._sockets import open_socket

    with pytest.raises(ConnectError, match=r"cannot connect to a\.\.example:25"):
        open_socket("a..example", 25, 5)


def test_a_name_the_resolver_refuses_is_a_connect_error_asyncio() -> None:
    import asyncio

    from smtplug.errors import ConnectError
    from smtplug_plugins._aio import open_connection

    with pytest.raises(ConnectError, match=r"cannot connect to a\.\.example:25"):
        asyncio.run(open_connection("a..example", 25, 5))
