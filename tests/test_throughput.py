"""smtplug.Client, PIPELINING, CHUNKING/BDAT and streaming bodies.

The flight structure is observed from the client side: a transport plugin
(passed for the call, replacing the built-in one) records every write.
"""

from __future__ import annotations

import io
import tracemalloc
from email.message import EmailMessage

import pytest

import smtplug
from smtplug import DeliveryUnknownError, ResponseError, SendResult
from smtplug.protocol.data import normalise_line_endings
from smtplug_plugins.plain import PlainTransport


class _RecordingStream:
    def __init__(self, stream, writes):
        self._stream = stream
        self._writes = writes

    @property
    def tls(self):
        return False

    def read(self, max_bytes, timeout):
        return self._stream.read(max_bytes, timeout)

    def write(self, data, timeout):
        self._writes.append(bytes(data))
        self._stream.write(data, timeout)

    def close(self):
        self._stream.close()


class WriteRecorder:
    """A plugin: the plain transport, recording each write as one flight."""

    def __init__(self):
        self.writes: list[bytes] = []

    @smtplug.hookimpl
    def smtplug_register_transports(self):
        recorder = self

        class Transport(PlainTransport):
            def connect(self, host, port, *, timeout, options):
                stream = super().connect(host, port, timeout=timeout, options=options)
                return _RecordingStream(stream, recorder.writes)

        return [Transport()]

    def flights(self):
        """Each write's command lines (message content shown as <content>)."""
        out = []
        for data in self.writes:
            lines = []
            for line in data.split(b"\r\n")[:-1]:
                word = line.split(b" ", 1)[0]
                if word in (b"EHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"QUIT", b"RSET", b"."):
                    lines.append(line.decode())
                elif not lines or lines[-1] != "<content>":
                    lines.append("<content>")
            out.append(lines)
        return out


def options(server, recorder, **extra):
    extra.setdefault("servers", ["127.0.0.1"])
    extra.setdefault("ports", [server.port])
    extra.setdefault("client", "localhost")
    extra.setdefault("timeout", 10)
    return {"usetls": False, "plugins": [recorder], "block_plugins": ["plain"], **extra}


def message(body="Hello.\n", to="b@example.org, c@example.org, d@example.org"):
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = to
    msg["Subject"] = "flights"
    msg.set_content(body)
    return msg


def mail_and_rcpts(count):
    return ["MAIL"] + ["RCPT"] * count


def words(flight):
    return [line.split(" ", 1)[0] if line != "<content>" else line for line in flight]


# --- flight structure --------------------------------------------------------------


def test_no_pipelining_one_command_per_write(make_server):
    server, recorder = make_server(), WriteRecorder()
    smtplug.sendmessage(message(), **options(server, recorder))
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"], ["MAIL"], ["RCPT"], ["RCPT"], ["RCPT"], ["DATA"],
        ["<content>", "."], ["QUIT"],
    ]  # fmt: skip


def test_pipelining_atleastone_false(make_server):
    server, recorder = make_server(extra_ehlo=["PIPELINING"]), WriteRecorder()
    result = smtplug.sendmessage(message(), **options(server, recorder))
    assert result.accepted
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"],
        mail_and_rcpts(3),  # every RCPT reply seen before committing to DATA
        ["DATA"],
        ["<content>", ".", "QUIT"],  # body, end and QUIT in one write
    ]
    assert server.last.rcpt_tos == ["b@example.org", "c@example.org", "d@example.org"]


def test_pipelining_atleastone_true_sends_data_in_the_same_flight(make_server):
    server, recorder = make_server(extra_ehlo=["PIPELINING"]), WriteRecorder()
    result = smtplug.sendmessage(message(), atleastone=True, **options(server, recorder))
    assert result.accepted
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"],
        [*mail_and_rcpts(3), "DATA"],
        ["<content>", ".", "QUIT"],
    ]


