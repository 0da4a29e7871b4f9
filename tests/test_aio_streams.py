"""The asyncio side of the transports and TLS backends.

First each backend's :class:`~smtplug.interfaces.TLSEngine` alone, pumping
records to and from a server-side :class:`ssl.SSLObject` in memory (no
socket); then the asyncio streams and transports of ``_aio`` against real
servers on loopback: the TLS servers of ``test_tls_backends`` and the SMTP
``RecordingServer`` (STARTTLS) of ``servers``, with the trustme certificates
of ``tlsfixtures``. Every TLS test runs once per backend, each taken from the
plugin registry as the core takes it. Tests drive their coroutines with
``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import hashlib
import select
import socket
import ssl
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

import test_tls_backends as blocking
from servers import RecordingServer, refused_port, silent_port
from smtplug.errors import ConnectError, ConnectionLostError, InvalidInputError, TLSError
from smtplug.interfaces import (
    AsyncResumableStream,
    AsyncStream,
    AsyncTLSStream,
    AsyncTransport,
    AsyncUpgradableStream,
    EngineTLSBackend,
    TLSBackend,
    TLSEngine,
    TLSOptions,
    TLSStream,
)
from smtplug.plugins import build_registry
from tlsfixtures import (
    CLIENT_COMMON_NAME,
    PEMCert,
    server_context,
)

BACKENDS = ["stdlib", "pyopenssl"]

# The TLS server and the fixtures of the blocking backends' tests, reused:
# certs, files, backend (one per backend) and make_server (TLSServer).
HAS_IPV6 = blocking.HAS_IPV6
TLSServer = blocking.TLSServer
certs = blocking.certs
files = blocking.files
backend = blocking.backend
make_server = blocking.make_server

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def at_once(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result (or exception) of a coroutine that must finish without
    waiting for anything: how "does not wait" is shown without measuring time.

    It may yield to the loop (``asyncio.sleep(0)`` yields None: one turn, so
    that what the kernel already holds is delivered), a bounded number of
    times; it must never wait on a future (data, a timer).
    """
    for _ in range(8):
        try:
            awaited = coroutine.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        if awaited is not None:
            break
    coroutine.close()
    raise AssertionError("the coroutine waited")


# -- the engines, in memory --------------------------------------------------------


