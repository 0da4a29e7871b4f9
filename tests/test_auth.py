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
from apis import both_apis
from smtplug import AuthenticationError, InvalidInputError
from smtplug.testing import ScriptedServer
from tlsfixtures import server_context, tls_ca, write_files

pytestmark = both_apis

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
    monkeypatch.setattr("smtplug.auth.is_loopback", lambda host: False)
    server = make_server(auth_users=USERS)
    with pytest.raises(AuthenticationError) as info:
        send(server)
    assert "insecure_cleartext_auth=True" in info.value.diagnostic
    assert auth_commands(server) == []
    assert server.messages == []
    # The explicit opt-in.
    assert send(server, insecure_cleartext_auth=True).accepted


def test_remote_host_over_tls_authenticates(make_server, tls, monkeypatch):
    monkeypatch.setattr("smtplug.auth.is_loopback", lambda host: False)
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


# --- RFC 4954 section 4: no initial response on an AUTH line over 512 octets ------------


def _answer_auth(command):
    """An AUTH with an initial response is accepted; one without gets the empty 334."""
    return b"334 \r\n" if len(command.args.split()) == 1 else None


def scripted_auth(**options):
    """Send through a ScriptedServer offering every mechanism: (its port, the session)."""
    offered = "AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER EXTERNAL"
    with ScriptedServer({"AUTH": _answer_auth}, capabilities=["8BITMIME", offered]) as server:
        assert send(server, usetls=False, **options).accepted
        server.wait_idle()
    assert server.errors == []
    return server.port, server.sessions[0]


def auth_line(mechanism: str, initial: bytes) -> bytes:
    return f"AUTH {mechanism} ".encode() + base64.b64encode(initial) + b"\r\n"


def sent_auth(session) -> tuple[bytes, bytes | None]:
    """The AUTH line as sent, and the line answering the 334 after it (if any)."""
    raws = [c.raw for c in session.commands]
    index = next(i for i, c in enumerate(session.commands) if c.verb == "AUTH")
    after = session.commands[index + 1]
    return raws[index], after.raw if after.verb == "SASL" else None


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


LONG_PASSWORD = "p" * 700
LONG_TOKEN = "ya29." + "T" * 1800


@pytest.mark.parametrize(
    ("options", "mechanism", "initial"),
    [
        (
            {"password": LONG_PASSWORD, "mechanisms": ["PLAIN"]},
            "PLAIN",
            b"\0alice\0" + LONG_PASSWORD.encode(),
        ),
        (
            {"oauth_token": LONG_TOKEN, "mechanisms": ["XOAUTH2"]},
            "XOAUTH2",
            xoauth2("alice", LONG_TOKEN),
        ),
        (
            {"oauth_token": LONG_TOKEN, "mechanisms": ["OAUTHBEARER"]},
            "OAUTHBEARER",
            f"n,a=alice,\x01host=127.0.0.1\x01port={{port}}\x01auth=Bearer {LONG_TOKEN}\x01\x01",
        ),
    ],
    ids=["PLAIN", "XOAUTH2", "OAUTHBEARER"],
)
def test_long_initial_response_waits_for_the_empty_challenge(options, mechanism, initial):
    port, session = scripted_auth(**options)
    if isinstance(initial, str):  # OAUTHBEARER names the port
        initial = initial.replace("{port}", str(port)).encode()
    line, response = sent_auth(session)
    assert len(auth_line(mechanism, initial)) > 512  # it would not have fitted
    assert line == f"AUTH {mechanism}\r\n".encode()
    assert response == base64.b64encode(initial) + b"\r\n"
    assert 512 < len(response) <= 12288


def _fitted(target: int, mechanism: str, make) -> bytes:
    """The initial response make(n) whose AUTH line is ``target`` octets."""
    for n in range(1, 600):
        initial = make(n)
        if len(auth_line(mechanism, initial)) == target:
            return initial
    raise AssertionError(f"no {mechanism} initial response gives {target} octets")


