"""The blocking socket stream's write: RFC 5321's "data block" wait bounds
each send() call, not the whole write (sendall's timeout, since Python 3.5,
bounds the whole call: a slow link that keeps taking a 1 MiB chunk for longer
than the wait would fail though it never stopped making progress)."""

from __future__ import annotations

import socket
import threading

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