class MemoryServer:
    """A server-side :class:`ssl.SSLObject` over memory buffers."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.done = False
        self.error: BaseException | None = None

    def step(self) -> None:
        if self.done or self.error is not None:
            return
        try:
            self.tls.do_handshake()
            self.done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self.error = exc


def pump(engine: TLSEngine, server: MemoryServer) -> None:
    """Move records both ways until neither side has anything more to say."""
    for _ in range(100):
        moved = False
        out = engine.outgoing()
        if out:
            server.incoming.write(out)
            moved = True
        server.step()
        back = server.outgoing.read()
        if back:
            engine.receive(back)
            moved = True
        if not moved:
            return
    raise AssertionError("the records never stopped")


def handshake(engine: TLSEngine, server: MemoryServer) -> None:
    for _ in range(20):
        done = engine.handshake()
        pump(engine, server)
        if done and server.done:
            return
    raise AssertionError("the in-memory handshake never completed")


@pytest.fixture
def memory_server(tmp_path: Path) -> Callable[..., MemoryServer]:
    def make(cert: PEMCert, **context_args: Any) -> MemoryServer:
        return MemoryServer(server_context(cert, tmp_path, **context_args))

    return make


def engine_of(backend: TLSBackend, host: str, options: TLSOptions, **kwargs: Any) -> TLSEngine:
    assert isinstance(backend, EngineTLSBackend)
    backend.check(options)
    engine = backend.engine(server_hostname=host, options=options, **kwargs)
    assert isinstance(engine, TLSEngine)
    return engine


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_engine_pumps_records_in_memory(backend, memory_server, certs, files, version) -> None:
    tls_version = getattr(ssl.TLSVersion, version)
    server = memory_server(certs.server, minimum_version=tls_version, maximum_version=tls_version)
    engine = engine_of(backend, "localhost", TLSOptions(cafile=files.cafile))
    assert engine.outgoing() == b"", "no record before the first handshake step"
    assert engine.handshake() is False
    assert engine.outgoing(), "the ClientHello"
    engine = engine_of(backend, "localhost", TLSOptions(cafile=files.cafile))
    handshake(engine, server)
    info = engine.info()
    assert info.backend == backend.name
    assert info.verified is True
    assert info.version == version.replace("_", ".")
    assert info.peer_certificate == certs.server.der
    end_point = hashlib.sha256(certs.server.der).digest()
    assert info.channel_bindings["tls-server-end-point"] == end_point
    if version == "TLSv1_2":
        assert info.channel_bindings["tls-unique"] == server.tls.get_channel_binding("tls-unique")
    else:
        assert "tls-unique" not in info.channel_bindings

    # Nothing to read yet: None, not b"" and not an error.
    assert engine.read(100) is None
    engine.write(b"EHLO client.example\r\n")
    pump(engine, server)
    assert server.tls.read(100) == b"EHLO client.example\r\n"
    server.tls.write(b"250 ok\r\n")
    pump(engine, server)
    assert engine.read(100) == b"250 ok\r\n"
    # close() queues close_notify (b"" for the server; without it, WantRead).
    engine.close()
    engine.close()
    pump(engine, server)
    assert server.tls.read(100) == b""


def test_engine_reads_b_empty_after_close_notify_or_eof(backend, memory_server, certs, files):
    for how in ("close_notify", "eof"):
        server = memory_server(certs.server)
        engine = engine_of(backend, "localhost", TLSOptions(cafile=files.cafile))
        handshake(engine, server)
        server.tls.write(b"221 bye\r\n")
        if how == "close_notify":
            with pytest.raises(ssl.SSLWantReadError):
                server.tls.unwrap()
        pump(engine, server)
        if how == "eof":
            engine.receive(b"")
        assert engine.read(100) == b"221 bye\r\n"
        assert engine.read(100) == b""
        engine.close()


@pytest.mark.parametrize(
    ("which", "host"),
    [("wrong_host", "localhost"), ("wrong_host", "127.0.0.1"), ("untrusted", "localhost")],
)
def test_engine_refuses_a_bad_certificate_during_the_handshake(
    backend, memory_server, certs, files, which, host
) -> None:
    server = memory_server(getattr(certs, which))
    engine = engine_of(backend, host, TLSOptions(cafile=files.cafile))
    with pytest.raises(TLSError) as caught:
        handshake(engine, server)
    assert caught.value.certificate is True
    assert not server.done, "the client finished a handshake it should have aborted"
    engine.close()


def test_engine_without_verification(backend, memory_server, certs) -> None:
    server = memory_server(certs.untrusted)
    engine = engine_of(backend, "localhost", TLSOptions(verify=False))
    handshake(engine, server)
    assert engine.info().verified is False
    assert engine.info().peer_certificate == certs.untrusted.der


def test_engine_handshake_fails_on_garbage_and_on_eof(backend, files) -> None:
    engine = engine_of(backend, "localhost", TLSOptions(cafile=files.cafile))
    engine.handshake()
    engine.receive(b"220 mail.example ESMTP ready\r\n" * 4)
    with pytest.raises(TLSError) as caught:
        engine.handshake()
    assert caught.value.certificate is False
    engine.close()
    engine = engine_of(backend, "localhost", TLSOptions(cafile=files.cafile))
    engine.handshake()
    engine.receive(b"")
    with pytest.raises(TLSError):
        engine.handshake()


def test_engine_info_before_the_handshake_is_an_error(backend, files) -> None:
    engine = engine_of(backend, "localhost", TLSOptions(cafile=files.cafile))
    with pytest.raises(TLSError):
        engine.info()
    engine.close()


# -- the asyncio transports and streams, against servers on loopback --------------


def transport(name: str) -> AsyncTransport:
    found = build_registry().async_transports[name]
    assert isinstance(found, AsyncTransport)
    assert found.name == name
    return found


def tls_options(backend: TLSBackend, options: TLSOptions, **more: Any) -> Mapping[str, Any]:
    backend.check(options)
    return {"tls_backend": backend, "tls_options": options, **more}


async def implicit(
    backend: TLSBackend,
    server: TLSServer,
    host: str,
    options: TLSOptions,
    *,
    timeout: float = 5,
    **more: Any,
) -> AsyncTLSStream:
    stream = await transport("implicit-tls").connect(
        host, server.port, timeout=timeout, options=tls_options(backend, options, **more)
    )
    assert isinstance(stream, AsyncTLSStream)
    return stream


async def starttls(
    backend: TLSBackend, server: RecordingServer, options: TLSOptions
) -> AsyncUpgradableStream:
    """A ``starttls`` stream to ``server`` that has sent STARTTLS and read
    the 220 (the greeting and the 220 read, EHLO skipped: aiosmtpd allows it)."""
    stream = await transport("starttls").connect(
        "localhost", server.port, timeout=5, options=tls_options(backend, options)
    )
    assert isinstance(stream, AsyncUpgradableStream)
    assert stream.tls is False
    assert (await read_reply(stream)).startswith(b"220 ")
    await stream.write(b"STARTTLS\r\n", 5)
    assert (await read_reply(stream)).startswith(b"220 ")
    return stream


async def read_exactly(stream: AsyncStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.read(size - len(data), 5)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


async def round_trip(stream: AsyncStream, line: bytes = b"EHLO client.example\r\n") -> None:
    await stream.write(line, 5)
    assert await read_exactly(stream, len(line)) == line


async def read_reply(stream: AsyncStream) -> bytes:
    """One whole SMTP reply (its last line has a space after the code)."""
    data = b""
    while True:
        chunk = await stream.read(4096, 5)
        assert chunk, f"EOF after {data!r}"
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def test_the_async_transports_are_registered() -> None:
    registry = build_registry()
    assert set(registry.async_transports) == {"plain", "starttls", "implicit-tls", "lmtp"}
    assert set(registry.async_transports) == set(registry.transports)
    for name in BACKENDS:
        assert isinstance(registry.tls_backends[name], EngineTLSBackend)


def test_implicit_tls_handshake(backend, make_server, certs, files) -> None:
    server = make_server(certs.server)

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        try:
            assert isinstance(stream, AsyncResumableStream)
            assert stream.tls is True
            info = stream.tls_info
            assert info.backend == backend.name
            assert info.verified is True
            assert info.version == "TLSv1.3"
            assert info.resumed is False
            assert info.peer_certificate == certs.server.der
            await round_trip(stream)
            await round_trip(stream, b"x" * 100_000)
        finally:
            stream.close()
            stream.close()
        with pytest.raises(ConnectionLostError):
            await stream.read(10, 1)
        with pytest.raises(ConnectionLostError):
            await stream.write(b"x", 1)

    run(main())
    assert server.sni == ["localhost"]
    assert not server.errors


def test_starttls_handshake(backend, certs, files, tmp_path) -> None:
    context = server_context(certs.server, tmp_path)
    with RecordingServer(tls_context=context) as server:

        async def main() -> None:
            stream = await starttls(backend, server, TLSOptions(cafile=files.cafile))
            secured = await stream.start_tls(5)
            try:
                assert isinstance(secured, AsyncResumableStream)
                assert secured.tls is True
                assert secured.tls_info.verified is True
                assert secured.tls_info.backend == backend.name
                with pytest.raises(ConnectionLostError):
                    await stream.read(10, 1)  # the plain stream is done with
                await secured.write(b"EHLO client.example\r\n", 5)
                assert b"STARTTLS" not in await read_reply(secured)
                await secured.write(b"QUIT\r\n", 5)
                assert (await read_reply(secured)).startswith(b"221")
            finally:
                secured.close()

        run(main())
        server.wait_idle()
    assert server.commands == ["STARTTLS", "EHLO client.example", "QUIT"]


@pytest.mark.parametrize(
    ("which", "host", "words"),
    [
        ("wrong_host", "localhost", ("match",)),
        ("wrong_host", "127.0.0.1", ("match",)),
        ("untrusted", "localhost", ("issuer", "self-signed", "self signed")),
    ],
)
def test_bad_certificate_is_refused(backend, make_server, certs, files, which, host, words):
    server = make_server(getattr(certs, which))

    async def main() -> TLSError:
        with pytest.raises(TLSError) as caught:
            await implicit(backend, server, host, TLSOptions(cafile=files.cafile))
        return caught.value

    error = run(main())
    assert error.certificate is True
    assert error.code == 454
    assert any(word in error.diagnostic.lower() for word in words), error.diagnostic
    server.wait_served()
    assert server.errors, "the server completed a handshake the client should have aborted"


def test_bad_certificate_is_refused_after_starttls(backend, certs, files, tmp_path) -> None:
    context = server_context(certs.untrusted, tmp_path)
    with RecordingServer(tls_context=context) as server:

        async def main() -> None:
            stream = await starttls(backend, server, TLSOptions(cafile=files.cafile))
            with pytest.raises(TLSError) as caught:
                await stream.start_tls(5)
            assert caught.value.certificate is True

        run(main())
        server.wait_idle()  # the client closed the connection


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
def test_ip_literal(backend, make_server, certs, files, host) -> None:
    server = make_server(certs.server, host=host)

    async def main() -> None:
        stream = await implicit(backend, server, host, TLSOptions(cafile=files.cafile))
        try:
            assert stream.tls_info.verified is True
            await round_trip(stream)
        finally:
            stream.close()

    run(main())
    assert server.sni == [None], "no SNI may be sent for an IP literal"


@pytest.mark.parametrize("which", ["untrusted", "wrong_host"])
def test_verify_false_accepts_any_certificate(backend, make_server, certs, which) -> None:
    cert = getattr(certs, which)
    server = make_server(cert)

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(verify=False))
        try:
            assert stream.tls_info.verified is False
            assert stream.tls_info.peer_certificate == cert.der
            await round_trip(stream)
        finally:
            stream.close()

    run(main())


def test_client_certificate_is_presented(backend, make_server, certs, files) -> None:
    server = make_server(certs.server, client_ca=certs.ca_pem)
    options = TLSOptions(
        cafile=files.cafile, client_cert=files.client_cert, client_key=files.client_key
    )

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", options)
        try:
            await round_trip(stream)
        finally:
            stream.close()

    run(main())
    assert server.client_subjects == [CLIENT_COMMON_NAME]


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_is_resumed_on_a_second_connection(
    backend, make_server, certs, files, version
) -> None:
    tls_version = getattr(ssl.TLSVersion, version)
    server = make_server(certs.server, minimum_version=tls_version, maximum_version=tls_version)
    options = TLSOptions(cafile=files.cafile)

    async def main() -> None:
        first = await implicit(backend, server, "localhost", options)
        assert isinstance(first, AsyncResumableStream)
        await round_trip(first)  # on TLS 1.3 the ticket arrives after the handshake
        session = first.tls_session()
        first.close()
        assert session is not None
        sessions = {("localhost", server.port): session}
        second = await implicit(backend, server, "localhost", options, tls_sessions=sessions)
        try:
            assert second.tls_info.resumed is True
            assert second.tls_info.verified is True
            await round_trip(second)
        finally:
            second.close()

    run(main())
    assert server.resumed == [False, True]


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_channel_bindings_are_those_wrap_gives(backend, make_server, certs, files, version):
    tls_version = getattr(ssl.TLSVersion, version)
    server = make_server(certs.server, minimum_version=tls_version, maximum_version=tls_version)
    options = TLSOptions(cafile=files.cafile)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    blocking: TLSStream = backend.wrap(
        sock, server_hostname="localhost", options=options, timeout=5
    )
    blocking.close()

    async def main() -> AsyncTLSStream:
        stream = await implicit(backend, server, "localhost", options)
        await round_trip(stream)
        stream.close()
        return stream

    stream = run(main())
    synced, ours = blocking.tls_info, stream.tls_info
    assert (ours.version, ours.cipher, ours.verified) == (
        synced.version,
        synced.cipher,
        synced.verified,
    )
    assert ours.peer_certificate == synced.peer_certificate
    assert set(ours.channel_bindings) == set(synced.channel_bindings)
    end_point = "tls-server-end-point"
    assert ours.channel_bindings[end_point] == synced.channel_bindings[end_point]
    if version == "TLSv1_2":
        # tls-unique is the connection's own: each side's equals the server's.
        assert server.tls_unique == [
            synced.channel_bindings["tls-unique"],
            ours.channel_bindings["tls-unique"],
        ]
    else:
        assert "tls-unique" not in ours.channel_bindings


def test_large_write_arrives_whole(backend, make_server, certs, files) -> None:
    data = bytes(range(256)) * (12 * 1024 + 7)  # about 3 MB
    server = make_server(certs.server, action="digest", expect=len(data))

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        try:
            await stream.write(data, 5)
            digest = hashlib.sha256(data).hexdigest().encode() + b"\n"
            assert await read_exactly(stream, 65) == digest
        finally:
            stream.close()

    run(main())


def test_tls_read_times_out(backend, make_server, certs, files) -> None:
    server = make_server(certs.server, action="hold")

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        try:
            with pytest.raises(ConnectionLostError) as caught:
                await stream.read(1024, 0.2)
            assert caught.value.timed_out is True
            assert caught.value.code == 400
        finally:
            stream.close()

    run(main())


def test_tls_write_times_out_when_the_server_reads_nothing(backend, make_server, certs, files):
    server = make_server(certs.server, action="hold")

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        try:
            with pytest.raises(ConnectionLostError) as caught:
                await stream.write(bytes(64 << 20), 0.3)
            assert caught.value.timed_out is True
        finally:
            stream.close()

    run(main())


def test_tls_read_that_may_not_wait(backend, make_server, certs, files) -> None:
    # timeout=0 looks without waiting: nothing is a timeout, the stream stays usable.
    server = make_server(certs.server)

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        try:
            with pytest.raises(ConnectionLostError) as caught:
                at_once(stream.read(1024, 0))
            assert caught.value.timed_out is True
            await round_trip(stream)
        finally:
            stream.close()

    run(main())


def test_tls_buffered_data_is_read_without_waiting(backend, make_server, certs, files) -> None:
    payload = b"250-first line\r\n250-second line\r\n250 last line\r\n"
    server = make_server(certs.server, action="send-hold", payload=payload)

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        try:
            data = await stream.read(5, 5)
            while len(data) < len(payload):
                data += at_once(stream.read(5, 0))  # decrypted already: no wait
            assert data == payload
            with pytest.raises(ConnectionLostError):
                at_once(stream.read(5, 0))
        finally:
            stream.close()

    run(main())


def until_the_kernel_holds_data(stream: Any) -> None:
    """Block the event loop's thread until the connection's socket is readable
    in the kernel: what the server sent (or its close) is then there, and the
    loop has not yet run to hand it to the protocol."""
    connection = stream._connection  # the plugin's own state, for this check only
    if connection.buffer or connection.eof:
        return  # the loop took it already, while connecting: read(n, 0) must still give it
    sock = connection.transport.get_extra_info("socket")
    assert select.select([sock.fileno()], [], [], 60)[0], "the server sent nothing"


@pytest.mark.parametrize(
    ("action", "payload"), [("hold", b"421 4.4.2 closing\r\n"), ("close", b"")]
)
def test_read_0_sees_what_the_kernel_holds_before_the_loop_ran(
    make_server, action, payload
) -> None:
    # The kept-session probe and the poll between BDAT chunks ask with
    # read(n, 0) whether the server said something. What reached the kernel
    # while the loop was busy (a reply, the server's close) must be seen at
    # once, not reported as nothing: the transport's reader runs after a task
    # woken in the same loop turn, so one turn is not enough. (TLS streams
    # read through the same connection object.)
    server = make_server(None, action=action, payload=payload)

    async def main() -> bytes:
        stream = await plain(server.port)
        try:
            until_the_kernel_holds_data(stream)
            # On the loop (at_once would not run it): the read may turn it,
            # never wait for it.
            return await stream.read(1024, 0)
        finally:
            stream.close()

    assert run(main()) == payload


@pytest.mark.parametrize("action", ["send-close", "send-abort"])
def test_tls_read_returns_empty_after_the_server_closes(
    backend, make_server, certs, files, action
) -> None:
    server = make_server(certs.server, action=action, payload=b"221 bye\r\n")

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        try:
            assert await read_exactly(stream, 9) == b"221 bye\r\n"
            assert await stream.read(1024, 5) == b""
        finally:
            stream.close()

    run(main())


def test_handshake_times_out_against_a_silent_server(backend, files) -> None:
    async def main(port: int) -> TLSError:
        with pytest.raises(TLSError) as caught:
            await transport("implicit-tls").connect(
                "localhost",
                port,
                timeout=0.3,
                options=tls_options(backend, TLSOptions(cafile=files.cafile)),
            )
        return caught.value

    with silent_port() as port:
        error = run(main(port))
    assert "timed out" in error.diagnostic
    assert error.certificate is False


@pytest.mark.parametrize(
    ("action", "payload"),
    [("close", b""), ("hold", b"220 mail.example ESMTP ready\r\n" * 4)],
    ids=["hang-up", "plain-text"],
)
def test_handshake_fails_against_a_non_tls_peer(backend, make_server, files, action, payload):
    server = make_server(None, action=action, payload=payload)

    async def main() -> TLSError:
        with pytest.raises(TLSError) as caught:
            await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        return caught.value

    error = run(main())
    assert error.certificate is False
    assert "timed out" not in error.diagnostic


class WrapOnly:
    """A TLS backend that can only wrap blocking sockets."""

    name = "wrap-only"

    def check(self, options: TLSOptions) -> None:
        pass

    def wrap(self, sock: socket.socket, **kwargs: Any) -> TLSStream:
        raise AssertionError("never called")


@pytest.mark.parametrize("name", ["starttls", "implicit-tls"])
def test_a_backend_without_engine_is_refused_by_name(name) -> None:
    async def main(port: int) -> InvalidInputError:
        options = {"tls_backend": WrapOnly(), "tls_options": TLSOptions()}
        with pytest.raises(InvalidInputError) as caught:
            await transport(name).connect("127.0.0.1", port, timeout=5, options=options)
        return caught.value

    with refused_port() as port:  # refused before connecting, not ConnectError
        error = run(main(port))
    assert "wrap-only" in error.diagnostic
    assert "engine" in error.diagnostic


# -- plain TCP ----------------------------------------------------------------------


async def plain(port: int, host: str = "127.0.0.1") -> AsyncStream:
    stream = await transport("plain").connect(host, port, timeout=5, options={})
    assert isinstance(stream, AsyncStream)
    assert stream.tls is False
    return stream


def test_plain_round_trip_and_peer_close(smtp_server) -> None:
    async def main() -> None:
        stream = await plain(smtp_server.port)
        try:
            assert (await read_reply(stream)).startswith(b"220 ")
            await stream.write(b"QUIT\r\n", 5)
            assert (await read_reply(stream)).startswith(b"221")
            assert await stream.read(1024, 5) == b""  # the server hung up
            assert at_once(stream.read(1024, 0)) == b""
        finally:
            stream.close()

    run(main())


def test_plain_read_times_out_and_read_0_never_waits() -> None:
    async def main(port: int) -> None:
        stream = await plain(port)
        try:
            with pytest.raises(ConnectionLostError) as caught:
                at_once(stream.read(1024, 0))
            assert caught.value.timed_out is True
            with pytest.raises(ConnectionLostError) as caught:
                await stream.read(1024, 0.2)
            assert caught.value.timed_out is True
        finally:
            stream.close()

    with silent_port() as port:
        run(main(port))


def test_plain_data_sent_before_a_hang_up_is_read_first(make_server) -> None:
    server = make_server(None, action="hold", payload=b"421 closing\r\n")

    async def main() -> None:
        stream = await plain(server.port)
        try:
            assert await read_exactly(stream, 13) == b"421 closing\r\n"
        finally:
            stream.close()

    run(main())


def test_plain_write_to_a_closed_peer_fails(make_server) -> None:
    server = make_server(None, action="close")

    async def main() -> ConnectionLostError:
        stream = await plain(server.port)
        try:
            assert await stream.read(1024, 5) == b""
            # The first writes may still reach the kernel (as with a socket);
            # the peer's reset then fails the next one.
            for _ in range(200):
                try:
                    await stream.write(b"NOOP\r\n", 5)
                except ConnectionLostError as exc:
                    return exc
                await asyncio.sleep(0.01)
            raise AssertionError("every write to the closed peer succeeded")
        finally:
            stream.close()

    error = run(main())
    assert error.timed_out is False


@pytest.mark.parametrize("name", ["plain", "starttls", "implicit-tls"])
def test_connection_refused_is_connect_error(name, files) -> None:
    backend = build_registry().tls_backends["stdlib"]

    async def main(port: int) -> None:
        options = tls_options(backend, TLSOptions(cafile=files.cafile))
        with pytest.raises(ConnectError) as caught:
            await transport(name).connect("127.0.0.1", port, timeout=5, options=options)
        assert f"127.0.0.1:{port}" in caught.value.diagnostic

    with refused_port() as port:
        run(main(port))


def test_name_not_found_is_connect_error() -> None:
    async def main() -> None:
        with pytest.raises(ConnectError):
            await transport("plain").connect("no-such-host.invalid", 25, timeout=5, options={})

    run(main())


async def cancel_a_pending_read(stream: AsyncStream) -> None:
    """Cancel a read that waits for data, close the stream: no task, and no
    timer of the read's timeout, may be left."""
    reader = asyncio.ensure_future(stream.read(1024, 30))
    await asyncio.sleep(0.05)
    assert not reader.done()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    stream.close()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    loop: Any = asyncio.get_running_loop()
    # (A cancelled handle may wait in the loop's heap until it is reached.)
    live = [handle for handle in loop._scheduled if not handle.cancelled()]
    assert not live, "a timer was left behind"


