"""SocketStream.read with no wait (the kept-session probe, the poll between
chunks) or with a wait of its own (the final reply's): a poll of the socket
instead of two settimeout calls around the read, with the answers a read
would give: nothing yet (a timeout, and the socket's timeout left as it
was), the bytes, the end, an error; and with TLS, the decrypted bytes the
TLS object already holds (the kernel has none then)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from smtplug.errors import ConnectionLostError
from smtplug_plugins import _sockets
from smtplug_plugins._sockets import SocketStream
from tlsfixtures import server_context, tls_ca


def nothing_yet(stream: SocketStream) -> bool:
    try:
        stream.read(65536, 0)
    except ConnectionLostError as exc:
        assert exc.timed_out
        return True
    return False


def test_nothing_to_read_is_a_timeout_and_the_socket_comes_back_with_its_timeout(
    pair: tuple[socket.socket, socket.socket], settimeouts: list[float | None]
) -> None:
    ours, _ = pair
    stream = SocketStream(ours, "peer")
    for _ in range(3):
        assert nothing_yet(stream)
    assert settimeouts == []
    assert stream.detach().gettimeout() == 30  # (given back as it came)


@pytest.fixture
def settimeouts(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    calls: list[float | None] = []
    real = socket.socket.settimeout

    def settimeout(self: socket.socket, value: float | None) -> None:
        calls.append(value)
        real(self, value)

    monkeypatch.setattr(socket.socket, "settimeout", settimeout)
    return calls


def test_a_read_with_a_wait_of_its_own_polls_for_it(
    pair: tuple[socket.socket, socket.socket], settimeouts: list[float | None]
) -> None:
    # The final reply's wait (600 s) beside the commands' (30 s): no
    # settimeout back and forth, and the wait is still the read's own.
    ours, theirs = pair
    stream = SocketStream(ours, "peer")
    theirs.sendall(b"250 2.0.0 queued\r\n")
    assert stream.read(65536, 600) == b"250 2.0.0 queued\r\n"
    with pytest.raises(ConnectionLostError, match=r"after 0\.01 s") as lost:
        stream.read(65536, 0.01)  # nothing comes: it times out after its own wait
    assert lost.value.timed_out
    stream.write(b"QUIT\r\n", 30)
    assert theirs.recv(100) == b"QUIT\r\n"
    assert settimeouts == []
    theirs.close()
    assert stream.read(65536, 600) == b""


def test_a_huge_wait_is_a_poll_without_a_limit(
    pair: tuple[socket.socket, socket.socket], settimeouts: list[float | None]
) -> None:
    ours, theirs = pair
    stream = SocketStream(ours, "peer")
    theirs.sendall(b"x")
    assert stream.read(65536, 1e9) == b"x"  # (more than poll() can count in ms)
    theirs.sendall(b"y")
    assert stream.read(65536, None) == b"y"  # (no wait at all)
    assert settimeouts == []


def test_a_huge_wait_is_left_to_a_tls_like_socket_without_poll(
    pair: tuple[socket.socket, socket.socket],
    settimeouts: list[float | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = pair
    monkeypatch.setattr(_sockets, "_POLL", False)  # (the socket keeps its timeout then)
    stream = SocketStream(ours, "peer")
    theirs.sendall(b"x")
    assert stream.read(65536, 1e9) == b"x"
    assert settimeouts == [1e9]


def test_bytes_waiting_are_read_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = SocketStream(ours, "peer")
    theirs.sendall(b"421 4.4.2 idle too long\r\n")
    assert _wait_readable(ours)
    assert stream.read(65536, 0) == b"421 4.4.2 idle too long\r\n"
    assert nothing_yet(stream)


def test_the_end_is_read_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = SocketStream(ours, "peer")
    theirs.shutdown(socket.SHUT_WR)
    assert _wait_readable(ours)
    assert stream.read(65536, 0) == b""


def test_a_reset_is_an_error_not_a_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = SocketStream(ours, "peer")
    theirs.close()
    assert _wait_readable(ours)
    # (a socketpair has no RST: its close is an end; either is "gone")
    try:
        data = stream.read(65536, 0)
    except ConnectionLostError as exc:
        assert not exc.timed_out
    else:
        assert data == b""


def test_without_poll_a_read_is_made(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = pair
    monkeypatch.setattr(_sockets, "_POLL", False)
    stream = SocketStream(ours, "peer")
    assert nothing_yet(stream)
    theirs.sendall(b"x")
    assert _wait_readable(ours)
    assert stream.read(65536, 0) == b"x"


def test_tls_bytes_already_decrypted_are_seen(tmp_path: Path) -> None:
    certs = tls_ca()
    server_side = server_context(certs.server, tmp_path)
    client_side = ssl.create_default_context(cadata=certs.ca_pem.decode())
    listener = socket.create_server(("127.0.0.1", 0))
    served = threading.Event()
    release = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with server_side.wrap_socket(connection, server_side=True) as tls:
            tls.sendall(b"250 one record\r\n")  # one TLS record
            served.set()
            release.wait(timeout=60)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        raw = socket.create_connection(listener.getsockname(), timeout=30)
        with client_side.wrap_socket(raw, server_hostname="localhost") as tls:
            stream = SocketStream(tls, "peer", tls_info=None)
            assert served.wait(timeout=60)
            assert stream.read(4, 30) == b"250 "  # the record is decrypted whole
            assert tls.pending() > 0
            assert stream.read(65536, 0) == b"one record\r\n"  # (the kernel holds none)
            assert nothing_yet(stream)
            with pytest.raises(ConnectionLostError) as lost:
                stream.read(65536, 0.01)  # (TLS: the socket's own timeout, set for it)
            assert lost.value.timed_out and tls.gettimeout() == 0.01
    finally:
        release.set()
        thread.join()
        listener.close()


def _wait_readable(sock: socket.socket) -> bool:
    """Wait (on the socket, not on a clock) until the kernel has something."""
    import select

    return bool(select.select([sock], [], [], 30)[0])
