"""smtplug.sendmessage end to end, against an in-process aiosmtpd server on loopback."""

from __future__ import annotations

import email
import email.policy
import io
import logging
from email.message import EmailMessage

import pytest

import smtplug
from apis import blocking_only, both_apis
from servers import refused_port, silent_port
from smtplug import (
    ConnectError,
    DeliveryUnknownError,
    InvalidInputError,
    ResponseError,
    SendResult,
    SMTPError,
)

pytestmark = both_apis


def message(subject="This is the subject.", body="This is the message.\n", **headers):
    msg = EmailMessage()
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def send(server, msg, **options):
    options.setdefault("servers", ["127.0.0.1"])
    options.setdefault("ports", [server.port])
    options.setdefault("client", "localhost")
    return smtplug.sendmessage(msg, **options)


def received(transaction):
    return email.message_from_bytes(transaction.content, policy=email.policy.default)


def send_simple_message(recipient, email_server, port, subject, body):
    """The example of Tcllib's manual page, in Python."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg.set_content(body)
    return smtplug.sendmessage(msg, recipients=recipient, servers=[email_server], ports=[port])


def test_manpage_example(smtp_server):
    result = send_simple_message(
        "someone@somewhere.example",
        "127.0.0.1",
        smtp_server.port,
        "This is the subject.",
        "This is the message.",
    )
    assert result == []
    assert isinstance(result, SendResult) and isinstance(result, list)
    assert result.accepted and result.server == "127.0.0.1" and result.port == smtp_server.port
    assert result.reply is not None and result.reply.code == 250
    t = smtp_server.last
    assert t.rcpt_tos == ["someone@somewhere.example"]
    got = received(t)
    assert got["Subject"] == "This is the subject."
    assert got.get_content().rstrip("\r\n") == "This is the message."
    assert got["From"] == t.mail_from  # the login name, qualified
    assert "@" in t.mail_from
    assert got["Date"] and got["Message-ID"]
    commands = smtp_server.sessions[-1].commands
    assert commands[0].startswith("EHLO ")
    assert commands[1].startswith(f"MAIL FROM:<{t.mail_from}>")
    assert commands[2:] == ["RCPT TO:<someone@somewhere.example>", "DATA", "QUIT"]


def test_command_sequence_and_size_declared(smtp_server):
    result = send(smtp_server, message(From="alice@example.com", To="bob@example.org"))
    assert result.accepted
    size = len(smtp_server.last.content)
    commands = smtp_server.sessions[-1].commands
    assert commands[0] == "EHLO localhost"
    assert commands[1].startswith("MAIL FROM:<alice@example.com> SIZE=")
    declared = int(commands[1].rsplit("=", 1)[1])
    assert abs(declared - size) <= 2  # aiosmtpd's content drops nothing but may differ by CRLF
    assert commands[2:] == ["RCPT TO:<bob@example.org>", "DATA", "QUIT"]


def test_client_default_is_localhost_for_localhost_only(smtp_server):
    send(
        smtp_server,
        message(From="a@example.com", To="b@example.org"),
        servers="localhost",
        client=None,
    )
    assert smtp_server.sessions[-1].helo_name == "localhost"


def test_client_default_is_host_name_otherwise(smtp_server):
    import platform

    send(smtp_server, message(From="a@example.com", To="b@example.org"), client=None)
    assert smtp_server.sessions[-1].helo_name == (platform.node() or "localhost")


def test_servers_and_ports_accept_single_values(smtp_server):
    result = smtplug.sendmessage(
        message(From="a@example.com", To="b@example.org"),
        servers="127.0.0.1",
        ports=smtp_server.port,
    )
    assert result.accepted


def test_failover_across_three_servers(make_server):
    closed = make_server(greeting="421 4.3.2 Service not available, closing")
    good = make_server()
    with refused_port() as dead:
        result = smtplug.sendmessage(
            message(From="a@example.com", To="b@example.org"),
            servers=["127.0.0.1", "127.0.0.1", "127.0.0.1"],
            ports=[dead, closed.port, good.port],
        )
    assert result.accepted and result.port == good.port
    assert len(good.messages) == 1
    assert closed.messages == []


def test_every_server_failing_names_each(make_server):
    closed = make_server(greeting="421 4.3.2 Too busy")
    no_hello = make_server(ehlo_reply="554 5.7.1 Go away", helo_reply="554 5.7.1 Go away")
    with refused_port() as dead, pytest.raises(ConnectError) as info:
        smtplug.sendmessage(
            message(From="a@example.com", To="b@example.org"),
            servers=["127.0.0.1"] * 3,
            ports=[dead, closed.port, no_hello.port],
        )
    err = info.value
    assert [f.port for f in err.failures] == [dead, closed.port, no_hello.port]
    text = str(err)
    assert f"127.0.0.1:{dead}" in text and "refused" in text.lower()
    assert "421" in text and "Too busy" in text
    assert "554" in text and "Go away" in text
    assert isinstance(err, SMTPError)
    assert err.failures[1].error.code == 421


def test_missing_ports_default_to_25_and_extra_ports_are_ignored(make_server):
    good = make_server()
    # The second server gets port 25 (nothing listens there on this host in
    # tests, or something refuses us) only if the first fails; here the first works.
    result = smtplug.sendmessage(
        message(From="a@example.com", To="b@example.org"),
        servers=["127.0.0.1"],
        ports=[good.port, 1, 2],
    )
    assert result.accepted


def test_helo_after_5xx_to_ehlo(make_server):
    server = make_server(ehlo_reply="502 5.5.1 EHLO not implemented")
    result = send(server, message(From="a@example.com", To="b@example.org"))
    assert result.accepted
    assert server.sessions[-1].commands[:2] == ["EHLO localhost", "HELO localhost"]
    # No ESMTP: no SIZE parameter after HELO.
    assert server.sessions[-1].commands[2] == "MAIL FROM:<a@example.com>"


def test_refused_recipient_resets_without_atleastone(make_server):
    server = make_server(refuse_rcpt={"bad@example.org": (550, "5.1.1 No such user")})
    result = send(server, message(From="a@example.com", To="good@example.org, bad@example.org"))
    assert result == [("bad@example.org", 550, "5.1.1 No such user")]
    assert not result.accepted
    assert server.messages == []
    commands = server.sessions[-1].commands
    assert "RSET" in commands and "DATA" not in commands
    assert commands[-2:] == ["RSET", "QUIT"]


def test_refused_recipient_sent_anyway_with_atleastone(make_server):
    server = make_server(refuse_rcpt={"@refused.example": (550, "5.7.1 Relaying denied")})
    result = send(
        server,
        message(From="a@example.com", To="good@example.org, x@refused.example"),
        atleastone=True,
    )
    assert result == [("x@refused.example", 550, "5.7.1 Relaying denied")]
    assert result.accepted and result.recipients == ("good@example.org",)
    assert server.last.rcpt_tos == ["good@example.org"]


def test_every_recipient_refused_resets_even_with_atleastone(make_server):
    server = make_server(refuse_rcpt={"@refused.example": (450, "4.2.0 Try later")})
    result = send(server, message(From="a@example.com", To="x@refused.example"), atleastone=True)
    assert result == [("x@refused.example", 450, "4.2.0 Try later")]
    assert not result.accepted
    assert "DATA" not in server.sessions[-1].commands
    assert "RSET" in server.sessions[-1].commands


def test_queue_sends_qued_when_xque_advertised(make_server):
    server = make_server(extra_ehlo=["XQUE"])
    send(server, message(From="a@example.com", To="b@example.org"), queue=True)
    assert server.sessions[-1].commands[1] == "QUED"


def test_queue_without_xque_sends_nothing(make_server):
    server = make_server()
    send(server, message(From="a@example.com", To="b@example.org"), queue=True)
    assert "QUED" not in server.sessions[-1].commands


def test_queue_false_with_xque_sends_nothing(make_server):
    server = make_server(extra_ehlo=["XQUE"])
    send(server, message(From="a@example.com", To="b@example.org"))
    assert "QUED" not in server.sessions[-1].commands


def test_bcc_and_dcc_never_transmitted_but_receive(smtp_server):
    send(
        smtp_server,
        message(From="a@example.com", To="t@example.org", Bcc="hidden@example.org"),
        header=[("Dcc", "dhidden@example.org")],
    )
    t = smtp_server.last
    assert t.rcpt_tos == ["t@example.org", "dhidden@example.org", "hidden@example.org"]
    assert b"hidden@example.org" not in t.data_wire
    assert b"Bcc" not in t.data_wire and b"Dcc" not in t.data_wire


def test_null_originator(smtp_server):
    send(smtp_server, message(To="b@example.org"), originator="")
    assert smtp_server.sessions[-1].commands[1].startswith("MAIL FROM:<>")
    got = received(smtp_server.last)
    assert got["From"] is None and got["Sender"] is None


def test_originator_and_sender_on_the_wire(smtp_server):
    send(
        smtp_server,
        message(From="alice@example.com", To="b@example.org"),
        originator="bounces@example.com",
    )
    assert smtp_server.last.mail_from == "bounces@example.com"
    got = received(smtp_server.last)
    assert got["Sender"] == "bounces@example.com" and got["From"] == "alice@example.com"


def test_resent_mode_on_the_wire(smtp_server):
    send(
        smtp_server,
        message(From="a@example.com", To="b@example.org"),
        header=[("Resent-From", "fwd@example.com"), ("Resent-To", "new@example.org")],
    )
    t = smtp_server.last
    assert t.mail_from == "fwd@example.com" and t.rcpt_tos == ["new@example.org"]
    got = received(t)
    assert got["Resent-Date"] and got["Resent-Message-ID"]
    assert got["To"] == "b@example.org"


def test_dot_stuffing_and_line_endings_byte_for_byte(smtp_server):
    raw = (
        b"From: a@example.com\nTo: b@example.org\nSubject: dots\n\n"
        b".leading dot\n..two dots\n.\nbare CR\rhere\r\nend without newline"
    )
    send(smtp_server, raw)
    wire = smtp_server.last.data_wire
    body = wire.split(b"\r\n\r\n", 1)[1]
    assert body == (
        b"..leading dot\r\n...two dots\r\n..\r\nbare CR\r\nhere\r\nend without newline\r\n.\r\n"
    )
    assert b"\n" not in wire.replace(b"\r\n", b"")
    assert b"\r" not in wire.replace(b"\r\n", b"")


def test_str_message(smtp_server):
    send(smtp_server, "From: a@example.com\nTo: b@example.org\nSubject: str\n\nHällo\n")
    assert received(smtp_server.last)["Subject"] == "str"
    assert "BODY=8BITMIME" in smtp_server.sessions[-1].commands[1]
    assert smtp_server.last.data_wire.endswith("Hällo\r\n.\r\n".encode())


def test_caller_message_not_modified(smtp_server):
    msg = message(To="b@example.org", Bcc="c@example.org")
    before = msg.as_bytes()
    send(smtp_server, msg, header=[("To", "x@example.org")])
    assert msg.as_bytes() == before


def test_mail_from_refused_raises_response_error(make_server):
    server = make_server(mail_reply="553 5.7.1 Sender rejected")
    with pytest.raises(ResponseError) as info:
        send(server, message(From="a@example.com", To="b@example.org"))
    assert info.value.code == 553 and info.value.permanent
    assert info.value.command == "MAIL"
    assert "Sender rejected" in info.value.diagnostic
    assert server.sessions[-1].commands[-1] == "QUIT"


def test_final_reply_failure_raises(make_server):
    server = make_server(data_final_reply="554 5.7.1 Message rejected as spam")
    with pytest.raises(ResponseError) as info:
        send(server, message(From="a@example.com", To="b@example.org"))
    assert info.value.code == 554 and "spam" in info.value.diagnostic


def test_connection_lost_after_final_dot_is_delivery_unknown(make_server):
    server = make_server(close_after_data=True)
    with pytest.raises(DeliveryUnknownError) as info:
        send(server, message(From="a@example.com", To="b@example.org"))
    assert "may or may not" in info.value.diagnostic


def test_maxsecs_bounds_the_wait_for_the_final_reply(make_server):
    server = make_server(stall_after_data=True)
    with pytest.raises(DeliveryUnknownError) as info:
        send(server, message(From="a@example.com", To="b@example.org"), maxsecs=0.5)
    assert "0.5 s" in info.value.diagnostic


def test_timeout_bounds_the_greeting_and_fails_over(make_server):
    good = make_server()
    with silent_port() as mute:
        result = smtplug.sendmessage(
            message(From="a@example.com", To="b@example.org"),
            servers=["127.0.0.1", "127.0.0.1"],
            ports=[mute, good.port],
            timeout=0.5,
        )
    assert result.accepted and result.port == good.port


def test_timeout_everywhere_is_one_error_naming_the_wait(make_server):
    with silent_port() as mute, pytest.raises(ConnectError) as info:
        smtplug.sendmessage(
            message(From="a@example.com", To="b@example.org"),
            servers="127.0.0.1",
            ports=mute,
            timeout=0.3,
        )
    assert "no reply to the greeting" in str(info.value)
    assert info.value.failures[0].error.timed_out  # type: ignore[attr-defined]


def test_debug_transcript_on_stderr(smtp_server, capsys):
    send(smtp_server, message(From="a@example.com", To="b@example.org"), debug=True)
    err = capsys.readouterr().err
    assert "--> EHLO localhost" in err
    assert "<-- 250" in err
    assert "--> RCPT TO:<b@example.org>" in err
    assert "This is the message" not in err  # the body is summarised, not dumped


def test_logger_gets_transcript_without_debug(smtp_server, caplog, capsys):
    with caplog.at_level(logging.DEBUG, logger="smtplug"):
        send(smtp_server, message(From="a@example.com", To="b@example.org"))
    assert any("--> MAIL FROM:<a@example.com>" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr().err == ""


def test_observer_plugin_for_one_call(smtp_server):
    seen = []

    class Observer:
        @smtplug.hookimpl
        def smtplug_on_command(self, info, command):
            seen.append((info.port, command))

    send(smtp_server, message(From="a@example.com", To="b@example.org"), plugins=[Observer()])
    assert (smtp_server.port, "DATA") in seen
    seen.clear()
    send(smtp_server, message(From="a@example.com", To="b@example.org"))
    assert seen == []


def test_blocking_the_plain_transport(smtp_server):
    with pytest.raises(InvalidInputError, match="'plain' transport"):
        send(
            smtp_server,
            message(From="a@example.com", To="b@example.org"),
            usetls=False,
            block_plugins=["plain"],
        )
    assert smtp_server.sessions == []


@blocking_only  # the plugin's transport has no asyncio variant
def test_extra_transport_plugin_replaces_a_blocked_builtin(smtp_server):
    from smtplug_plugins.plain import PlainTransport

    used = []

    class Counting(PlainTransport):
        def connect(self, host, port, *, timeout, options):
            used.append((host, port))
            return super().connect(host, port, timeout=timeout, options=options)

    class Plugin:
        @smtplug.hookimpl
        def smtplug_register_transports(self):
            return [Counting()]

    result = send(
        smtp_server,
        message(From="a@example.com", To="b@example.org"),
        plugins=[Plugin()],
        block_plugins=["plain"],
        usetls=False,
    )
    assert result.accepted and used == [("127.0.0.1", smtp_server.port)]


# --- bad input: refused before any connection -------------------------------------------

BAD_OPTIONS = [
    {"servers": []},
    {"servers": [""]},
    {"servers": ["a b"]},
    {"servers": ["a..example"]},  # an empty label: the resolver's IDNA step refuses it
    {"servers": [".example"]},
    {"servers": ["a" * 64 + ".example"]},  # a label over 63 characters
    {"servers": [5]},
    {"ports": [0]},
    {"ports": [70000]},
    {"ports": ["25"]},
    {"ports": [True]},
    {"client": "bad name"},
    {"client": "x\r\nMAIL FROM:<evil@x>"},
    {"queue": "yes"},
    {"atleastone": 1},
    {"usetls": None},
    {"debug": "on"},
    {"maxsecs": 0},
    {"maxsecs": -5},
    {"maxsecs": "120"},
    {"timeout": 0},
    {"timeout": float("inf")},
    {"timeouts": {"rcpt": 0}},
    {"timeouts": {"rcpt": None}},
    {"timeouts": {"no-such-phase": 5}},
    {"timeouts": 30},
    {"timeouts": {"rcpt": 5}, "timeout": 5},
    {"timeouts": {"rcpt": 5}, "maxsecs": 5},
    {"timeouts": smtplug.Timeouts(final=-1)},
    {"tlspolicy": 42},
    {"tlspolicy": "no-such-policy"},
    {"tls_backend": "no-such-backend"},
    {"tls_backend": None},
    {"cafile": "/nonexistent/ca.pem"},
    {"capath": "/nonexistent/"},
    {"client_key": __file__},
    {"cafile": 42},
    {"tls_context": "not a context"},
    {"tls_verify": "no"},
    {"tlsimport": True, "block_plugins": ["implicit-tls"]},
    {"username": "alice"},
    {"username": ""},
    {"username": "alice\r\n", "password": "x"},
    {"username": "alice", "password": "pw\n"},
    {"username": "alice", "password": 5},
    {"username": "alice", "oauth_token": 5},
    {"username": "alice", "password": "x", "mechanisms": ["NO-SUCH-MECH"]},
    {"username": "alice", "password": "x", "mechanisms": []},
    {"username": "alice", "password": "x", "insecure_cleartext_auth": "yes"},
    {"password": "secret"},
    {"oauth_token": "token"},
    {"mechanisms": ["PLAIN"]},
    {"originator": "a@example.com\r\nRCPT TO:<x@y>"},
    {"recipients": "b@example.org\r\nDATA"},
    {"recipients": ""},
    {"header": [("To", "b@example.org\r\nBcc: x@y")]},
    {"header": [("Content-Type", "text/html")]},
    {"block_plugins": ["no-such-plugin"]},
    {"plugins": "not a list"},
]


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=[repr(o) for o in BAD_OPTIONS])
def test_bad_input_refused_before_connecting(smtp_server, options):
    opts = {"servers": ["127.0.0.1"], "ports": [smtp_server.port]}
    opts.update(options)
    with pytest.raises(InvalidInputError):
        smtplug.sendmessage(message(From="a@example.com", To="b@example.org"), **opts)
    assert smtp_server.sessions == []


def test_unknown_keyword_is_a_type_error():
    # Both what Python raises for an unknown keyword and an smtplug error.
    with pytest.raises(TypeError) as info:
        smtplug.sendmessage("x", no_such_option=True)  # type: ignore[call-arg]
    assert isinstance(info.value, smtplug.InvalidInputError)
    assert "no_such_option" in str(info.value)
    with pytest.raises(TypeError, match="no_such_option"):
        smtplug.Client(no_such_option=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no_such_option"):
        smtplug.Client().sendmessage("x", no_such_option=True)  # type: ignore[call-arg]


def test_every_error_class_is_exported_and_derives_from_smtperror():
    for name in (
        "ConnectError",
        "ResponseError",
        "ProtocolError",
        "AuthenticationError",
        "TLSError",
        "DeliveryUnknownError",
        "InvalidInputError",
        "ConnectionLostError",
        "PluginError",
    ):
        cls = getattr(smtplug, name)
        assert issubclass(cls, smtplug.SMTPError)
        err = cls("diag") if name != "ConnectError" else cls("diag", 421)
        assert isinstance(err.code, int) and err.diagnostic == "diag"


def test_demo_command_runs(capsys):
    from smtplug.cli import main

    out = io.StringIO()
    from smtplug.demo import run_demo

    assert run_demo(out, recipient="someone@somewhere.example", subject="Hi", body="Hello") == 0
    text = out.getvalue()
    assert "C: DATA" in text and "S: 354" in text
    assert "envelope recipients: someone@somewhere.example" in text
    assert "| Subject: Hi" in text
    assert main(["plugins"]) == 0
    assert "plain" in capsys.readouterr().out


def test_421_during_the_transaction_fails_over_to_the_next_server(make_server):
    closing = make_server(mail_421_once=True)
    good = make_server()
    result = smtplug.sendmessage(
        message(From="a@example.com", To="b@example.org"),
        servers=["127.0.0.1", "127.0.0.1"],
        ports=[closing.port, good.port],
    )
    assert result.accepted and result.port == good.port
    assert closing.messages == [] and len(good.messages) == 1
    # No RSET to a server that said it is closing.
    assert "RSET" not in closing.sessions[-1].commands


def test_421_to_a_recipient_fails_over_too(make_server):
    closing = make_server(refuse_rcpt={"b@example.org": (421, "4.3.2 Shutting down")})
    good = make_server()
    result = smtplug.sendmessage(
        message(From="a@example.com", To="b@example.org"),
        servers=["127.0.0.1", "127.0.0.1"],
        ports=[closing.port, good.port],
    )
    assert result.accepted and result.port == good.port and closing.messages == []


def test_421_on_the_last_server_names_every_failure(make_server):
    first = make_server(greeting="421 4.3.2 Too busy")
    closing = make_server(mail_421_once=True)
    with pytest.raises(ConnectError) as info:
        smtplug.sendmessage(
            message(From="a@example.com", To="b@example.org"),
            servers=["127.0.0.1", "127.0.0.1"],
            ports=[first.port, closing.port],
        )
    failures = info.value.failures
    assert [f.port for f in failures] == [first.port, closing.port]
    assert all(f.error.code == 421 for f in failures)
    assert isinstance(failures[1].error, ResponseError) and failures[1].error.command == "MAIL"
