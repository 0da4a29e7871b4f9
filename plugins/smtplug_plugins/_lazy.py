"""Plugins that register cheaply and import their implementation when chosen.

A plugin module is imported when the first send builds the registry, so
whatever it imports at the top is paid by every send, even one that never
uses it: pyOpenSSL and cryptography, scramp, pure-sasl cost about 150 ms and
15 MB before a plain-text message. The built-in plugins whose implementation
needs such a package register a stand-in from here instead: it carries what
the core reads without using the plugin (its name; a SASL mechanism's
strength and whether it exposes the password) and imports the
implementation on the first call that needs it (a TLS backend's ``check``,
made only when that backend was asked for; a mechanism's ``supported``,
made only when authenticating). ``tests/test_plugins.py`` checks that each
stand-in says what its implementation says.
"""

from __future__ import annotations

import importlib
import socket
import threading
from typing import Any

from smtplug.interfaces import (
    SASLCredentials,
    SASLExchange,
    SASLMechanism,
    TLSBackend,
    TLSEngine,
    TLSOptions,
    TLSStream,
)

__all__ = ["LazyBackend", "LazyMechanism"]

_LOCK = threading.Lock()


def _load(module: str, attribute: str, key: str | None) -> Any:
    with _LOCK:  # one import, whichever thread asks first
        value = getattr(importlib.import_module(module), attribute)
    return value if key is None else value[key]


class LazyMechanism:
    """A SASL mechanism whose implementation is ``module.attribute[name]``."""

    __slots__ = ("_attribute", "_module", "_real", "exposes_password", "name", "strength")

    def __init__(
        self, name: str, strength: int, exposes_password: bool, *, module: str, attribute: str
    ) -> None:
        self.name = name
        self.strength = strength
        self.exposes_password = exposes_password
        self._module = module
        self._attribute = attribute
        self._real: SASLMechanism | None = None

    def implementation(self) -> SASLMechanism:
        real = self._real
        if real is None:
            real = self._real = _load(self._module, self._attribute, self.name)
        return real

    def supported(self, credentials: SASLCredentials) -> bool:
        return self.implementation().supported(credentials)

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        return self.implementation().start(credentials)

    def __repr__(self) -> str:
        return f"<SASL mechanism {self.name}>"


class LazyBackend:
    """A TLS backend whose implementation is ``module.attribute()``."""

    __slots__ = ("_attribute", "_module", "_real", "name")

    def __init__(self, name: str, *, module: str, attribute: str) -> None:
        self.name = name
        self._module = module
        self._attribute = attribute
        self._real: TLSBackend | None = None

    def implementation(self) -> TLSBackend:
        real = self._real
        if real is None:
            real = self._real = _load(self._module, self._attribute, None)()
        return real

    def check(self, options: TLSOptions) -> None:
        self.implementation().check(options)

    def wrap(
        self,
        sock: socket.socket,
        *,
        server_hostname: str,
        options: TLSOptions,
        timeout: float | None,
        session: object | None = None,
    ) -> TLSStream:
        return self.implementation().wrap(
            sock, server_hostname=server_hostname, options=options, timeout=timeout, session=session
        )

    def engine(
        self,
        *,
        server_hostname: str,
        options: TLSOptions,
        session: object | None = None,
    ) -> TLSEngine:
        # Spelt out, not left to __getattr__: isinstance(EngineTLSBackend)
        # looks attributes up statically (Python 3.12 and later).
        engine: TLSEngine = self.implementation().engine(  # type: ignore[attr-defined]
            server_hostname=server_hostname, options=options, session=session
        )
        return engine

    def __getattr__(self, name: str) -> Any:
        # Anything else a backend offers (its context builder, for tests).
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.implementation(), name)

    def __repr__(self) -> str:
        return f"<TLS backend {self.name}>"
