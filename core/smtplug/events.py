"""The events of a session, typed: what observers and log records are told.

Every step of a session that is not a command or a reply is one of the
frozen dataclasses below. Observer plugins receive the object
(``smtplug_on_event(info, event)``); ``str(event)`` is the line of the
``-debug`` transcript (after ``"    ... "``), so an observer written for the
free-text events (``print(event)``, ``f"{event}"``) keeps working. Each has
a ``kind`` (``"connecting"``, ``"tls_established"`` ...) and data fields;
:meth:`Event.log_fields` is what the ``smtplug`` logger's records carry as
``smtplug_*`` attributes. No event holds a credential, a certificate or a
channel binding; ``repr`` stays short.

The kinds: :class:`Connecting`, :class:`ServerFailed`, :class:`Failover`,
:class:`Reconnecting`, :class:`Closed`, :class:`TLSEstablished`,
:class:`TLSVerificationOff`, :class:`TLSNotUsed`, :class:`TLSNotRetried`,
:class:`Authenticated`, :class:`AuthFailed`, :class:`AuthWeakerSkipped`,
:class:`TokenRefresh`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from smtplug.errors import SMTPError
from smtplug.interfaces import TLSFailureKind, TLSInfo

__all__ = [
    "KINDS",
    "AuthFailed",
    "AuthWeakerSkipped",
    "Authenticated",
    "Closed",
    "Connecting",
    "Event",
    "Failover",
    "Reconnecting",
    "ServerFailed",
    "TLSEstablished",
    "TLSNotRetried",
    "TLSNotUsed",
    "TLSVerificationOff",
    "TokenRefresh",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event: ``kind``, ``str()`` the transcript text."""

    kind: ClassVar[str] = "event"
    #: The phase an event of this kind always belongs to; None: whatever the
    #: session was doing when it happened.
    phase: ClassVar[str | None] = None

    def log_fields(self) -> dict[str, object]:
        """The event's data for a log record (each becomes ``smtplug_<name>``)."""
        return {}


@dataclass(frozen=True, slots=True)
class Connecting(Event):
    """A connection to ``server``:``port`` is being opened."""

    kind: ClassVar[str] = "connecting"
    phase: ClassVar[str | None] = "connect"
    server: str
    port: int

    def __str__(self) -> str:
        return f"Trying {self.server}:{self.port}..."


def _error_fields(error: SMTPError) -> dict[str, object]:
    return {
        "error": type(error).__name__,
        "code": error.code,
        "diagnostic": error.diagnostic,
    }


@dataclass(frozen=True, slots=True)
class ServerFailed(Event):
    """A server could not be used (connection, greeting, EHLO, TLS, a 421 at
    AUTH ...): ``error`` says why; the next server is tried."""

    kind: ClassVar[str] = "server_failed"
    server: str
    port: int
    error: SMTPError

    def __str__(self) -> str:
        return f"server failed: {self.error}"

    def log_fields(self) -> dict[str, object]:
        return _error_fields(self.error)


@dataclass(frozen=True, slots=True)
class Failover(Event):
    """The server closed the session (421) before the message's end: nothing
    was delivered; the message goes to the next server."""

    kind: ClassVar[str] = "failover"
    server: str
    port: int
    error: SMTPError

    def __str__(self) -> str:
        return f"server failed: {self.error}; trying the next server"

    def log_fields(self) -> dict[str, object]:
        return _error_fields(self.error)