def test_single_recipient_pipelines_data_whatever_atleastone(make_server):
    server, recorder = make_server(extra_ehlo=["PIPELINING"]), WriteRecorder()
    assert smtplug.sendmessage(message(to="b@example.org"), **options(server, recorder)).accepted
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"], ["MAIL", "RCPT", "DATA"], ["<content>", ".", "QUIT"],
    ]  # fmt: skip
    # If that one recipient is refused, the server refuses DATA too: nothing sent.
    refusing = make_server(
        extra_ehlo=["PIPELINING"], refuse_rcpt={"b@example.org": (550, "5.1.1 No such user")}
    )
    recorder.writes.clear()
    result = smtplug.sendmessage(message(to="b@example.org"), **options(refusing, recorder))
    assert result == [("b@example.org", 550, "5.1.1 No such user")] and not result.accepted
    assert refusing.messages == []
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"], ["MAIL", "RCPT", "DATA"], ["RSET"], ["QUIT"],
    ]  # fmt: skip


def test_chunking_atleastone_false(make_server):
    server = make_server(extra_ehlo=["PIPELINING"], chunking=True)
    recorder = WriteRecorder()
    result = smtplug.sendmessage(message(), **options(server, recorder))
    assert result.accepted
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"],
        mail_and_rcpts(3),
        ["BDAT", "<content>", "QUIT"],
    ]
    assert recorder.flights()[2][0].endswith(" LAST")
    assert len(server.last.bdat_sizes) == 1


def test_chunking_atleastone_true_is_one_write(make_server):
    server = make_server(extra_ehlo=["PIPELINING"], chunking=True)
    recorder = WriteRecorder()
    result = smtplug.sendmessage(message(), atleastone=True, **options(server, recorder))
    assert result.accepted
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"],
        [*mail_and_rcpts(3), "BDAT", "<content>", "QUIT"],
    ]


def test_chunking_without_pipelining_waits_for_each_reply(make_server):
    server, recorder = make_server(chunking=True), WriteRecorder()
    assert smtplug.sendmessage(message(), **options(server, recorder)).accepted
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"], ["MAIL"], ["RCPT"], ["RCPT"], ["RCPT"], ["BDAT", "<content>"], ["QUIT"],
    ]  # fmt: skip


def test_many_recipients_go_in_bounded_flights(make_server):
    from smtplug.session import BATCH

    server, recorder = make_server(extra_ehlo=["PIPELINING"]), WriteRecorder()
    to = ", ".join(f"r{i}@example.org" for i in range(250))
    assert smtplug.sendmessage(message(to=to), **options(server, recorder)).accepted
    sizes = [len(f) for f in recorder.flights()[1:-2]]
    assert sizes == [BATCH, BATCH, 251 - 2 * BATCH]  # MAIL + 250 RCPT
    assert len(server.last.rcpt_tos) == 250


# --- replies in a pipelined flight ---------------------------------------------------


def test_refused_recipient_in_a_pipelined_flight(make_server):
    server = make_server(
        extra_ehlo=["PIPELINING"], refuse_rcpt={"c@example.org": (550, "5.1.1 No such user")}
    )
    recorder = WriteRecorder()
    result = smtplug.sendmessage(message(), **options(server, recorder))
    assert result == [("c@example.org", 550, "5.1.1 No such user")] and not result.accepted
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"], mail_and_rcpts(3), ["RSET"], ["QUIT"],
    ]  # fmt: skip
    recorder.writes.clear()
    result = smtplug.sendmessage(message(), atleastone=True, **options(server, recorder))
    assert result.accepted and result.recipients == ("b@example.org", "d@example.org")
    assert server.last.rcpt_tos == ["b@example.org", "d@example.org"]


def test_354_after_every_recipient_failed_sends_no_body(make_server):
    server = make_server(
        extra_ehlo=["PIPELINING"],
        refuse_rcpt={"@example.org": (550, "5.1.1 No such user")},
        accept_data_without_rcpt=True,
    )
    recorder = WriteRecorder()
    result = smtplug.sendmessage(message(), atleastone=True, **options(server, recorder))
    assert not result.accepted and len(result) == 3
    assert [words(f) for f in recorder.flights()] == [
        ["EHLO"], [*mail_and_rcpts(3), "DATA"], ["."], ["RSET"], ["QUIT"],
    ]  # fmt: skip
    assert b"Subject: flights" not in server.sessions[-1].wire


