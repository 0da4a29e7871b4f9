"""LOGIN (draft-murchison-sasl-login): username and password, prompt by prompt.

LOGIN is not in pure-sasl, and it is simple enough to need no library. The
client sends no initial response (``AUTH LOGIN``); the server then sends two
334 challenges whose (base64-decoded) text is a prompt, in practice
``Username:`` and ``Password:``, and the client answers each with the username
and the password in UTF-8.

The prompts are answered by what they mean, not by their position: the text
is folded to lower-case letters, and one naming a password (``password``,
``passwort``, ``mot de passe`` ...) but no user gets the password; one naming
a user (``User Name``, ``login``, ``Benutzername`` ...) but no password gets
the username. An empty or unrecognised prompt gets the username if it has not
been sent yet and the password after that (an empty first challenge thus
means "username"). The password is never sent in answer to a prompt that
names the user, nor twice; a third challenge fails the exchange.

LOGIN cannot carry an authorization identity, so it is not offered when one
is given.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplug.errors import AuthenticationError
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import SASLCredentials, SASLExchange, SASLMechanism

__all__ = ["LoginSASL"]

_USER_WORDS = ("user", "login", "name", "benutzer", "utilisateur", "usuario")
_PASSWORD_WORDS = ("pass", "kennwort", "contrase", "senha")


def _meaning(prompt: bytes) -> str:
    """``"username"``, ``"password"`` or ``""`` (empty, unknown or ambiguous)."""
    text = "".join(c for c in prompt.decode("utf-8", "replace").lower() if c.isalpha())
    user = any(w in text for w in _USER_WORDS)
    password = any(w in text for w in _PASSWORD_WORDS)
    if password and not user:
        return "password"
    if user and not password:
        return "username"
    return ""


class _LoginExchange:
    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password: str | None = password
        self._sent_username = False
        self._steps = 0

    def __repr__(self) -> str:
        return (
            f"<LOGIN exchange for {self._username!r}, "
            f"password {'pending' if self._password is not None else 'sent'}>"
        )

    def initial_response(self) -> None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        self._steps += 1
        if self._steps > 2:
            raise AuthenticationError("LOGIN: unexpected third challenge from the server")
        meaning = _meaning(challenge)
        if meaning == "":
            meaning = "password" if self._sent_username else "username"
        if meaning == "username":
            self._sent_username = True
            return self._username.encode("utf-8")
        if self._password is None:
            raise AuthenticationError("LOGIN: the server asked for the password twice")
        password, self._password = self._password, None
        return password.encode("utf-8")

    def verify(self) -> None:
        return None


class LoginSASL:
    """LOGIN: the username and the password in answer to two prompts."""

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
