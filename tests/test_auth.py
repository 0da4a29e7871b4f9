"""AUTH end to end: negotiation, fallback, restriction, cleartext refusal, redaction.

The server side of every mechanism is independent of smtplug (aiosmtpd's
PLAIN/LOGIN, CRAM-MD5 computed with hmac, scramp's SCRAM server, a small
XOAUTH2 checker): see tests/servers.py.
"""

from __future__ import annotations

import base64
import logging
import ssl
from email.message import EmailMessage

import pytest

import smtplug
from smtplug import AuthenticationError, InvalidInputError
from tlsfixtures import server_context, tls_ca, write_files

USERS = {"alice": "wonderland"}
SECRET = "wonderland"


def message():
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "authenticated"
    msg.set_content("hello\n")
    return msg


def send(server, **options):
    options.setdefault("servers", ["127.0.0.1"])
    options.setdefault("ports", [server.port])
    options.setdefault("client", "localhost")
    options.setdefault("username", "alice")
    options.setdefault("timeout", 10)
    if "oauth_token" not in options:
        options.setdefault("password", SECRET)
    return smtplug.sendmessage(message(), **options)


def auth_commands(server):
    return [c.split()[1] for c in server.sessions[-1].commands if c.startswith("AUTH ")]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    certs = tls_ca()
    directory = tmp_path_factory.mktemp("auth-tls")
    files = write_files(certs, directory)

    def context(**limits):
        return server_context(certs.server, directory, **limits)

    return files, context


def test_strongest_offered_mechanism_first(make_server):
    server = make_server(auth_users=USERS)
    result = send(server)
    assert result.accepted
    # -PLUS needs TLS; on this plain loopback link SCRAM-SHA-256 is the strongest.
    assert server.sessions[-1].authenticated == ("SCRAM-SHA-256", "alice")
    assert auth_commands(server) == ["SCRAM-SHA-256"]


@pytest.mark.parametrize(
    ("offered", "used"),
    [
        (["PLAIN", "LOGIN", "CRAM-MD5"], "CRAM-MD5"),
        (["PLAIN", "LOGIN"], "LOGIN"),
        (["PLAIN"], "PLAIN"),
        (["SCRAM-SHA-1", "CRAM-MD5"], "SCRAM-SHA-1"),
    ],
)
def test_tcllib_order_among_what_is_offered(make_server, offered, used):
    server = make_server(auth_users=USERS, auth_mechanisms=offered)
    assert send(server).accepted
    assert server.sessions[-1].authenticated == (used, "alice")


def test_plain_costs_one_round_trip(make_server):
    server = make_server(auth_users=USERS, auth_mechanisms=["PLAIN"])
    send(server)
    (line,) = [c for c in server.sessions[-1].commands if c.startswith("AUTH")]
    assert line == "AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland").decode()


def test_scram_plus_over_tls_1_2(make_server, tls):
    files, context = tls
    server = make_server(
        auth_users=USERS, tls_context=context(maximum_version=ssl.TLSVersion.TLSv1_2)
    )
    for backend in ("stdlib", "pyopenssl"):
        result = send(server, cafile=files.cafile, tls_backend=backend)
        assert result.tls is not None and result.tls.version == "TLSv1.2"
        assert server.sessions[-1].authenticated == ("SCRAM-SHA-256-PLUS", "alice")


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
def test_scram_plus_over_a_resumed_tls_1_2_session(make_server, tls, backend):
    # tls-unique is the first Finished message of the handshake: the server's
    # on a resumed one (RFC 5929). The server checks the binding it computes.
    files, context = tls
    server = make_server(
        auth_users=USERS, tls_context=context(maximum_version=ssl.TLSVersion.TLSv1_2)
    )
    with smtplug.Client(
        servers="127.0.0.1", ports=server.port, client="localhost", username="alice",
        password=SECRET, cafile=files.cafile, tls_backend=backend, timeout=10,
    ) as client:  # fmt: skip
        client.sendmessage(message())
        server.drop_connections()
        result = client.sendmessage(message())
    assert result.tls is not None and result.tls.resumed
    assert server.sessions[-1].authenticated == ("SCRAM-SHA-256-PLUS", "alice")


def test_mechanisms_restricts_and_orders(make_server):
    server = make_server(auth_users=USERS)
    send(server, mechanisms=["plain"])
    assert server.sessions[-1].authenticated == ("PLAIN", "alice")
    send(server, mechanisms=["LOGIN", "CRAM-MD5"])
    assert server.sessions[-1].authenticated == ("LOGIN", "alice")


def test_mechanisms_none_offered(make_server):
    server = make_server(auth_users=USERS, auth_mechanisms=["PLAIN"])
    with pytest.raises(AuthenticationError, match="no usable SASL mechanism"):
        send(server, mechanisms=["CRAM-MD5"])
    assert server.messages == []


