"""The recording SMTP server harness (tests/servers.py), driven by CPython's smtplib.

smtplib's spelling of commands differs between versions (3.13 writes ``mail
from:``, 3.12 ``mail FROM:``); what it sent is compared through
:func:`servers.canonical`, which upper-cases only what SMTP reads
case-insensitively. Commands a test sends itself are compared exactly.
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from servers import RecordingServer, SessionRecord, canonical, refused_port

BODY = b"Subject: hi\r\n\r\nfirst line\r\n.hidden\r\n.\r\n..two dots\r\nlast line\r\n"


def client(server: RecordingServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname="client.test", timeout=10)


def commands(session: SessionRecord) -> list[str]:
    """The session's commands, :func:`canonical` (verbs and keywords upper-cased)."""
    return [canonical(command) for command in session.commands]


def raw_exchange(server: RecordingServer, payload: bytes) -> bytes:
    """Send ``payload`` at once, half-close, and read every reply until the server hangs up."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        replies = b""
        while chunk := sock.recv(65536):
            replies += chunk
    server.wait_idle()
    return replies


# -- lifecycle ------------------------------------------------------------------


def test_listens_on_loopback_with_an_os_assigned_port(smtp_server):
    assert smtp_server.host == "127.0.0.1"
    assert smtp_server.port > 0
    with socket.create_connection((smtp_server.host, smtp_server.port), timeout=5) as sock:
        assert sock.recv(1024).startswith(b"220 ")


def test_start_and_stop_are_fast_and_stop_is_idempotent():
    began = time.perf_counter()
    for _ in range(10):
        server = RecordingServer().start()
        server.stop()
        server.stop()
    assert time.perf_counter() - began < 5  # typically a few ms each


def test_stop_drops_an_open_connection(smtp_server):
    conn = client(smtp_server)
    conn.ehlo()
    smtp_server.stop()
    assert smtp_server.sessions[0].ended.is_set()
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        conn.noop()
    conn.close()


def test_make_server_gives_independent_servers(make_server):
    one, two = make_server(), make_server(extra_ehlo=["XQUE"])
    assert one.port != two.port
    with client(one) as conn:
        conn.sendmail("a@example.com", ["b@example.org"], BODY)
    assert len(one.messages) == 1 and two.messages == []


# -- recording --------------------------------------------------------------------


def test_records_wire_commands_and_transaction(smtp_server):
    with client(smtp_server) as conn:
        refused = conn.sendmail("alice@example.com", ["bob@example.org", "carol@example.net"], BODY)
    assert refused == {}

    (session,) = smtp_server.sessions
    assert session.helo_name == "client.test"
    assert commands(session) == [
        "EHLO client.test",
        f"MAIL FROM:<alice@example.com> SIZE={len(BODY)}",
        "RCPT TO:<bob@example.org>",
        "RCPT TO:<carol@example.net>",
        "DATA",
        "QUIT",
    ]

    t = smtp_server.last
    assert t is smtp_server.messages[-1] is session.transactions[-1]
    assert t.delivered and t.data_reply == "250 OK"
    assert t.mail_from == "alice@example.com"
    assert t.mail_options == [f"SIZE={len(BODY)}"]
    assert t.rcpt_tos == ["bob@example.org", "carol@example.net"]
    assert t.refused_rcpts == []
    # Dot-stuffing is visible on the wire, undone in the content.
    assert t.data_wire == (
        b"Subject: hi\r\n\r\nfirst line\r\n..hidden\r\n..\r\n...two dots\r\nlast line\r\n.\r\n"
    )
    assert t.content == BODY
    assert b"\r\n..hidden\r\n" in session.wire and b"\r\n.hidden\r\n" not in session.wire
    assert t.data_wire in session.wire
    first, second = session.wire.split(b"\r\n")[:2]
    assert canonical(first.decode()) == "EHLO client.test"
    assert canonical(second.decode()) == f"MAIL FROM:<alice@example.com> SIZE={len(BODY)}"
    assert session.wire.endswith(b".\r\n" + session.commands[-1].encode() + b"\r\n")


def test_commands_are_recorded_as_received_even_unknown_ones(smtp_server):
    replies = raw_exchange(
        smtp_server, b"EHLO raw.test\r\nxyzzy plugh\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n"
    )
    assert b"500" in replies and replies.endswith(b"221 Bye\r\n")
    (session,) = smtp_server.sessions
    assert session.commands == [
        "EHLO raw.test",
        "xyzzy plugh",
        "NOOP",
        "MAIL FROM:<a@b.example>",
        "QUIT",
    ]
    assert session.wire == (
        b"EHLO raw.test\r\nxyzzy plugh\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n"
    )


def test_commands_sent_just_before_hanging_up_are_recorded(smtp_server):
    # Like Tcllib's abort path: RSET and QUIT without waiting for replies, then EOF.
    raw_exchange(smtp_server, b"EHLO raw.test\r\nRSET\r\nQUIT\r\n")
    assert smtp_server.sessions[0].commands == ["EHLO raw.test", "RSET", "QUIT"]


def test_rset_is_recorded_and_ends_the_transaction(smtp_server):
    with client(smtp_server) as conn:
        conn.ehlo()
        conn.mail("alice@example.com")
        conn.rcpt("bob@example.org")
        conn.rset()
        conn.sendmail("dave@example.com", ["erin@example.org"], BODY)
    session = smtp_server.sessions[0]
    assert "RSET" in commands(session)
    first, second = session.transactions
    assert first.reset and not first.delivered and first.data_wire == b""
    assert first.rcpt_tos == ["bob@example.org"]
    assert second.delivered and second.mail_from == "dave@example.com"
    assert smtp_server.messages == [second]


def test_null_reverse_path_is_accepted(smtp_server):
    with client(smtp_server) as conn:
        conn.sendmail("", ["postmaster@example.org"], BODY)
    assert smtp_server.last.mail_from == ""
    assert commands(smtp_server.sessions[0])[1].startswith("MAIL FROM:<> ")


def test_sessions_and_messages_span_connections(smtp_server):
    for n in range(3):
        with client(smtp_server) as conn:
            conn.sendmail(f"s{n}@example.com", ["r@example.org"], BODY)
    assert len(smtp_server.sessions) == 3
    assert [t.mail_from for t in smtp_server.messages] == [
        "s0@example.com",
        "s1@example.com",
        "s2@example.com",
    ]
    assert smtp_server.last.mail_from == "s2@example.com"


def test_last_without_messages_fails_clearly(smtp_server):
    with pytest.raises(AssertionError, match="no message"):
        _ = smtp_server.last


# -- configuration ---------------------------------------------------------------


def test_refuse_rcpt_by_address_and_by_domain(make_server):
    server = make_server(
        refuse_rcpt={
            "bad@example.org": (550, "5.1.1 No such user"),
            "@refused.example": (551, "5.7.1 Relay denied"),
        }
    )
    with client(server) as conn:
        refused = conn.sendmail(
            "alice@example.com",
            ["good@example.org", "BAD@example.org", "anyone@refused.example"],
            BODY,
        )
    assert refused == {
        "BAD@example.org": (550, b"5.1.1 No such user"),
        "anyone@refused.example": (551, b"5.7.1 Relay denied"),
    }
    t = server.last
    assert t.rcpt_tos == ["good@example.org"]
    assert t.refused_rcpts == [
        ("BAD@example.org", 550, "5.1.1 No such user"),
        ("anyone@refused.example", 551, "5.7.1 Relay denied"),
    ]


def test_all_recipients_refused_means_rset_and_no_message(make_server):
    server = make_server(refuse_rcpt={"@refused.example": (550, "5.1.1 No")})
    with client(server) as conn, pytest.raises(smtplib.SMTPRecipientsRefused):
        conn.sendmail("alice@example.com", ["x@refused.example"], BODY)
    session = server.sessions[0]
    assert commands(session)[-2:] == ["RSET", "QUIT"]
    assert "DATA" not in commands(session)
    assert server.messages == []
    assert session.transactions[0].reset


def test_421_greeting_then_hang_up(make_server):
    server = make_server(greeting="421 4.3.2 Service not available")
    with pytest.raises(smtplib.SMTPConnectError) as info:
        client(server)
    assert info.value.smtp_code == 421
    server.wait_idle()
    (session,) = server.sessions
    assert session.commands == [] and session.ended.is_set()


def test_custom_220_greeting(make_server):
    server = make_server(greeting="220 custom.test ESMTP ready")
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        assert sock.recv(1024) == b"220 custom.test ESMTP ready\r\n"


def test_ehlo_refused_smtplib_falls_back_to_helo(make_server):
    server = make_server(ehlo_reply="502 5.5.1 EHLO not implemented")
    with client(server) as conn:
        conn.sendmail("alice@example.com", ["bob@example.org"], BODY)
    session = server.sessions[0]
    assert commands(session)[:2] == ["EHLO client.test", "HELO client.test"]
    assert session.helo_name == "client.test"
    assert server.last.mail_options == []  # no SIZE without EHLO


def test_ehlo_and_helo_both_refused(make_server):
    server = make_server(ehlo_reply="502 5.5.1 EHLO not implemented", helo_reply="554 no")
    with client(server) as conn, pytest.raises(smtplib.SMTPHeloError) as info:
        conn.sendmail("alice@example.com", ["bob@example.org"], BODY)
    assert info.value.smtp_code == 554
    assert commands(server.sessions[0])[:2] == ["EHLO client.test", "HELO client.test"]
    assert server.messages == []


def test_extra_ehlo_keywords_and_qued(make_server):
    server = make_server(extra_ehlo=["XQUE", "SIZE 1000000"])
    with client(server) as conn:
        conn.ehlo()
        assert conn.has_extn("xque")
        assert conn.esmtp_features["size"] == "1000000"
        assert conn.docmd("QUED") == (250, b"OK")
        conn.sendmail("alice@example.com", ["bob@example.org"], BODY)
    assert commands(server.sessions[0])[:2] == ["EHLO client.test", "QUED"]


def test_size_keyword_is_enforced(make_server):
    server = make_server(extra_ehlo=["SIZE 100"])
    with client(server) as conn, pytest.raises(smtplib.SMTPSenderRefused) as info:
        conn.sendmail("alice@example.com", ["bob@example.org"], BODY * 10)
    assert info.value.smtp_code == 552


def test_mail_refused(make_server):
    server = make_server(mail_reply="553 5.7.1 Sender rejected")
    with client(server) as conn, pytest.raises(smtplib.SMTPSenderRefused) as info:
        conn.sendmail("alice@example.com", ["bob@example.org"], BODY)
    assert info.value.smtp_code == 553
    assert server.sessions[0].transactions == []
    assert commands(server.sessions[0])[1].startswith("MAIL FROM:<alice@example.com> ")


def test_data_final_reply_overrides_the_acceptance(make_server):
    server = make_server(data_final_reply="554 5.7.1 rejected")
    with client(server) as conn, pytest.raises(smtplib.SMTPDataError) as info:
        conn.sendmail("alice@example.com", ["bob@example.org"], BODY)
    assert info.value.smtp_code == 554
    (t,) = server.sessions[0].transactions
    assert t.data_reply == "554 5.7.1 rejected" and not t.delivered
    assert t.data_wire.endswith(b"\r\n.\r\n") and t.content == BODY
    assert server.messages == []


def test_close_after_data_hangs_up_without_a_reply(make_server):
    server = make_server(close_after_data=True)
    conn = client(server)
    try:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            conn.sendmail("alice@example.com", ["bob@example.org"], BODY)
    finally:
        conn.close()
    server.wait_idle()
    (session,) = server.sessions
    (t,) = session.transactions
    assert t.data_reply is None and not t.delivered
    assert t.data_wire.endswith(b"last line\r\n.\r\n") and t.content == BODY
    assert commands(session)[-1] == "DATA"
    assert server.messages == []


def test_refused_port_refuses_connections():
    with refused_port() as port:
        assert port > 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP("127.0.0.1", port, timeout=5)


def test_canonical_folds_only_what_smtp_reads_case_insensitively():
    # smtplib on 3.13 and on 3.12 spell the same commands differently.
    assert canonical("mail from:<Alice@Example.com> size=62") == (
        "MAIL FROM:<Alice@Example.com> SIZE=62"
    )
    assert canonical("mail FROM:<Alice@Example.com> size=62") == (
        "MAIL FROM:<Alice@Example.com> SIZE=62"
    )
    assert (
        canonical("rcpt to:<Bob@example.org> NOTIFY=never")
        == "RCPT TO:<Bob@example.org> NOTIFY=never"
    )
    assert canonical("ehlo Client.Test") == "EHLO Client.Test"
    assert canonical("xyzzy Plugh") == "XYZZY Plugh"
