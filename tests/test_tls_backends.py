"""Both TLS backends (``stdlib`` and ``pyopenssl``) against a local TLS server.

Every test that describes shared behaviour runs once per backend, each taken
from the plugin registry as the core takes it. The server is a thread on
loopback using :mod:`ssl` server-side with trustme certificates
(:mod:`tlsfixtures`); it records the SNI host name it received, the client
certificate's subject, whether the session was resumed and its own view of
tls-unique (or the exception of a failed handshake), then echoes, holds,
sends and closes, or digests what it reads. Every server a test starts is
stopped at teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from apis import both_apis
from smtplug.errors import ConnectionLostError, InvalidInputError, TLSError
from smtplug.interfaces import TLSBackend, TLSOptions, TLSStream
from smtplug.plugins import build_registry
from tlsfixtures import (
    CLIENT_COMMON_NAME,
    ClientFiles,
    PEMCert,
    TLSCertificates,
    server_context,
    tls_ca,
    write_files,
)

pytestmark = both_apis

BACKENDS = ["stdlib", "pyopenssl"]


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()


class TLSServer:
    """A one-connection-at-a-time TLS (or silent TCP) server in a thread.

    ``action`` after the handshake: ``"echo"`` (send back what arrives until
    EOF), ``"hold"`` (do nothing until stopped), ``"send-close"`` (send
    ``payload``, then close_notify), ``"send-abort"`` (send ``payload``, then
    close the TCP connection without close_notify), ``"send-hold"`` (send
    ``payload``, then hold), ``"digest"`` (read ``expect`` bytes, answer
    their SHA-256 hex digest and a newline). ``context=None`` makes a plain
    TCP server that accepts and then hangs up (``"close"``) or sends
    ``payload`` (if any) and says nothing more.
    """

    def __init__(
        self,
        context: ssl.SSLContext | None,
        *,
        host: str = "127.0.0.1",
        action: str = "echo",
        payload: bytes = b"",
        expect: int = 0,
    ) -> None:
        self.host = host
        self.action = action
        self.payload = payload
        self.expect = expect
        self.context = context
        self.sni: list[str | None] = []
        self.client_subjects: list[str | None] = []
        self.tls_unique: list[bytes | None] = []
        self.resumed: list[bool] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._handshakes = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        if context is not None:
            context.sni_callback = self._on_sni
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_sni(self, sslobj: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        self.sni.append(server_name)

    def _run(self) -> None:
        self._listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._serve(conn)
            except Exception as exc:  # recorded for the test to look at
                self.errors.append(exc)
            finally:
                with contextlib.suppress(OSError):
                    conn.close()
                self._handshakes.set()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        if self.context is None:  # plain TCP: say nothing, hang up, or send payload
            if self.action == "close":
                return
            if self.payload:
                raw.sendall(self.payload)
            self._stop.wait()
            return
        tls = self.context.wrap_socket(raw, server_side=True)
        peer = tls.getpeercert()
        subject = None
        if peer:
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        subject = value
        self.client_subjects.append(subject)
        self.resumed.append(tls.session_reused)
        self.tls_unique.append(tls.get_channel_binding("tls-unique"))
        if self.action == "echo":
            while data := tls.recv(65536):
                tls.sendall(data)
        elif self.action == "hold":
            self._stop.wait()
        elif self.action in ("send-close", "send-abort", "send-hold"):
            tls.sendall(self.payload)
            if self.action == "send-close":
                with contextlib.suppress(OSError, ssl.SSLError):
                    tls.unwrap()
            elif self.action == "send-hold":
                self._stop.wait()
        elif self.action == "digest":
            digest = hashlib.sha256()
            left = self.expect
            while left:
                data = tls.recv(min(left, 1 << 20))
                if not data:
                    break
                digest.update(data)
                left -= len(data)
            tls.sendall(digest.hexdigest().encode("ascii") + b"\n")
            self._stop.wait(2)
        tls.close()

    def wait_served(self, timeout: float = 5) -> None:
        """Wait until one connection has been served (or failed)."""
        assert self._handshakes.wait(timeout), "the server never finished a connection"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()


@pytest.fixture(scope="session")
def certs() -> TLSCertificates:
    return tls_ca()


@pytest.fixture
def files(certs: TLSCertificates, tmp_path: Path) -> ClientFiles:
    return write_files(certs, tmp_path / "client")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> TLSBackend:
    return build_registry().tls_backends[request.param]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., TLSServer]]:
    """``make_server(cert, **server_context_args, action=..., ...)``; every
    server made is stopped at teardown. ``cert=None`` is the silent TCP one."""
    started: list[TLSServer] = []
    directory = tmp_path / "server"
    directory.mkdir()

    def make(
        cert: PEMCert | None,
        *,
        host: str = "127.0.0.1",
        action: str = "echo",
        payload: bytes = b"",
        expect: int = 0,
        **context_args: Any,
    ) -> TLSServer:
        context = None if cert is None else server_context(cert, directory, **context_args)
        server = TLSServer(context, host=host, action=action, payload=payload, expect=expect)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


def connect(
    backend: TLSBackend,
    server: TLSServer,
    hostname: str,
    options: TLSOptions,
    *,
    timeout: float = 5,
) -> TLSStream:
    """Connect to ``server`` and hand the socket to ``backend``."""
    backend.check(options)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    return backend.wrap(sock, server_hostname=hostname, options=options, timeout=timeout)


def read_exactly(stream: TLSStream, size: int, timeout: float = 5) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data), timeout)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def round_trip(stream: TLSStream, line: bytes = b"EHLO client.example\r\n") -> None:
    stream.write(line, 5)
    assert read_exactly(stream, len(line)) == line


# -- the registry ---------------------------------------------------------------


def test_both_backends_are_registered() -> None:
    registry = build_registry()
    for name in BACKENDS:
        backend = registry.tls_backends[name]
        assert backend.name == name
        assert isinstance(backend, TLSBackend)


# -- good certificates ------------------------------------------------------------


def test_good_certificate_by_name(backend, make_server, certs, files) -> None:
    server = make_server(certs.server)
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        assert isinstance(stream, TLSStream)
        assert stream.tls is True
        info = stream.tls_info
        assert info.backend == backend.name
        assert info.verified is True
        assert info.version == "TLSv1.3"
        assert info.cipher.startswith("TLS_")
        assert info.peer_certificate == certs.server.der
        round_trip(stream)
    finally:
        stream.close()
    assert server.sni == ["localhost"]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1",
            marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback on this machine"),
        ),
    ],
)
def test_good_certificate_by_ip_address(backend, make_server, certs, files, host) -> None:
    server = make_server(certs.server, host=host)
    stream = connect(backend, server, host, TLSOptions(cafile=files.cafile))
    try:
        assert stream.tls_info.verified is True
        round_trip(stream)
    finally:
        stream.close()
    assert server.sni == [None], "no SNI may be sent for an IP literal"


def test_capath_is_honoured(backend, make_server, certs, files) -> None:
    server = make_server(certs.server)
    stream = connect(backend, server, "localhost", TLSOptions(capath=files.capath))
    try:
        assert stream.tls_info.verified is True
    finally:
        stream.close()


def test_default_store_does_not_trust_the_test_ca(backend, make_server, certs) -> None:
    server = make_server(certs.server)
    with pytest.raises(TLSError) as caught:
        connect(backend, server, "localhost", TLSOptions())
    assert caught.value.certificate is True


# -- bad certificates -------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "host", "words"),
    [
        ("wrong_host", "localhost", ("match",)),
        ("wrong_host", "127.0.0.1", ("match",)),
        ("untrusted", "localhost", ("issuer", "self-signed", "self signed")),
        ("self_signed", "localhost", ("self-signed", "self signed")),
        ("expired", "localhost", ("expired",)),
    ],
)
def test_bad_certificate_is_refused(backend, make_server, certs, files, which, host, words):
    server = make_server(getattr(certs, which))
    sock = socket.create_connection((server.host, server.port), timeout=5)
    with pytest.raises(TLSError) as caught:
        backend.wrap(sock, server_hostname=host, options=TLSOptions(cafile=files.cafile), timeout=5)
    error = caught.value
    assert error.certificate is True
    assert error.code == 454
    assert any(word in error.diagnostic.lower() for word in words), error.diagnostic
    assert sock.fileno() == -1, "the socket must be closed on failure"


@pytest.mark.parametrize("which", ["untrusted", "self_signed", "expired", "wrong_host"])
def test_verify_false_accepts_any_certificate(backend, make_server, certs, which) -> None:
    cert = getattr(certs, which)
    server = make_server(cert)
    stream = connect(backend, server, "localhost", TLSOptions(verify=False))
    try:
        info = stream.tls_info
        assert info.verified is False
        assert info.peer_certificate == cert.der
        round_trip(stream)
    finally:
        stream.close()
    assert server.sni == ["localhost"]


# -- protocol versions ------------------------------------------------------------


def test_tls_1_1_is_refused(backend, make_server, certs, files) -> None:
    # If the local OpenSSL will not even offer TLS 1.1 server-side, the
    # handshake fails all the same, which is what matters.
    server = make_server(certs.server, maximum_version=ssl.TLSVersion.TLSv1_1)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    with pytest.raises(TLSError) as caught:
        backend.wrap(
            sock, server_hostname="localhost", options=TLSOptions(cafile=files.cafile), timeout=5
        )
    assert caught.value.certificate is False
    assert sock.fileno() == -1


def test_tls_1_2_info_and_tls_unique(backend, make_server, certs, files) -> None:
    server = make_server(certs.server, maximum_version=ssl.TLSVersion.TLSv1_2)
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        info = stream.tls_info
        assert info.version == "TLSv1.2"
        assert info.verified is True
        unique = info.channel_bindings["tls-unique"]
        assert len(unique) == 12
        assert "tls-exporter" not in info.channel_bindings
        round_trip(stream)
        assert server.tls_unique == [unique], "client and server disagree on tls-unique"
    finally:
        stream.close()


def test_tls_1_3_info(backend, make_server, certs, files) -> None:
    server = make_server(certs.server)
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        info = stream.tls_info
        assert info.version == "TLSv1.3"
        assert "tls-unique" not in info.channel_bindings
        if backend.name == "pyopenssl":
            assert len(info.channel_bindings["tls-exporter"]) == 32
    finally:
        stream.close()


def test_tls_exporter_differs_per_connection(make_server, certs, files) -> None:
    backend = build_registry().tls_backends["pyopenssl"]
    values = []
    for _ in range(2):
        server = make_server(certs.server)
        stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        values.append(stream.tls_info.channel_bindings["tls-exporter"])
        stream.close()
    assert values[0] != values[1]


def test_tls_exporter_matches_the_server(certs, files, tmp_path) -> None:
    """RFC 9266 tls-exporter: the client's value equals the one a pyOpenSSL
    server exports from the same connection."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    certs.server.configure_cert(context, tmp_path)
    exported: list[bytes] = []
    errors: list[BaseException] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            with raw:
                raw.settimeout(None)  # a plain blocking socket for pyOpenSSL
                conn = SSL.Connection(context, raw)
                conn.set_accept_state()
                conn.do_handshake()
                exported.append(conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, b""))
                with contextlib.suppress(SSL.Error):
                    while conn.recv(1024):
                        pass
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        backend = build_registry().tls_backends["pyopenssl"]
        sock = socket.create_connection(listener.getsockname(), timeout=5)
        stream = backend.wrap(
            sock, server_hostname="localhost", options=TLSOptions(cafile=files.cafile), timeout=5
        )
        client_value = stream.tls_info.channel_bindings["tls-exporter"]
        stream.close()
        thread.join(5)
    finally:
        listener.close()
    assert not errors
    assert exported == [client_value]


