"""X-TEST: a toy SASL mechanism, to show how a third party adds one to smtplug.

The client sends ``username:password-reversed`` as its initial response. It
protects nothing; its only purpose is the plugin machinery.
"""

from __future__ import annotations

from collections.abc import Sequence

import smtplug
from smtplug.interfaces import SASLCredentials, SASLExchange, SASLMechanism


class _Exchange:
    def __init__(self, credentials: SASLCredentials) -> None:
        self._response = f"{credentials.username}:{(credentials.password or '')[::-1]}"

    def initial_response(self) -> bytes | None:
        return self._response.encode()

    def respond(self, challenge: bytes) -> bytes:
        raise smtplug.AuthenticationError("X-TEST expects no challenge")

    def verify(self) -> None:
        pass


class XTest:
    name = "X-TEST"
    strength = 1000  # strongest of all, so negotiation picks it when offered
    exposes_password = True  # a listener can undo the reversal

    def supported(self, credentials: SASLCredentials) -> bool:
        return credentials.password is not None

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        return _Exchange(credentials)


@smtplug.hookimpl
def smtplug_register_sasl_mechanisms() -> Sequence[SASLMechanism]:
    return [XTest()]
