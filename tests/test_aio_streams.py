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
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from smtplug.errors import TLSError
from smtplug.interfaces import (
    EngineTLSBackend,
    TLSBackend,
    TLSEngine,
    TLSOptions,
)
from smtplug.plugins import build_registry
from tlsfixtures import (
    ClientFiles,
    PEMCert,
    TLSCertificates,
    server_context,
    tls_ca,
    write_files,
)

BACKENDS = ["stdlib", "pyopenssl"]

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture(scope="session")
def certs() -> TLSCertificates:
    return tls_ca()


@pytest.fixture
def files(certs: TLSCertificates, tmp_path: Path) -> ClientFiles:
    return write_files(certs, tmp_path / "client")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> TLSBackend:
    return build_registry().tls_backends[request.param]


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