def test_tls_server_end_point_is_sha256_of_the_certificate(
    backend, make_server, certs, files
) -> None:
    # trustme signs with ECDSA-SHA256, so RFC 5929 says: SHA-256 of the DER.
    server = make_server(certs.server)
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        bindings = stream.tls_info.channel_bindings
        assert bindings["tls-server-end-point"] == hashlib.sha256(certs.server.der).digest()
    finally:
        stream.close()


# -- client certificates ----------------------------------------------------------


def test_client_certificate_is_presented(backend, make_server, certs, files) -> None:
    server = make_server(certs.server, client_ca=certs.ca_pem)
    options = TLSOptions(
        cafile=files.cafile, client_cert=files.client_cert, client_key=files.client_key
    )
    stream = connect(backend, server, "localhost", options)
    try:
        round_trip(stream)
    finally:
        stream.close()
    assert server.client_subjects == [CLIENT_COMMON_NAME]


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize(
    ("host", "what"), [("localhost", "host name"), ("127.0.0.1", "IP address")]
)
def test_client_certificate_is_not_presented_to_a_wrong_host(
    backend, make_server, certs, files, version, host, what
) -> None:
    # The server requests a client certificate and would go on without one,
    # so only the client's own check can keep its certificate back: the name
    # (or IP literal) must fail during the handshake, before the client's
    # Certificate message, as Python's ssl does with check_hostname.
    tls_version = getattr(ssl.TLSVersion, version)
    server = make_server(
        certs.wrong_host,
        client_ca=certs.ca_pem,
        client_verify=ssl.CERT_OPTIONAL,
        minimum_version=tls_version,
        maximum_version=tls_version,
    )
    options = TLSOptions(
        cafile=files.cafile, client_cert=files.client_cert, client_key=files.client_key
    )
    with pytest.raises(TLSError) as caught:
        connect(backend, server, host, options)
    error = caught.value
    assert error.certificate is True
    if backend.name == "pyopenssl":
        assert f"does not match the {what} {host!r}" in error.diagnostic, error.diagnostic
        assert "it is for wrong.example" in error.diagnostic, error.diagnostic
    server.wait_served()
    assert server.client_subjects == [], "the client certificate went to a server that failed"
    assert server.errors, "the server completed a handshake the client should have aborted"


