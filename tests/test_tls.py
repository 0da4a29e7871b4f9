"""STARTTLS, implicit TLS and TLS policies, end to end, with both TLS backends.

The servers are in-process aiosmtpd servers on loopback with trustme
certificates; every test runs once per backend.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage

import pytest

import smtplug
from apis import both_apis
from smtplug import ConnectError, InvalidInputError, TLSError
from tlsfixtures import server_context, tls_ca, write_files

pytestmark = both_apis

BACKENDS = ["stdlib", "pyopenssl"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def certs():
    return tls_ca()


@pytest.fixture(scope="module")
def files(certs, tmp_path_factory):
    return write_files(certs, tmp_path_factory.mktemp("client-files"))


@pytest.fixture(scope="module")
def context_for(certs, tmp_path_factory):
    """context_for("server" | "wrong_host" | "expired" | "untrusted" | "self_signed")."""
    directory = tmp_path_factory.mktemp("server-files")
    return lambda name: server_context(getattr(certs, name), directory)


@pytest.fixture(scope="module")
def good_context(context_for):
    return context_for("server")


@pytest.fixture(scope="module")
def cafile(files):
    return files.cafile


def message():
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "over TLS"
    msg.set_content("secret body\n")
    return msg


def send(server, backend, **options):
    options.setdefault("servers", ["127.0.0.1"])
    options.setdefault("ports", [server.port])
    options.setdefault("client", "localhost")
    options.setdefault("timeout", 10)
    return smtplug.sendmessage(message(), tls_backend=backend, **options)


def only_failure(info):
    """The one server's error inside a ConnectError."""
    assert len(info.value.failures) == 1
    return info.value.failures[0].error


# --- STARTTLS ------------------------------------------------------------------------


def test_starttls_then_ehlo_again(make_server, good_context, cafile, backend):
    server = make_server(tls_context=good_context)
    result = send(server, backend, cafile=cafile)
    assert result.accepted
    record = server.sessions[-1]
    assert record.commands[:3] == ["EHLO localhost", "STARTTLS", "EHLO localhost"]
    assert record.hello_tls == [False, True]
    assert result.tls is not None
    assert result.tls.backend == backend and result.tls.verified
    assert result.tls.version in ("TLSv1.2", "TLSv1.3")
    assert result.tls.peer_certificate
    assert server.last.rcpt_tos == ["bob@example.org"]


def test_verified_by_host_name(make_server, good_context, cafile, backend):
    server = make_server(tls_context=good_context)
    assert send(server, backend, cafile=cafile, servers=["localhost"]).accepted


def test_capabilities_learnt_before_tls_are_forgotten(make_server, good_context, cafile, backend):
    # XQUE is offered only in plain text: after the handshake the client must
    # use the new EHLO answer, so no QUED.
    server = make_server(tls_context=good_context, plain_only_ehlo=["XQUE"])
    send(server, backend, cafile=cafile, queue=True)
    assert "QUED" not in server.sessions[-1].commands
    plain = make_server(plain_only_ehlo=["XQUE"])
    send(plain, backend, queue=True)
    assert "QUED" in plain.sessions[-1].commands


def test_usetls_false_never_sends_starttls(make_server, good_context, backend):
    server = make_server(tls_context=good_context)
    result = send(server, backend, usetls=False)
    assert result.accepted and result.tls is None
    assert "STARTTLS" not in server.sessions[-1].commands


def test_debug_transcript_reports_tls(make_server, good_context, cafile, backend, capsys):
    server = make_server(tls_context=good_context)
    send(server, backend, cafile=cafile, debug=True)
    err = capsys.readouterr().err
    assert "TLS established: TLSv1." in err and f"({backend}, certificate verified)" in err


# --- implicit TLS --------------------------------------------------------------------


def test_implicit_tls(make_server, good_context, cafile, backend):
    server = make_server(implicit_tls=good_context)
    result = send(server, backend, cafile=cafile, tlsimport=True)
    assert result.accepted and result.tls is not None
    assert server.sessions[-1].hello_tls == [True]
    assert "STARTTLS" not in server.sessions[-1].commands