def test_fallback_to_next_mechanism_after_535_over_tls(make_server, tls):
    files, context = tls
    server = make_server(
        auth_users=USERS, tls_context=context(), refuse_auth=["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    )
    result = send(server, cafile=files.cafile)
    assert result.accepted
    tried = auth_commands(server)
    assert tried[-1] == server.sessions[-1].authenticated[0] == "SCRAM-SHA-1"
    assert tried[0] in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")


def test_no_weaker_mechanism_after_a_failure_in_the_clear(make_server):
    server = make_server(auth_users=USERS, refuse_auth=["SCRAM-SHA-256"])
    with pytest.raises(AuthenticationError) as info:
        send(server)
    assert auth_commands(server) == ["SCRAM-SHA-256"]
    assert info.value.code == 535
    assert "SCRAM-SHA-256: 535" in info.value.diagnostic
    assert server.messages == []


def test_every_mechanism_failing_names_each(make_server, tls):
    files, context = tls
    server = make_server(
        auth_users=USERS, tls_context=context(), auth_mechanisms=["PLAIN", "LOGIN"]
    )
    with pytest.raises(AuthenticationError) as info:
        send(server, cafile=files.cafile, password="wrong")
    text = info.value.diagnostic
    assert "LOGIN: 535" in text and "PLAIN: 535" in text
    assert text.index("LOGIN") < text.index("PLAIN")
    assert server.messages == []


def test_auth_not_offered_is_an_error_not_silence(smtp_server):
    with pytest.raises(AuthenticationError, match="does not offer AUTH"):
        send(smtp_server)
    assert smtp_server.messages == []


def test_auth_offered_only_after_starttls(make_server, tls):
    files, context = tls
    server = make_server(auth_users=USERS, tls_context=context(), auth_require_tls=True)
    assert send(server, cafile=files.cafile).accepted
    with pytest.raises(AuthenticationError, match="does not offer AUTH"):
        send(server, usetls=False)


def test_cleartext_auth_to_a_remote_host_is_refused(make_server, monkeypatch):
    # Tests may only talk to loopback; make 127.0.0.1 count as a remote host.
    monkeypatch.setattr("smtplug.connect.is_loopback", lambda host: False)
    server = make_server(auth_users=USERS)
    with pytest.raises(AuthenticationError) as info:
        send(server)
    assert "insecure_cleartext_auth=True" in info.value.diagnostic
    assert auth_commands(server) == []
    assert server.messages == []
    # The explicit opt-in.
    assert send(server, insecure_cleartext_auth=True).accepted


def test_remote_host_over_tls_authenticates(make_server, tls, monkeypatch):
    monkeypatch.setattr("smtplug.connect.is_loopback", lambda host: False)
    files, context = tls
    server = make_server(auth_users=USERS, tls_context=context())
    assert send(server, cafile=files.cafile).accepted


def test_scram_server_that_cannot_prove_itself(make_server, tls):
    files, context = tls
    server = make_server(
        auth_users=USERS,
        auth_mechanisms=["SCRAM-SHA-256", "PLAIN"],
        scram_bad_server_signature=True,
        tls_context=context(),
    )
    with pytest.raises(AuthenticationError, match="SCRAM-SHA-256") as info:
        send(server, cafile=files.cafile)
    assert info.value.server_unverified
    assert "failed to prove it knows the password" in str(info.value)
    assert server.messages == []
    # An impostor gets nothing more: no PLAIN after it, even over TLS.
    assert auth_commands(server) == ["SCRAM-SHA-256"]


def test_xoauth2_with_a_token_callable(make_server, tls):
    files, context = tls
    server = make_server(
        auth_users={"alice": "ya29.token"}, auth_mechanisms=["XOAUTH2"], tls_context=context()
    )
    calls = []

    def token():
        calls.append(1)
        return "ya29.token"

    assert send(server, cafile=files.cafile, oauth_token=token).accepted
    assert server.sessions[-1].authenticated == ("XOAUTH2", "alice")
    assert calls == [1]
    with pytest.raises(AuthenticationError) as info:
        send(server, cafile=files.cafile, oauth_token="expired")
    assert info.value.code == 535 and "expired" not in str(info.value)


def test_secrets_never_in_transcripts_logs_or_errors(make_server, capsys, caplog):
    server = make_server(auth_users=USERS, auth_mechanisms=["PLAIN", "LOGIN"])
    encoded = base64.b64encode(b"\0alice\0" + SECRET.encode()).decode()
    with caplog.at_level(logging.DEBUG, logger="smtplug"):
        send(server, debug=True, mechanisms=["PLAIN"])
        with pytest.raises(AuthenticationError) as info:
            send(
                server,
                password=SECRET + "x",
                mechanisms=["LOGIN", "PLAIN"],
                insecure_cleartext_auth=True,
            )
    transcript = capsys.readouterr().err
    logs = "\n".join(record.getMessage() for record in caplog.records)
    assert "AUTH PLAIN <redacted>" in transcript
    for text in (transcript, logs, str(info.value), repr(info.value)):
        assert SECRET not in text
        assert encoded not in text
        assert base64.b64encode(SECRET.encode()).decode() not in text


@pytest.mark.parametrize(
    "options",
    [
        {"mechanisms": ["NOPE"]},
        {"password": None},
        {"oauth_token": 42},
    ],
)
def test_bad_auth_options_before_connecting(make_server, options):
    server = make_server(auth_users=USERS)
    with pytest.raises(InvalidInputError):
        send(server, **options)
    assert server.sessions == []