def test_shared_context_checks_each_connection_s_own_name(make_server, certs, files) -> None:
    # One context serves every connection with these options; the name each
    # connection expects reaches the verify callback through its app data.
    backend = build_registry().tls_backends["pyopenssl"]
    server = make_server(certs.wrong_host)
    options = TLSOptions(cafile=files.cafile)
    for host, good in [("wrong.example", True), ("localhost", False), ("wrong.example", True)]:
        if good:
            stream = connect(backend, server, host, options)
            assert stream.tls_info.verified is True
            stream.close()
        else:
            with pytest.raises(TLSError) as caught:
                connect(backend, server, host, options)
            assert "does not match the host name 'localhost'" in caught.value.diagnostic
    # (SNI is recorded on the server before the client can have finished.)
    assert server.sni == ["wrong.example", "localhost", "wrong.example"]
    assert backend.context(options) is backend.context(TLSOptions(cafile=files.cafile))


def test_unloadable_client_key_is_refused_before_connecting(
    backend, make_server, certs, files, tmp_path
):
    bad_key = tmp_path / "bad-key.pem"
    bad_key.write_bytes(b"not a key\n")
    options = TLSOptions(
        cafile=files.cafile, client_cert=files.client_cert, client_key=str(bad_key)
    )
    with pytest.raises(InvalidInputError, match="client certificate"):
        backend.check(options)
    # A wrap without the check still fails cleanly and closes the socket.
    server = make_server(certs.server)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    with pytest.raises((TLSError, InvalidInputError)):
        backend.wrap(sock, server_hostname="localhost", options=options, timeout=5)
    assert sock.fileno() == -1