def test_cancelled_plain_read_leaves_no_task_behind() -> None:
    async def main(port: int) -> None:
        stream = await plain(port)
        await cancel_a_pending_read(stream)

    with silent_port() as port:
        run(main(port))


def test_cancelled_tls_read_leaves_no_task_behind(backend, make_server, certs, files) -> None:
    server = make_server(certs.server, action="hold")

    async def main() -> None:
        stream = await implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        await cancel_a_pending_read(stream)

    run(main())


class _FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("path", ["this-python", "python-3.10"])
def test_a_cancel_that_comes_with_the_connection_is_not_lost(path, monkeypatch) -> None:
    # The connection is made and the send cancelled in the same loop turn:
    # the cancel reaches the caller (Python 3.10's wait_for returned the
    # connection instead, and the send went on), and the connection is closed.
    import smtplug_plugins._aio as aio_module

    if path == "python-3.10":
        monkeypatch.setattr(aio_module, "_timeout", None)
    transport = _FakeTransport()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[tuple[Any, Any]] = loop.create_future()

        async def connecting() -> tuple[Any, Any]:
            try:
                return await made
            except asyncio.CancelledError:  # (as loop.create_connection does)
                transport.close()
                raise

        task = asyncio.ensure_future(aio_module._connected(connecting(), "peer", 30))
        for _ in range(3):
            await asyncio.sleep(0)  # the attempt is under way
        made.set_result((transport, object()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3):
            await asyncio.sleep(0)  # (the closing callback)

    run(main())
    assert transport.closed