@dataclass(frozen=True, slots=True)
class Reconnecting(Event):
    """A kept session turned out to be gone: another is opened.

    ``diagnostic`` is what showed it at MAIL (None when a probe before the
    transaction did); ``pooled``: a pool noticed it before handing the
    session out.
    """

    kind: ClassVar[str] = "reconnecting"
    diagnostic: str | None = None
    pooled: bool = False

    def __str__(self) -> str:
        if self.pooled:
            return "the kept session is gone (noticed before reuse); opening another"
        if self.diagnostic is not None:
            return f"the kept session is gone ({self.diagnostic}); reconnecting"
        return "the kept session is gone; reconnecting"

    def log_fields(self) -> dict[str, object]:
        return {"diagnostic": self.diagnostic, "pooled": self.pooled}


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The connection was closed."""

    kind: ClassVar[str] = "closed"
    phase: ClassVar[str | None] = "close"

    def __str__(self) -> str:
        return "closed"


@dataclass(frozen=True, slots=True)
class TLSEstablished(Event):
    """TLS is up (after STARTTLS, or implicit TLS): what it negotiated."""

    kind: ClassVar[str] = "tls_established"
    tls: TLSInfo

    def __str__(self) -> str:
        tls = self.tls
        checked = "certificate verified" if tls.verified else "certificate NOT verified"
        return f"TLS established: {tls.version} {tls.cipher} ({tls.backend}, {checked})"

    def log_fields(self) -> dict[str, object]:
        tls = self.tls
        return {
            "tls_version": tls.version,
            "tls_cipher": tls.cipher,
            "tls_backend": tls.backend,
            "tls_verified": tls.verified,
            "tls_resumed": tls.resumed,
        }


_VERIFICATION_OFF = (
    "tls_verify=False: the server's certificate and host name are not "
    "checked; anyone on the path can read and change this session"
)


@dataclass(frozen=True, slots=True)
class TLSVerificationOff(Event):
    """TLS is up but, with ``tls_verify=False``, nothing about the server was checked."""

    kind: ClassVar[str] = "tls_verification_off"

    #: The warning's text (also logged at WARNING level).
    text: ClassVar[str] = _VERIFICATION_OFF

    def __str__(self) -> str:
        return f"WARNING: {self.text}"


@dataclass(frozen=True, slots=True)
class TLSNotUsed(Event):
    """TLS could not be had (``reason``: ``"absent"``, ``"unavailable"``,
    ``"refused"``, ``"handshake"``, ``"certificate"``) and the TLS ``policy``
    decided: ``"insecure"`` goes on in plain text (:attr:`downgraded`),
    ``"secure"`` gives the server up."""

    kind: ClassVar[str] = "tls_not_used"
    reason: TLSFailureKind
    code: int
    diagnostic: str
    policy: str
    decision: str

    @property
    def downgraded(self) -> bool:
        """True when the session goes on without TLS."""
        return self.decision == "insecure"

    def __str__(self) -> str:
        return f"TLS {self.reason}: {self.diagnostic}; policy {self.policy} says {self.decision}"

    def log_fields(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "code": self.code,
            "diagnostic": self.diagnostic,
            "policy": self.policy,
            "decision": self.decision,
        }


@dataclass(frozen=True, slots=True)
class TLSNotRetried(Event):
    """A fresh plain connection after a failed handshake the policy let pass:
    STARTTLS is not tried on it again."""

    kind: ClassVar[str] = "tls_not_retried"

    def __str__(self) -> str:
        return "STARTTLS not tried again: the policy chose plain text"


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    """The server accepted the login with ``mechanism``."""

    kind: ClassVar[str] = "authenticated"
    phase: ClassVar[str | None] = "auth"
    mechanism: str

    def __str__(self) -> str:
        return f"authenticated with {self.mechanism}"

    def log_fields(self) -> dict[str, object]:
        return {"mechanism": self.mechanism}


@dataclass(frozen=True, slots=True)
class AuthFailed(Event):
    """The login with ``mechanism`` was refused or failed (another may be tried)."""

    kind: ClassVar[str] = "auth_failed"
    phase: ClassVar[str | None] = "auth"
    mechanism: str

    def __str__(self) -> str:
        return f"authentication with {self.mechanism} failed"

    def log_fields(self) -> dict[str, object]:
        return {"mechanism": self.mechanism}


@dataclass(frozen=True, slots=True)
class AuthWeakerSkipped(Event):
    """After a failure on an unencrypted connection, the weaker ``mechanism``
    (and any weaker still) is not tried."""

    kind: ClassVar[str] = "auth_weaker_skipped"
    phase: ClassVar[str | None] = "auth"
    mechanism: str

    def __str__(self) -> str:
        return (
            f"not trying the weaker {self.mechanism} after a failure on an unencrypted connection"
        )

    def log_fields(self) -> dict[str, object]:
        return {"mechanism": self.mechanism}


@dataclass(frozen=True, slots=True)
class TokenRefresh(Event):
    """``mechanism`` refused the OAuth token: a new one is asked of the token
    provider and tried once (the token itself is never in the event)."""

    kind: ClassVar[str] = "token_refresh"
    phase: ClassVar[str | None] = "auth"
    mechanism: str

    def __str__(self) -> str:
        return (
            f"{self.mechanism} refused the OAuth token; trying once more "
            "with a new one from the token provider"
        )

    def log_fields(self) -> dict[str, object]:
        return {"mechanism": self.mechanism}


#: Every event class by its kind.
KINDS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        Connecting,
        ServerFailed,
        Failover,
        Reconnecting,
        Closed,
        TLSEstablished,
        TLSVerificationOff,
        TLSNotUsed,
        TLSNotRetried,
        Authenticated,
        AuthFailed,
        AuthWeakerSkipped,
        TokenRefresh,
    )
}