def test_unloadable_cafile_is_refused_before_connecting(backend, tmp_path):
    bad_ca = tmp_path / "bad-ca.pem"
    bad_ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
    with pytest.raises(InvalidInputError, match="cafile"):
        backend.check(TLSOptions(cafile=str(bad_ca)))


# -- timeouts ---------------------------------------------------------------------


def test_handshake_times_out_against_a_silent_server(backend, make_server, files) -> None:
    server = make_server(None)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    started = time.monotonic()
    with pytest.raises(TLSError) as caught:
        backend.wrap(
            sock,
            server_hostname="localhost",
            options=TLSOptions(cafile=files.cafile),
            timeout=0.5,
        )
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3
    assert "timed out" in caught.value.diagnostic
    assert caught.value.certificate is False
    assert sock.fileno() == -1


@pytest.mark.parametrize(
    ("action", "payload"),
    [("close", b""), ("hold", b"220 mail.example ESMTP ready\r\n" * 4)],
    ids=["hang-up", "plain-text"],
)
def test_handshake_fails_against_a_non_tls_peer(backend, make_server, files, action, payload):
    server = make_server(None, action=action, payload=payload)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    started = time.monotonic()
    with pytest.raises(TLSError) as caught:
        backend.wrap(
            sock, server_hostname="localhost", options=TLSOptions(cafile=files.cafile), timeout=5
        )
    assert time.monotonic() - started < 3
    assert caught.value.certificate is False
    assert "timed out" not in caught.value.diagnostic
    assert sock.fileno() == -1