def test_mail_refused_in_a_pipelined_flight(make_server):
    server = make_server(extra_ehlo=["PIPELINING"], mail_reply="553 5.7.1 Sender rejected")
    recorder = WriteRecorder()
    with pytest.raises(ResponseError) as info:
        smtplug.sendmessage(message(), atleastone=True, **options(server, recorder))
    assert info.value.code == 553 and info.value.command == "MAIL"
    assert server.messages == []
    assert server.sessions[-1].commands[-1] == "QUIT"  # every reply was read; still in step


# --- BDAT chunk boundaries -------------------------------------------------------------

TRICKY = (
    b"From: a@example.com\nTo: b@example.org\nSubject: chunks\n\n"
    b".starts with a dot\r\n.\r\nbare LF\nbare CR\rCRLF\r\n..two dots\r\n\r\n.\n"
    b"last line without end"
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_bdat_chunks_split_anywhere(make_server, monkeypatch, chunk):
    monkeypatch.setattr("smtplug.source.CHUNK", chunk)
    chunking = make_server(extra_ehlo=["PIPELINING"], chunking=True)
    plain = make_server()
    smtplug.sendmessage(TRICKY, servers="127.0.0.1", ports=chunking.port, usetls=False)
    smtplug.sendmessage(TRICKY, servers="127.0.0.1", ports=plain.port, usetls=False)
    via_bdat, via_data = chunking.last.content, plain.last.content
    assert via_bdat.split(b"\r\n\r\n", 1)[1] == via_data.split(b"\r\n\r\n", 1)[1]
    assert via_bdat.endswith(b"last line without end\r\n")
    assert b".starts with a dot\r\n.\r\nbare LF\r\nbare CR\r\nCRLF\r\n..two dots" in via_bdat
    assert sum(chunking.last.bdat_sizes) == len(via_bdat)
    assert len(chunking.last.bdat_sizes) > 1 or chunk == 64


# --- streaming inputs ------------------------------------------------------------------


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_file_and_iterable_messages(make_server, tmp_path, chunking):
    server = make_server(chunking=chunking)
    path = tmp_path / "message.eml"
    path.write_bytes(TRICKY)
    common = dict(servers="127.0.0.1", ports=server.port, usetls=False)
    with open(path, "rb") as handle:
        assert smtplug.sendmessage(handle, **common).accepted
    from_file = server.last.content
    assert "SIZE=" in server.sessions[-1].commands[1]
    pieces = [TRICKY[i : i + 4] for i in range(0, len(TRICKY), 4)]
    assert smtplug.sendmessage(iter(pieces), **common).accepted
    assert "SIZE=" not in server.sessions[-1].commands[1]  # size unknown
    assert server.last.content.split(b"\r\n\r\n", 1)[1] == from_file.split(b"\r\n\r\n", 1)[1]
    assert smtplug.sendmessage(io.BytesIO(TRICKY), **common).accepted


def test_size_declared_is_what_is_sent(make_server, tmp_path):
    server = make_server(chunking=True)
    body = normalise_line_endings((b"x" * 900 + b"\n") * 3)
    raw = b"From: a@example.com\r\nTo: b@example.org\r\n\r\n" + body
    smtplug.sendmessage(raw, servers="127.0.0.1", ports=server.port, usetls=False)
    declared = int(server.sessions[-1].commands[1].rsplit("SIZE=", 1)[1].split()[0])
    assert declared == len(server.last.content)


def test_100_mb_file_with_bounded_memory(make_server, tmp_path):
    size = 100 * 1024 * 1024
    line = b"0123456789" * 7 + b"\n"
    path = tmp_path / "big.eml"
    with open(path, "wb") as out:
        out.write(b"From: a@example.com\nTo: b@example.org\nSubject: big\n\n")
        out.write(line * (size // len(line)))
    server = make_server(
        extra_ehlo=["PIPELINING", "SIZE 209715200"], chunking=True, discard_data=True
    )
    tracemalloc.start()
    try:
        with open(path, "rb") as handle:
            result = smtplug.sendmessage(
                handle, servers="127.0.0.1", ports=server.port, usetls=False, timeout=60
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.accepted
    assert server.last.octets > size  # LF became CRLF
    # Client and in-process server together: a few chunks, never the message.
    print(f"peak traced memory: {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file")
    assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_progress_reports_octets_sent(make_server):
    server = make_server(chunking=True)
    body = (b"y" * 98 + b"\r\n") * (3 * 1024 * 1024 // 100)
    raw = b"From: a@example.com\r\nTo: b@example.org\r\n\r\n" + body
    seen = []
    smtplug.sendmessage(
        raw, servers="127.0.0.1", ports=server.port, usetls=False, progress=seen.append
    )
    assert seen == sorted(seen) and len(seen) >= 3
    header = server.last.content.split(b"\r\n\r\n", 1)[0]
    assert seen[-1] == len(header) + 4 + len(body)


# --- Client ------------------------------------------------------------------------------


def test_client_sends_many_messages_over_one_session(make_server):
    server = make_server(extra_ehlo=["PIPELINING"])
    with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as client:
        results = [client.sendmessage(message(body=f"number {i}\n")) for i in range(5)]
        assert client.connected
    assert not client.connected
    assert all(isinstance(r, SendResult) and r.accepted for r in results)
    assert len(server.sessions) == 1 and len(server.messages) == 5
    commands = server.sessions[0].commands
    assert commands.count("EHLO localhost") + commands.count("EHLO " + commands[0][5:]) >= 1
    assert commands[-1] == "QUIT"


def test_client_resets_after_a_failed_transaction(make_server):
    server = make_server(mail_reply="553 5.7.1 Sender rejected")
    with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as client:
        with pytest.raises(ResponseError):
            client.sendmessage(message())
        server.mail_reply = None
        assert client.sendmessage(message()).accepted
    commands = server.sessions[0].commands
    assert len(server.sessions) == 1
    assert commands.index("RSET") < [c[:4] for c in commands].index("DATA")


def test_client_reconnects_after_an_idle_disconnect(make_server):
    server = make_server()
    with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as client:
        assert client.sendmessage(message()).accepted
        server.drop_connections()
        assert client.sendmessage(message()).accepted
    assert len(server.sessions) == 2 and len(server.messages) == 2


def test_client_reconnects_after_421_before_the_transaction(make_server):
    server = make_server()
    with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as client:
        assert client.sendmessage(message()).accepted
        server.mail_421_once = True
        assert client.sendmessage(message()).accepted
    assert len(server.sessions) == 2 and len(server.messages) == 2


def test_client_never_retries_after_the_final_dot(make_server):
    server = make_server(close_after_data=True)
    with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as client:
        with pytest.raises(DeliveryUnknownError):
            client.sendmessage(message())
        assert not client.connected
    assert len(server.sessions) == 1


def test_client_with_a_one_shot_stream_does_not_retry(make_server):
    server = make_server()
    with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as client:
        assert client.sendmessage(message()).accepted
        server.mail_421_once = True
        pieces = iter([TRICKY])
        # The stream was not started before the 421: the retry can still use it.
        assert client.sendmessage(pieces).accepted


def test_client_validates_before_connecting(smtp_server):
    with pytest.raises(smtplug.InvalidInputError):
        smtplug.Client(servers="127.0.0.1", ports=smtp_server.port, maxsecs=-1)
    with smtplug.Client(servers="127.0.0.1", ports=smtp_server.port, usetls=False) as client:
        with pytest.raises(smtplug.InvalidInputError):
            client.sendmessage(message(), recipients="bad\r\naddress")
        assert not client.connected
    assert smtp_server.sessions == []


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_mail_refused_with_the_message_already_in_the_flight(make_server, chunking):
    server = make_server(
        extra_ehlo=["PIPELINING"], chunking=chunking, mail_reply="553 5.7.1 Sender rejected"
    )
    with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as client:
        with pytest.raises(ResponseError) as info:
            client.sendmessage(message(to="b@example.org"))
        assert info.value.code == 553
        # Every reply of the flight was read: the session is still in step.
        server.mail_reply = None
        assert client.sendmessage(message(to="b@example.org")).accepted
    assert len(server.sessions) == 1 and len(server.messages) == 1


def test_client_sends_many_messages_with_chunking(make_server):
    server = make_server(extra_ehlo=["PIPELINING"], chunking=True)
    with smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as client:
        for i in range(20):
            assert client.sendmessage(message(body=f"{i}\n"), atleastone=True).accepted
    assert len(server.sessions) == 1 and len(server.messages) == 20
    assert [m.content.rsplit(b"\r\n\r\n", 1)[1].strip() for m in server.messages][:3] == [
        b"0",
        b"1",
        b"2",
    ]
