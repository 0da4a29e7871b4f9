"""Issue 11 (the host name is checked during the handshake; a client
certificate is never presented to a server whose name fails), for the
asyncio API's TLS engines: tests/test_tls_backends.py shows it for the
blocking ``wrap`` only, and tests/test_aio_streams.py shows the engines
abort the handshake but not that the client certificate stays back.
"""

from __future__ import annotations

import ssl

import pytest

import test_aio_streams as aio
import test_tls_backends as blocking
from smtplug.errors import TLSError
from smtplug.interfaces import TLSOptions

certs = blocking.certs
files = blocking.files
backend = blocking.backend
make_server = blocking.make_server


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_asyncio_client_certificate_is_not_presented_to_a_wrong_host(
    backend, make_server, certs, files, version, host
) -> None:
    # The server asks for a client certificate and would go on without one:
    # only the client's own check, during the handshake, keeps it back.
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

    async def main() -> TLSError:
        with pytest.raises(TLSError) as caught:
            await aio.implicit(backend, server, host, options)
        return caught.value

    error = aio.run(main())
    assert error.certificate is True
    server.wait_served()
    assert server.client_subjects == [], "the client certificate went to a server that failed"
    assert server.errors, "the server completed a handshake the client should have aborted"


def test_asyncio_client_certificate_is_presented_to_the_right_host(
    backend, make_server, certs, files
) -> None:
    # The same server set-up with the right name: the certificate goes (so
    # the test above can see it when it does).
    server = make_server(certs.server, client_ca=certs.ca_pem, client_verify=ssl.CERT_OPTIONAL)
    options = TLSOptions(
        cafile=files.cafile, client_cert=files.client_cert, client_key=files.client_key
    )

    async def main() -> None:
        stream = await aio.implicit(backend, server, "localhost", options)
        try:
            await aio.round_trip(stream)
        finally:
            stream.close()

    aio.run(main())
    assert server.client_subjects == [blocking.CLIENT_COMMON_NAME]