def test_read_times_out(backend, make_server, certs, files) -> None:
    server = make_server(certs.server, action="hold")
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLostError) as caught:
            stream.read(1024, 0.3)
        assert 0.25 < time.monotonic() - started < 2
        assert caught.value.timed_out is True
        assert caught.value.code == 400
    finally:
        stream.close()


def test_write_times_out_when_the_server_reads_nothing(backend, make_server, certs, files):
    server = make_server(certs.server, action="hold")
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile), timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLostError) as caught:
            stream.write(bytes(64 << 20), 0.5)
        assert time.monotonic() - started < 4
        assert caught.value.timed_out is True
    finally:
        stream.close()


# -- reading and writing ----------------------------------------------------------


def test_buffered_data_is_read_without_waiting(backend, make_server, certs, files) -> None:
    payload = b"250-first line\r\n250-second line\r\n250 last line\r\n"
    server = make_server(certs.server, action="send-hold", payload=payload)
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        first = stream.read(5, 5)
        assert first
        # The rest of the record is decrypted and buffered: no wait, no timeout.
        rest = b""
        while len(first) + len(rest) < len(payload):
            rest += stream.read(5, 0.2)
        assert first + rest == payload
        with pytest.raises(ConnectionLostError):
            stream.read(5, 0.2)
    finally:
        stream.close()


def test_a_read_that_may_not_wait(backend, make_server, certs, files) -> None:
    # timeout=0 looks without waiting (a kept connection's liveness check):
    # nothing to read is a timeout, at once, and the stream stays usable.
    server = make_server(certs.server)
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        with pytest.raises(ConnectionLostError) as caught:
            stream.read(1024, 0)
        assert caught.value.timed_out is True
        round_trip(stream)
    finally:
        stream.close()


def test_large_write_arrives_whole(backend, make_server, certs, files) -> None:
    data = bytes(range(256)) * (12 * 1024 + 7)  # about 3 MB
    server = make_server(certs.server, action="digest", expect=len(data))
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        stream.write(data, 5)
        assert read_exactly(stream, 65) == hashlib.sha256(data).hexdigest().encode() + b"\n"
    finally:
        stream.close()


@pytest.mark.parametrize("action", ["send-close", "send-abort"])
def test_read_returns_empty_after_the_server_closes(backend, make_server, certs, files, action):
    server = make_server(certs.server, action=action, payload=b"221 bye\r\n")
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        assert read_exactly(stream, 9) == b"221 bye\r\n"
        assert stream.read(1024, 5) == b""
    finally:
        stream.close()


def test_close_is_idempotent(backend, make_server, certs, files) -> None:
    server = make_server(certs.server)
    stream = connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    round_trip(stream)
    stream.close()
    stream.close()
    with pytest.raises(ConnectionLostError):
        stream.read(10, 1)
    with pytest.raises(ConnectionLostError):
        stream.write(b"x", 1)
    assert stream.tls is True


