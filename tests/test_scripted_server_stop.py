"""ScriptedServer.stop() while a session waits for its socket to close.

A session that has hung up (``then=CLOSE``) waits, before it counts as ended,
until asyncio has really closed its socket (``connection_lost``). A ``stop()``
in that window cancels the session's task; the session must still be marked
ended, or ``wait_idle`` after ``stop()`` waits in vain. With an empty write
buffer the window is a loop turn or two (the kept-session test in
test_hostile.py hit it about 1 run in 25); here it is held open
deterministically: the client never reads, so the reply stays in the
transport's buffer and the socket cannot be closed until ``stop()`` aborts it.
"""

from __future__ import annotations

import socket
import threading

from smtplug.testing import CLOSE, Answer, Command, ScriptedServer

BIG = 16 * 1024 * 1024  # far more than loopback socket buffers hold


def test_a_session_stopped_while_waiting_for_its_socket_to_close_has_ended():
    answering = threading.Event()

    def huge_then_close(command: Command) -> Answer:
        # Runs in the server's loop; from here to the wait for the socket to
        # close the session task does not yield, so stop() (scheduled on the
        # same loop) is handled only once the task is in that wait.
        answering.set()
        return Answer(b"250-" + b"x" * BIG + b"\r\n250 OK\r\n", then=CLOSE)

    server = ScriptedServer({"NOOP": huge_then_close}).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect((server.host, server.port))
            assert sock.recv(1024).startswith(b"220 ")
            sock.sendall(b"NOOP\r\n")  # and never read the answer
            assert answering.wait(10)
            server.stop()
            (session,) = server.sessions
            assert session.ended.is_set()
            server.wait_idle(0)  # returns at once: nothing is open
    finally:
        server.stop()