@pytest.mark.parametrize(
    ("target", "mechanism"), [(511, "XOAUTH2"), (512, "EXTERNAL"), (513, "PLAIN")]
)
def test_initial_response_at_the_512_octet_boundary(target, mechanism):
    # Base64 comes in fours, so each length is reached with another mechanism name.
    if mechanism == "XOAUTH2":
        initial = _fitted(target, mechanism, lambda n: xoauth2("alice", "t" * n))
        options = {"oauth_token": initial.split(b"Bearer ")[1][:-2].decode()}
    elif mechanism == "EXTERNAL":
        initial = _fitted(target, mechanism, lambda n: b"z" * n)
        options = {"authzid": initial.decode(), "password": None}
    else:
        initial = _fitted(target, mechanism, lambda n: b"\0alice\0" + b"p" * n)
        options = {"password": initial.split(b"\0")[2].decode()}
    _, session = scripted_auth(mechanisms=[mechanism], **options)
    line, response = sent_auth(session)
    if target <= 512:
        assert line == auth_line(mechanism, initial) and len(line) == target
        assert response is None
    else:
        assert line == f"AUTH {mechanism}\r\n".encode()
        assert response == base64.b64encode(initial) + b"\r\n"


def test_deferred_initial_response_is_redacted(capsys, caplog):
    with caplog.at_level(logging.DEBUG, logger="smtplug"):
        _, session = scripted_auth(password=LONG_PASSWORD, mechanisms=["PLAIN"], debug=True)
    assert sent_auth(session)[1] is not None  # it was deferred
    transcript = capsys.readouterr().err
    logs = "\n".join(record.getMessage() for record in caplog.records)
    lines = [line.split("--> ", 1)[1] for line in transcript.splitlines() if "--> " in line]
    assert lines[lines.index("AUTH PLAIN") + 1] == "<redacted>"
    encoded = base64.b64encode(b"\0alice\0" + LONG_PASSWORD.encode()).decode()
    for text in (transcript, logs):
        assert LONG_PASSWORD not in text
        assert encoded[:40] not in text


def test_deferred_initial_response_needs_an_empty_challenge():
    # A non-empty first challenge to a client-first mechanism: cancelled, nothing sent.
    script = {"AUTH": b"334 VXNlcm5hbWU6\r\n"}
    with ScriptedServer(script, capabilities=["8BITMIME", "AUTH PLAIN"]) as server:
        with pytest.raises(AuthenticationError, match="PLAIN"):
            send(server, usetls=False, password=LONG_PASSWORD, mechanisms=["PLAIN"])
        server.wait_idle()
    commands = server.sessions[0].commands
    assert [c.raw for c in commands if c.verb in ("AUTH", "SASL")] == [b"AUTH PLAIN\r\n", b"*\r\n"]


# --- LOGIN: username, then password, whatever the prompts say ----------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [(b"Password:", b"Username:"), (b"", b""), (b"\xff garbage", b"Username:")],
    ids=["swapped", "empty", "garbage"],
)
def test_login_answers_in_order_on_the_wire(first, second):
    script = {
        "AUTH": b"334 " + base64.b64encode(first) + b"\r\n",
        ("SASL", 1): b"334 " + base64.b64encode(second) + b"\r\n",
        ("SASL", 2): b"235 2.7.0 OK\r\n",
    }
    with ScriptedServer(script, capabilities=["8BITMIME", "AUTH LOGIN"]) as server:
        assert send(server, usetls=False, mechanisms=["LOGIN"]).accepted
        server.wait_idle()
    answers = [c.raw for c in server.sessions[0].commands if c.verb == "SASL"]
    assert answers == [b"YWxpY2U=\r\n", base64.b64encode(SECRET.encode()) + b"\r\n"]


def test_login_third_challenge_is_cancelled():
    prompt = b"334 UGFzc3dvcmQ6\r\n"
    script = {"AUTH": prompt, ("SASL", 1): prompt, ("SASL", 2): prompt}
    with ScriptedServer(script, capabilities=["8BITMIME", "AUTH LOGIN"]) as server:
        with pytest.raises(AuthenticationError, match=r"LOGIN: .*third") as info:
            send(server, usetls=False, mechanisms=["LOGIN"])
        server.wait_idle()
    answers = [c.raw for c in server.sessions[0].commands if c.verb == "SASL"]
    assert answers == [b"YWxpY2U=\r\n", base64.b64encode(SECRET.encode()) + b"\r\n", b"*\r\n"]
    assert SECRET not in str(info.value)
    assert server.sessions[0].transactions == []


