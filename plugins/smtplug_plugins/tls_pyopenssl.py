"""The ``pyopenssl`` TLS backend, registered without importing pyOpenSSL.

The implementation (pyOpenSSL plus service_identity, host names checked
during the handshake) is :mod:`smtplug_plugins._pyopenssl`; it is imported
when the backend is first asked for (``tls_backend="pyopenssl"``), not by
every send (see :mod:`smtplug_plugins._lazy`).
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplug.hookspecs import hookimpl
from smtplug.interfaces import TLSBackend
from smtplug_plugins._lazy import LazyBackend

BACKEND = LazyBackend(
    "pyopenssl", module="smtplug_plugins._pyopenssl", attribute="PyOpenSSLBackend"
)


@hookimpl
def smtplug_register_tls_backends() -> Sequence[TLSBackend]:
    return [BACKEND]
