"""LOGIN (draft-murchison-sasl-login): username and password, in that order.

LOGIN is not in pure-sasl, and it is simple enough to need no library. The
client sends no initial response (``AUTH LOGIN``); the server then sends two
334 challenges, and the client answers the first with the username and the
second with the password, in UTF-8.

The challenges carry a prompt (in practice ``Username:`` and ``Password:``),
but the answers go by position, never by what the prompt says. In
draft-murchison-sasl-login the prompts are informational: the client sends
the user name in answer to the first challenge and the password in answer to
the second. A server still reads the first answer as the
user name whatever it printed, so answering by the prompt's meaning sends the
password where the user name belongs to a server that prompts ``Password:``
first, and servers commonly log a failed user name in the clear. Prompts that
are empty, translated or garbage need no guessing either. A third challenge
is not part of the mechanism: the exchange fails, and the session cancels it
with ``*``.

LOGIN cannot carry an authorization identity, so it is not offered when one
is given.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplug.errors import AuthenticationError
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import SASLCredentials, SASLExchange, SASLMechanism

__all__ = ["LoginSASL"]


class _LoginExchange:
    def __init__(self, username: str, password: str) -> None:
        self._answers: list[bytes] = [username.encode("utf-8"), password.encode("utf-8")]
        self._username = username

    def __repr__(self) -> str:
        return f"<LOGIN exchange for {self._username!r}, {len(self._answers)} answers pending>"

    def initial_response(self) -> None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        # The prompt text (``challenge``) is informational only: answers go in order.
        if not self._answers:
            raise AuthenticationError("LOGIN: unexpected third challenge from the server")
        return self._answers.pop(0)

    def verify(self) -> None:
        return None


class LoginSASL:
    """LOGIN: the username, then the password, in answer to two challenges."""

    name = "LOGIN"
    strength = 20
    exposes_password = True

    def supported(self, credentials: SASLCredentials) -> bool:
        return credentials.password is not None and credentials.authzid is None

    def start(self, credentials: SASLCredentials) -> SASLExchange:
        if credentials.password is None:
            raise AuthenticationError("LOGIN: no password given")
        return _LoginExchange(credentials.username, credentials.password)

    def __repr__(self) -> str:
        return "<SASL mechanism LOGIN>"


@hookimpl
def smtplug_register_sasl_mechanisms() -> Sequence[SASLMechanism]:
    return [LoginSASL()]