# --- OAuth: a refused token is renewed once by a token provider --------------------------

STALE, FRESH, FRESHER = "ya29.stale-token", "ya29.fresh-token", "ya29.fresher-token"


def oauth_logs(capsys, caplog, exc=None) -> str:
    captured = capsys.readouterr()
    parts = [record.getMessage() for record in caplog.records] + [captured.out, captured.err]
    if exc is not None:
        parts += [str(exc), repr(exc), exc.diagnostic]
    return "\n".join(parts)


def assert_no_token(text: str, *tokens: str) -> None:
    for token in tokens:
        assert token not in text
        assert base64.b64encode(xoauth2("alice", token)).decode()[:40] not in text


def test_refused_token_renewed_by_a_provider_taking_no_argument(make_server, capsys, caplog):
    # An old-style provider (no parameter) is simply called again, as before.
    server = make_server(auth_users={"alice": FRESH}, auth_mechanisms=["XOAUTH2"])
    tokens = iter([STALE, FRESH])
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return next(tokens)

    caplog.set_level(logging.DEBUG, logger="smtplug")
    assert send(server, oauth_token=provider, debug=True).accepted
    assert len(calls) == 2
    assert auth_commands(server) == ["XOAUTH2", "XOAUTH2"]  # refused (334 JSON, 535), then OK
    assert server.sessions[-1].authenticated == ("XOAUTH2", "alice")
    assert_no_token(oauth_logs(capsys, caplog), STALE, FRESH)


def test_refused_token_renewed_by_a_provider_told_of_the_refusal(make_server):
    server = make_server(auth_users={"alice": FRESH}, auth_mechanisms=["XOAUTH2"])
    asked: list[bool] = []

    def provider(*, refused: bool = False) -> str:
        asked.append(refused)
        return FRESH if refused else STALE

    assert send(server, oauth_token=provider).accepted
    assert asked == [False, True]
    assert auth_commands(server) == ["XOAUTH2", "XOAUTH2"]


def test_provider_taking_keyword_arguments_is_told_too(make_server):
    server = make_server(auth_users={"alice": FRESH}, auth_mechanisms=["XOAUTH2"])
    asked: list[dict[str, object]] = []

    class Provider:
        def __call__(self, **options: object) -> str:
            asked.append(options)
            return FRESH if options.get("refused") else STALE

    assert send(server, oauth_token=Provider()).accepted
    assert asked == [{}, {"refused": True}]


def test_accepted_token_calls_the_provider_once(make_server):
    server = make_server(auth_users={"alice": FRESH}, auth_mechanisms=["XOAUTH2"])
    asked: list[bool] = []

    def provider(*, refused: bool = False) -> str:
        asked.append(refused)
        return FRESH

    assert send(server, oauth_token=provider).accepted
    assert asked == [False]
    assert auth_commands(server) == ["XOAUTH2"]


def test_string_token_is_not_retried(make_server):
    server = make_server(auth_users={"alice": FRESH}, auth_mechanisms=["XOAUTH2"])
    with pytest.raises(AuthenticationError) as info:
        send(server, oauth_token=STALE)
    assert auth_commands(server) == ["XOAUTH2"]
    assert info.value.code == 535
    assert STALE not in str(info.value)


def test_second_refusal_names_both_attempts(make_server, capsys, caplog):
    server = make_server(auth_users={"alice": FRESHER}, auth_mechanisms=["XOAUTH2"])
    asked: list[bool] = []

    def provider(*, refused: bool = False) -> str:
        asked.append(refused)
        return FRESH if refused else STALE

    caplog.set_level(logging.DEBUG, logger="smtplug")
    with pytest.raises(AuthenticationError) as info:
        send(server, oauth_token=provider, debug=True)
    assert asked == [False, True]  # at most one renewal
    assert auth_commands(server) == ["XOAUTH2", "XOAUTH2"]
    assert info.value.code == 535
    text = info.value.diagnostic
    assert text.count("XOAUTH2") == 2 and "renewed token" in text
    assert text.index("XOAUTH2: 535") < text.index("renewed token")
    assert server.messages == []
    assert_no_token(oauth_logs(capsys, caplog, info.value), STALE, FRESH)


