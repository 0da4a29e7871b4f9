"""Issue 11, a server reply lost to a write error, over TLS: after a write
failed because the server reset the connection, what the server had sent
before (a refusal, a 421) is still read from the stream, as on a plain
connection; the drivers read it so that the caller sees the server's reply
instead of the broken write. Both backends, blocking and asyncio streams.
"""

from __future__ import annotations

import asyncio
import time

import test_aio_streams as aio
import test_tls_backends as blocking
from smtplug.errors import ConnectionLostError
from smtplug.interfaces import TLSOptions

certs = blocking.certs
files = blocking.files
backend = blocking.backend
make_server = blocking.make_server

REFUSAL = b"554 5.3.4 message refused\r\n"
#: Writes tried at most before the peer's reset must have failed one.
WRITES = 500


def test_blocking_tls_read_after_a_failed_write(backend, make_server, certs, files):
    server = make_server(certs.server, action="send-abort", payload=REFUSAL)
    stream = blocking.connect(backend, server, "localhost", TLSOptions(cafile=files.cafile))
    try:
        server.wait_served()  # the refusal is sent and the server's socket closed
        for _ in range(WRITES):
            try:
                stream.write(b"x" * 4096, 5)
            except ConnectionLostError as exc:
                assert not exc.timed_out
                break
            time.sleep(0.01)  # (the reset comes back for a write after the close)
        else:
            raise AssertionError("every write to the closed peer succeeded")
        assert blocking.read_exactly(stream, len(REFUSAL)) == REFUSAL
    finally:
        stream.close()


def test_asyncio_tls_read_after_a_failed_write(backend, make_server, certs, files) -> None:
    server = make_server(certs.server, action="send-abort", payload=REFUSAL)

    async def main() -> bytes:
        stream = await aio.implicit(backend, server, "localhost", TLSOptions(cafile=files.cafile))
        try:
            server.wait_served()
            for _ in range(WRITES):
                try:
                    await stream.write(b"x" * 4096, 5)
                except ConnectionLostError as exc:
                    assert not exc.timed_out
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("every write to the closed peer succeeded")
            return await aio.read_exactly(stream, len(REFUSAL))
        finally:
            stream.close()

    assert aio.run(main()) == REFUSAL
