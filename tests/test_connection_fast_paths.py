"""The per-connection shortcuts take exactly the decisions of the paths they skip.

* The TLS file check loads no SSL context when there is no file to load (the
  default ``usetls=True`` used to build, and throw away, one per call); a
  file that cannot be loaded still fails before any connection, with both
  backends.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

import smtplug
import smtplug_plugins._tls as tls_helpers
from mockstream import MockServer

BACKENDS = ["stdlib"]
try:  # (the pyopenssl backend is an optional extra)
    import OpenSSL  # noqa: F401

    BACKENDS.append("pyopenssl")
except ImportError:  # pragma: no cover
    pass


def _mock_options(server: MockServer, **extra: Any) -> dict[str, Any]:
    return {
        "servers": ["127.0.0.1"],
        "client": "localhost",
        "plugins": [server.plugin()],
        "block_plugins": ["plain"],
        **extra,
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_tls_file_no_probe_context(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    made: list[object] = []
    real = ssl.SSLContext

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(tls_helpers.ssl, "SSLContext", counting)
    tls_helpers.check_tls_files(smtplug.interfaces.TLSOptions())
    smtplug.Client(servers=["127.0.0.1"], usetls=True, tls_backend=backend)
    assert made == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", ["cafile", "client_cert"])
def test_unloadable_tls_file_fails_before_connecting(
    tmp_path: Path, backend: str, option: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    server = MockServer()
    with pytest.raises(smtplug.InvalidInputError, match="cannot be loaded"):
        smtplug.sendmessage(
            b"Subject: x\r\n\r\nbody\r\n",
            originator="a@example.org",
            recipients=["b@example.org"],
            tls_backend=backend,
            **{option: str(junk)},
            **_mock_options(server),
        )
    assert server.sessions == []