OAUTH_REFUSALS = {
    "535": {"AUTH": b"535 5.7.8 Bad token\r\n"},
    "json-then-535": {
        "AUTH": b"334 " + base64.b64encode(b'{"status":"401","schemes":"bearer"}') + b"\r\n",
        "SASL": lambda c: b"535 5.7.8 Bad token\r\n" if c.args != "*" else None,
    },
    "json-then-554": {
        "AUTH": b"334 " + base64.b64encode(b'{"status":"401"}') + b"\r\n",
        "SASL": b"554 5.7.0 Token expired\r\n",
    },
}


def _refuse_first(script):
    """The refusal for the first AUTH of the connection, 235 for the second."""
    first = dict(script)
    first[("AUTH", 2)] = b"235 2.7.0 OK\r\n"
    return first


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
@pytest.mark.parametrize("refusal", OAUTH_REFUSALS)
def test_refusals_that_renew_the_token(mechanism, refusal, capsys, caplog):
    script = _refuse_first(OAUTH_REFUSALS[refusal])
    asked: list[bool] = []

    def provider(*, refused: bool = False) -> str:
        asked.append(refused)
        return FRESH if refused else STALE

    offered = ["8BITMIME", "AUTH XOAUTH2 OAUTHBEARER"]
    caplog.set_level(logging.DEBUG, logger="smtplug")
    with ScriptedServer(script, capabilities=offered) as server:
        result = send(
            server, usetls=False, oauth_token=provider, mechanisms=[mechanism], debug=True
        )
        server.wait_idle()
    assert result.accepted and asked == [False, True]
    auths = [c for c in server.sessions[0].commands if c.verb == "AUTH"]
    assert [c.args.split()[0] for c in auths] == [mechanism, mechanism]
    sent = [base64.b64decode(c.args.split()[1]) for c in auths]
    assert f"auth=Bearer {STALE}".encode() in sent[0]
    assert f"auth=Bearer {FRESH}".encode() in sent[1]
    assert_no_token(oauth_logs(capsys, caplog), STALE, FRESH)


@pytest.mark.parametrize(
    "script",
    [
        {"AUTH": b"454 4.7.0 Temporary authentication failure\r\n"},
        {"AUTH": b"534 5.7.9 Please log in with your web browser\r\n"},
    ],
    ids=["454", "534"],
)
def test_other_failures_do_not_renew_the_token(script):
    asked: list[bool] = []

    def provider(*, refused: bool = False) -> str:
        asked.append(refused)
        return STALE

    with ScriptedServer(script, capabilities=["8BITMIME", "AUTH XOAUTH2"]) as server:
        with pytest.raises(AuthenticationError):
            send(server, usetls=False, oauth_token=provider, mechanisms=["XOAUTH2"])
        server.wait_idle()
    assert asked == [False]
    assert server.sessions[0].verbs.count("AUTH") == 1


def test_password_used_as_token_is_not_retried():
    with ScriptedServer({"AUTH": b"535 5.7.8 no\r\n"}, capabilities=["AUTH XOAUTH2"]) as server:
        with pytest.raises(AuthenticationError):
            send(server, usetls=False, password=STALE, mechanisms=["XOAUTH2"])
        server.wait_idle()
    assert server.sessions[0].verbs.count("AUTH") == 1


def test_provider_failing_on_renewal_shows_no_token(capsys, caplog):
    def provider(*, refused: bool = False) -> str:
        if refused:
            raise RuntimeError(f"cannot refresh {STALE}")
        return STALE

    script = {"AUTH": b"535 5.7.8 Bad token\r\n"}
    caplog.set_level(logging.DEBUG, logger="smtplug")
    with ScriptedServer(script, capabilities=["8BITMIME", "AUTH XOAUTH2"]) as server:
        with pytest.raises(AuthenticationError) as info:
            send(server, usetls=False, oauth_token=provider, mechanisms=["XOAUTH2"])
        server.wait_idle()
    assert server.sessions[0].verbs.count("AUTH") == 1  # nothing sent with no token
    assert "RuntimeError" in info.value.diagnostic and "renewed token" in info.value.diagnostic
    assert_no_token(oauth_logs(capsys, caplog, info.value), STALE)