def test_implicit_tls_against_plain_server_fails_that_server(
    make_server, context_for, cafile, backend
):
    plain = make_server()
    good = make_server(implicit_tls=context_for("untrusted"))
    with pytest.raises(ConnectError) as info:
        send(
            plain,
            backend,
            cafile=cafile,
            tlsimport=True,
            servers=["127.0.0.1"] * 2,
            ports=[plain.port, good.port],
        )
    assert all(isinstance(f.error, TLSError) for f in info.value.failures)
    assert info.value.failures[1].error.certificate  # untrusted CA


# --- certificates refused by default -----------------------------------------------------


@pytest.mark.parametrize("name", ["wrong_host", "untrusted", "self_signed", "expired"])
def test_bad_certificate_refused(make_server, context_for, cafile, backend, name):
    server = make_server(tls_context=context_for(name))
    with pytest.raises(ConnectError) as info:
        send(server, backend, cafile=cafile)
    error = only_failure(info)
    assert isinstance(error, TLSError) and error.certificate
    assert server.messages == []
    assert "MAIL" not in " ".join(server.sessions[-1].commands)


def test_bad_certificate_refused_with_implicit_tls(make_server, context_for, cafile, backend):
    server = make_server(implicit_tls=context_for("wrong_host"))
    with pytest.raises(ConnectError) as info:
        send(server, backend, cafile=cafile, tlsimport=True)
    assert only_failure(info).certificate


def test_tls_verify_false_accepts_and_says_so(make_server, context_for, backend, capsys):
    server = make_server(tls_context=context_for("self_signed"))
    result = send(server, backend, tls_verify=False, debug=True)
    assert result.accepted and result.tls is not None and not result.tls.verified
    assert "WARNING: tls_verify=False" in capsys.readouterr().err


def test_client_certificate_presented(make_server, certs, files, tmp_path, backend):
    context = server_context(certs.server, tmp_path, client_ca=certs.ca_pem)
    context.verify_mode = ssl.CERT_OPTIONAL  # record it when given, go on without
    server = make_server(tls_context=context)
    result = send(
        server,
        backend,
        cafile=files.cafile,
        client_cert=files.client_cert,
        client_key=files.client_key,
    )
    assert result.accepted
    presented = server.sessions[-1].client_cert
    assert presented is not None
    assert ("DNS", "client.example") in presented["subjectAltName"]
    # Without one configured, none is presented.
    send(server, backend, cafile=files.cafile)
    assert server.sessions[-1].client_cert is None


def test_ready_context(make_server, good_context, cafile, backend):
    server = make_server(tls_context=good_context)
    if backend == "stdlib":
        context = ssl.create_default_context(cafile=cafile)
    else:
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(cafile)
        context.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    assert send(server, backend, tls_context=context).accepted


def test_wrong_context_type_refused_before_connecting(smtp_server, backend):
    with pytest.raises(InvalidInputError, match="tls_context"):
        send(smtp_server, backend, tls_context=object())
    assert smtp_server.sessions == []


# --- policies --------------------------------------------------------------------------


def test_starttls_refused_with_454_opportunistic_goes_on(make_server, backend):
    server = make_server(extra_ehlo=["STARTTLS"], starttls_reply="454 4.7.0 TLS not available")
    result = send(server, backend)
    assert result.accepted and result.tls is None
    commands = server.sessions[-1].commands
    assert commands[:2] == ["EHLO localhost", "STARTTLS"]
    assert commands[2].startswith("MAIL FROM:<alice@example.com>")


@pytest.mark.parametrize("answer", ["secure", "insecure", "garbage"])
def test_callable_policy_on_454(make_server, backend, answer):
    server = make_server(extra_ehlo=["STARTTLS"], starttls_reply="454 4.7.0 TLS not available")
    calls = []

    def policy(code, diagnostic):
        calls.append((code, diagnostic))
        return answer

    if answer == "insecure":
        assert send(server, backend, tlspolicy=policy).accepted
    else:  # as in Tcllib, anything but "insecure" is "secure"
        with pytest.raises(ConnectError) as info:
            send(server, backend, tlspolicy=policy)
        assert isinstance(only_failure(info), TLSError)
        assert server.messages == []
    assert calls == [(454, "STARTTLS refused: 454 4.7.0 TLS not available")]