# -- session resumption -----------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_resumed_session_is_checked_against_the_new_name(make_server, certs, files, version):
    # A resumed handshake carries no certificate, so no chain is verified: the
    # certificate the session holds must still be checked against the name.
    # (pyopenssl only: the stdlib backend, Python's ssl, does not check the
    # name on a resumed session; smtplug offers a session only to the host
    # and port it came from.)
    backend = build_registry().tls_backends["pyopenssl"]
    tls_version = getattr(ssl.TLSVersion, version)
    server = make_server(certs.server, minimum_version=tls_version, maximum_version=tls_version)
    options = TLSOptions(cafile=files.cafile)

    def wrap(hostname: str, session: object | None) -> TLSStream:
        sock = socket.create_connection((server.host, server.port), timeout=5)
        return backend.wrap(
            sock, server_hostname=hostname, options=options, timeout=5, session=session
        )

    first = wrap("127.0.0.1", None)
    round_trip(first)  # on TLS 1.3 the session arrives after the handshake
    session = first.tls_session()
    first.close()
    assert session is not None
    # Under the same IP literal the session resumes. No SNI goes for an IP
    # literal, so the next ClientHello is the same but for the name the
    # client expects: the server resumes it all the same.
    second = wrap("127.0.0.1", session)
    try:
        assert second.tls_info.resumed is True
        assert second.tls_info.verified is True
        round_trip(second)
    finally:
        second.close()
    with pytest.raises(TLSError) as caught:
        wrap("127.0.0.2", session)
    assert caught.value.certificate is True
    assert "127.0.0.2" in caught.value.diagnostic
    assert server.resumed[:2] == [False, True]


# -- options ----------------------------------------------------------------------


def _ready_context(backend: TLSBackend, files: ClientFiles, *, verify: bool) -> object:
    if backend.name == "stdlib":
        context = ssl.create_default_context(cafile=files.cafile)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
    pyopenssl = SSL.Context(SSL.TLS_CLIENT_METHOD)
    pyopenssl.load_verify_locations(files.cafile)
    pyopenssl.set_verify(SSL.VERIFY_PEER if verify else SSL.VERIFY_NONE)
    return pyopenssl


def test_ready_context_is_used(backend, make_server, certs, files) -> None:
    # The CA is only in the caller's context: success proves it was used.
    server = make_server(certs.server)
    options = TLSOptions(context=_ready_context(backend, files, verify=True))
    stream = connect(backend, server, "localhost", options)
    try:
        assert stream.tls_info.verified is True
        round_trip(stream)
    finally:
        stream.close()


def test_ready_context_still_checks_the_host_name(backend, make_server, certs, files) -> None:
    server = make_server(certs.wrong_host)
    options = TLSOptions(context=_ready_context(backend, files, verify=True))
    with pytest.raises(TLSError) as caught:
        connect(backend, server, "localhost", options)
    assert caught.value.certificate is True


def test_ready_context_without_verification(backend, make_server, certs, files) -> None:
    server = make_server(certs.untrusted)
    options = TLSOptions(context=_ready_context(backend, files, verify=False))
    stream = connect(backend, server, "localhost", options)
    try:
        assert stream.tls_info.verified is False
    finally:
        stream.close()


def test_ready_context_is_not_overridden_by_options(backend, make_server, certs, files):
    # The caller's context decides: verify=False does not turn its checks off.
    server = make_server(certs.wrong_host)
    options = TLSOptions(context=_ready_context(backend, files, verify=True), verify=False)
    with pytest.raises(TLSError) as caught:
        connect(backend, server, "localhost", options)
    assert caught.value.certificate is True


def test_wrong_context_type_is_refused_by_check(backend) -> None:
    wrong: object = (
        SSL.Context(SSL.TLS_CLIENT_METHOD)
        if backend.name == "stdlib"
        else ssl.create_default_context()
    )
    for context in (wrong, object()):
        with pytest.raises(InvalidInputError):
            backend.check(TLSOptions(context=context))


@pytest.mark.parametrize("option", ["cafile", "capath", "client_cert"])
def test_missing_files_are_refused_by_check(backend, tmp_path, option) -> None:
    with pytest.raises(InvalidInputError):
        backend.check(TLSOptions(**{option: str(tmp_path / "missing.pem")}))


def test_good_options_pass_check(backend, files) -> None:
    backend.check(
        TLSOptions(
            cafile=files.cafile,
            capath=files.capath,
            client_cert=files.client_cert,
            client_key=files.client_key,
        )
    )
