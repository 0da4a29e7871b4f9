"""DSN (RFC 3461), REQUIRETLS (RFC 8689) and the mail_options / rcpt_options
pass-through, on the wire of the scripted server."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

import smtplug
from apis import both_apis
from scripted import send_to
from smtplug import DSN, InvalidInputError, TLSError
from smtplug.protocol.dsn import xtext
from smtplug.testing import ScriptedServer
from tlsfixtures import server_context, tls_ca, write_files

pytestmark = both_apis


def message(to: str = "bob@example.org, carol@example.org") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = to
    msg["Subject"] = "dsn"
    msg.set_content("hello\n")
    return msg


def send(server: ScriptedServer, msg: object = None, **options):
    return send_to([server], message() if msg is None else msg, **options)


def lines(server: ScriptedServer, verb: str) -> list[str]:
    server.wait_idle()
    return [c.line for s in server.sessions for c in s.commands if c.verb == verb]


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("abc", "abc"),
        ("a+b=c", "a+2Bb+3Dc"),
        ("a b", "a+20b"),
        ("ü", "+C3+BC"),
        ("~!", "~!"),
    ],
)
def test_xtext(text, encoded):
    assert xtext(text) == encoded


def test_dsn_parameters_go_on_mail_and_each_rcpt():
    dsn = DSN(notify=["failure", "delay"], ret="hdrs", envid="QQ 314+1=", orcpt=True)
    with ScriptedServer(capabilities=["DSN", "8BITMIME"]) as server:
        assert send(server, dsn=dsn).accepted
    (mail,) = lines(server, "MAIL")
    assert mail == "MAIL FROM:<alice@example.com> RET=HDRS ENVID=QQ+20314+2B1+3D"
    assert lines(server, "RCPT") == [
        "RCPT TO:<bob@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.org",
        "RCPT TO:<carol@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;carol@example.org",
    ]


def test_notify_per_recipient():
    dsn = DSN(notify={"carol@example.org": "NEVER", "bob@example.org": ("SUCCESS",)})
    with ScriptedServer(capabilities=["DSN"]) as server:
        assert send(server, dsn=dsn).accepted
    assert lines(server, "RCPT") == [
        "RCPT TO:<bob@example.org> NOTIFY=SUCCESS",
        "RCPT TO:<carol@example.org> NOTIFY=NEVER",
    ]


def test_dsn_without_server_support_is_refused_before_mail_or_dropped_on_request():
    with (
        ScriptedServer() as server,
        pytest.raises(InvalidInputError, match="does not offer DSN"),
    ):
        send(server, dsn=DSN(notify="SUCCESS"))
    assert lines(server, "MAIL") == []
    with ScriptedServer() as server:
        assert send(server, dsn=DSN(notify="SUCCESS", ret="FULL", required=False)).accepted
    assert lines(server, "MAIL") == ["MAIL FROM:<alice@example.com>"]
    assert all("NOTIFY" not in line for line in lines(server, "RCPT"))


@pytest.mark.parametrize(
    "bad",
    [
        {"notify": "SOMETIMES"},
        {"notify": ["NEVER", "SUCCESS"]},
        {"notify": []},
        {"ret": "ALL"},
        {"envid": "x" * 101},
        {"envid": "tab\there"},
        {"envid": ""},
        {"orcpt": "yes"},
        {"notify": {3: "NEVER"}},
    ],
)
def test_bad_dsn_options_are_refused_when_made(bad):
    with pytest.raises(InvalidInputError):
        DSN(**bad)


def test_mail_and_rcpt_options_pass_through_checked():
    with ScriptedServer(capabilities=["8BITMIME", "XFOO"]) as server:
        result = send(server, mail_options=["XFOO=1", "MT-PRIORITY=3"], rcpt_options=["XBAR"])
    assert result.accepted
    assert lines(server, "MAIL") == ["MAIL FROM:<alice@example.com> XFOO=1 MT-PRIORITY=3"]
    assert lines(server, "RCPT")[0] == "RCPT TO:<bob@example.org> XBAR"


@pytest.mark.parametrize(
    "options",
    [
        {"mail_options": "XFOO"},  # a str, not a list
        {"mail_options": ["X FOO"]},
        {"mail_options": ["XFOO=a\r\nRSET"]},
        {"mail_options": ["SIZE=1"]},  # smtplug writes SIZE itself
        {"mail_options": ["ret=FULL"]},  # dsn= does
        {"rcpt_options": ["NOTIFY=NEVER"]},
        {"mail_options": ["XA", "xa=1"]},  # twice
        {"rcpt_options": [3]},
        {"dsn": {"notify": "NEVER"}},  # not a DSN
        {"requiretls": "yes"},
    ],
)
def test_bad_parameters_are_refused_before_connecting(options):
    with pytest.raises(InvalidInputError):
        smtplug.sendmessage(
            message(), servers="127.0.0.1", ports=1, usetls=False, timeout=1, **options
        )


def test_requiretls_is_refused_in_plain_text():
    with (
        ScriptedServer(capabilities=["REQUIRETLS"]) as server,
        pytest.raises(TLSError, match="RFC 8689") as info,
    ):
        send(server, requiretls=True)
    assert not info.value.transient
    assert lines(server, "MAIL") == []


def test_requiretls_over_verified_tls(tmp_path):
    certs = tls_ca()
    cafile = write_files(certs, tmp_path).cafile
    context = server_context(certs.server, tmp_path)
    with ScriptedServer(
        tls_context=context,
        capabilities=["STARTTLS"],
        tls_capabilities=["REQUIRETLS", "8BITMIME"],
    ) as server:
        result = send(server, usetls=True, cafile=cafile, requiretls=True)
    assert result.accepted and result.tls is not None and result.tls.verified
    assert lines(server, "MAIL") == ["MAIL FROM:<alice@example.com> REQUIRETLS"]


def test_requiretls_needs_the_server_to_offer_it(tmp_path):
    certs = tls_ca()
    cafile = write_files(certs, tmp_path).cafile
    context = server_context(certs.server, tmp_path)
    with (
        ScriptedServer(tls_context=context) as server,
        pytest.raises(InvalidInputError, match="REQUIRETLS"),
    ):
        send(server, usetls=True, cafile=cafile, requiretls=True)
    assert lines(server, "MAIL") == []


def test_a_kept_client_takes_the_options_per_message():
    with (
        ScriptedServer(capabilities=["DSN"]) as server,
        smtplug.Client(servers="127.0.0.1", ports=server.port, usetls=False) as c,
    ):
        c.sendmessage(message("bob@example.org"), dsn=DSN(notify="NEVER"))
        c.sendmessage(message("bob@example.org"))
    assert lines(server, "RCPT") == [
        "RCPT TO:<bob@example.org> NOTIFY=NEVER",
        "RCPT TO:<bob@example.org>",
    ]