def test_require_policy_on_454_moves_to_next_server(make_server, good_context, cafile, backend):
    refusing = make_server(extra_ehlo=["STARTTLS"], starttls_reply="454 4.7.0 TLS not available")
    good = make_server(tls_context=good_context)
    result = send(
        refusing,
        backend,
        cafile=cafile,
        tlspolicy="require",
        servers=["127.0.0.1"] * 2,
        ports=[refusing.port, good.port],
    )
    assert result.accepted and result.port == good.port and result.tls is not None
    assert refusing.messages == []


def test_require_policy_refuses_server_without_starttls(smtp_server, backend):
    with pytest.raises(ConnectError) as info:
        send(smtp_server, backend, tlspolicy="require")
    assert "does not offer STARTTLS" in str(info.value)
    assert "require" in str(info.value)
    assert smtp_server.messages == []


def test_opportunistic_and_callables_carry_on_without_starttls(smtp_server, backend):
    calls = []
    assert send(smtp_server, backend).accepted
    assert send(smtp_server, backend, tlspolicy="opportunistic").accepted
    # Tcllib never calls -tlspolicy when STARTTLS is simply not offered.
    assert send(smtp_server, backend, tlspolicy=lambda *a: calls.append(a) or "secure").accepted
    assert calls == []


def test_callable_insecure_after_bad_certificate_reconnects_in_plain(
    make_server, context_for, backend
):
    server = make_server(tls_context=context_for("untrusted"))
    calls = []

    def policy(code, diagnostic):
        calls.append(code)
        return "insecure"

    result = send(server, backend, tlspolicy=policy)
    assert result.accepted and result.tls is None
    assert calls == [454]
    assert len(server.sessions) == 2
    assert "STARTTLS" in server.sessions[0].commands
    assert "STARTTLS" not in server.sessions[1].commands
    assert server.sessions[1].hello_tls == [False]


def test_opportunistic_never_downgrades_a_bad_certificate(make_server, context_for, backend):
    server = make_server(tls_context=context_for("wrong_host"))
    with pytest.raises(ConnectError) as info:
        send(server, backend, tlspolicy="opportunistic")
    assert only_failure(info).certificate
    assert len(server.sessions) == 1 and server.messages == []


def test_no_starttls_transport_asks_the_policy(make_server, good_context, backend):
    server = make_server(tls_context=good_context)
    calls = []

    def policy(code, diagnostic):
        calls.append(code)
        return "secure"

    with pytest.raises(ConnectError):
        send(server, backend, tlspolicy=policy, block_plugins=["starttls"])
    assert calls == [454]
    assert "STARTTLS" not in server.sessions[-1].commands


# --- attacks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "injected",
    [b"250-injected\r\n250 injected too\r\n", b"250 inj"],
    ids=["complete-lines", "fragment"],
)
def test_response_injection_after_starttls_aborts(make_server, backend, injected):
    server = make_server(extra_ehlo=["STARTTLS"], inject_after_starttls=injected)
    with pytest.raises(ConnectError) as info:
        # Even a policy that accepts anything does not downgrade an attack.
        send(server, backend, tlspolicy=lambda code, diagnostic: "insecure")
    error = only_failure(info)
    assert isinstance(error, TLSError) and error.attack
    assert "injection" in error.diagnostic
    record = server.sessions[-1]
    assert record.commands[-1] == "STARTTLS"  # nothing after it, not even QUIT
    assert server.messages == []


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_reconnecting_client_resumes_its_tls_session(
    make_server, backend, context_for, cafile, version
):
    context = context_for("server")
    context.maximum_version = getattr(ssl.TLSVersion, version)
    server = make_server(tls_context=context)
    options = dict(servers="127.0.0.1", ports=server.port, client="localhost", cafile=cafile)
    with smtplug.Client(tls_backend=backend, **options) as client:
        first = client.sendmessage(message())
        server.drop_connections()
        second = client.sendmessage(message())
    assert len(server.sessions) == 2
    assert first.tls is not None and not first.tls.resumed
    assert second.tls is not None and second.tls.resumed and second.tls.verified
    assert second.tls.peer_certificate == first.tls.peer_certificate
    assert second.tls.version == version.replace("_", ".")
    if version == "TLSv1_2":
        # RFC 5929: tls-unique is the first Finished message, the server's on a
        # resumed handshake; it differs from connection to connection.
        unique = first.tls.channel_bindings["tls-unique"]
        assert second.tls.channel_bindings["tls-unique"] != unique
    # A new client starts afresh.
    assert not send(server, backend, cafile=cafile).tls.resumed
