"""Every error smtplug raises while working.

All of them derive from :class:`SMTPError` and carry ``code`` (the SMTP reply
code, or a Tcllib-style pseudo code for local failures: 400 for a lost
connection or a timeout, as Tcllib reports them, 501 for input smtplug refuses)
and ``diagnostic`` (text, with control characters escaped).

Python's own ``TypeError`` for an unknown keyword argument is not wrapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtplug.protocol.replies import Reply

__all__ = [
    "AuthenticationError",
    "ConnectError",
    "ConnectionLostError",
    "DeadlineExceededError",
    "DeliveryUnknownError",
    "InvalidInputError",
    "MessageTooLargeError",
    "PluginError",
    "ProtocolError",
    "ResponseError",
    "SMTPError",
    "ServerFailure",
    "TLSError",
]


class SMTPError(Exception):
    """Base class: ``code`` (int) and ``diagnostic`` (str)."""

    default_code = 400

    #: The redacted transcript lines of the send that raised this error, when
    #: its client was made with ``transcript=True``; otherwise None.
    transcript: tuple[str, ...] | None = None

    def __init__(self, diagnostic: str, code: int | None = None) -> None:
        self.code: int = self.default_code if code is None else code
        self.diagnostic: str = diagnostic
        super().__init__(f"{self.code} {diagnostic}")

    def __repr__(self) -> str:
        # Short: the code and the text, never the transcript.
        return f"{type(self).__name__}({self.code}, {self.diagnostic!r})"

    @property
    def transient(self) -> bool:
        """True when sending again later may work and cannot deliver twice:
        a temporary failure (4xx) before the server could have the message.

        Safe to drive a retry loop with. False for a permanent failure (5xx),
        for :class:`DeliveryUnknownError` (see :attr:`may_have_been_delivered`)
        and for TLS refusals that trying again cannot fix (a certificate or
        host name that fails, a TLS policy that forbids going on).
        """
        return 400 <= self.code < 500 and not self.may_have_been_delivered

    @property
    def permanent(self) -> bool:
        """True for a permanent failure (5xx): the same request will fail again."""
        return 500 <= self.code < 600

    @property
    def may_have_been_delivered(self) -> bool:
        """True when the server may have the message although the send failed
        (:class:`DeliveryUnknownError`): sending it again may deliver it twice."""
        return False


class InvalidInputError(SMTPError, ValueError):
    """Bad options, malformed addresses, CR/LF in a header or address.

    Raised before any connection is opened, and by the command encoders before
    a byte of the offending command is written.
    """

    default_code = 501


class UnknownOptionError(InvalidInputError, TypeError):
    """An option name that no call takes (a TypeError too, as Python raises
    for an unknown keyword)."""


class MessageTooLargeError(SMTPError):
    """The message is larger than the server's ``SIZE`` limit (RFC 1870):
    refused by smtplug before MAIL (or, for a stream of unknown size, before
    its end was sent), so the server never has it. Permanent for that server."""

    default_code = 552


class PluginError(SMTPError):
    """A plugin is missing, blocked, misspelt a hook or registered a name twice."""

    default_code = 500


class ProtocolError(SMTPError):
    """The server broke the protocol: malformed reply, limits exceeded,
    unsolicited bytes."""

    default_code = 500


class UnsolicitedReplyError(ProtocolError):
    """(Internal.) A complete reply the server sent before a write that
    expects none: a protocol violation, except before the octets of a
    message, where it is the server refusing the message (the session reads
    :attr:`reply` as its answer)."""

    def __init__(self, diagnostic: str, reply: Reply) -> None:
        super().__init__(diagnostic)
        self.reply = reply


class ConnectionLostError(SMTPError):
    """The connection closed, failed or a read timed out before the final "."
    was sent: the message was not delivered.

    ``replies_pending`` is True when a write failed but the server had sent
    replies that are not read yet (typically a refusal, after which it
    closed): the session reads them and reports what the server said rather
    than the lost connection.
    """

    default_code = 400

    def __init__(
        self,
        diagnostic: str,
        code: int | None = None,
        *,
        timed_out: bool = False,
        replies_pending: bool = False,
    ):
        super().__init__(diagnostic, code)
        self.timed_out = timed_out
        self.replies_pending = replies_pending


class DeadlineExceededError(ConnectionLostError):
    """The ``deadline=`` of the whole send (all its attempts) ran out before
    the message's end was sent: the message was not delivered, and
    :attr:`~SMTPError.transient` is True (a later send may work). Once the end
    was sent, a deadline that runs out is a :class:`DeliveryUnknownError`, as
    any wait that runs out there is. The error it cut short is its
    ``__cause__``.
    """

    def __init__(self, diagnostic: str, code: int | None = None) -> None:
        super().__init__(diagnostic, code, timed_out=True)


class ResponseError(SMTPError):
    """The server answered a command with a reply that means failure.

    ``command`` is the command (redacted where it carries secrets) and
    ``reply`` the server's whole reply text. ``refused`` lists the
    recipients refused, ``(address, code, diagnostic)``, when a server that
    answers per recipient (LMTP) refused the message for every one of them.
    """

    def __init__(
        self,
        diagnostic: str,
        code: int | None = None,
        *,
        command: str = "",
        enhanced: str | None = None,
        refused: Sequence[tuple[str, int, str]] = (),
    ) -> None:
        super().__init__(diagnostic, code)
        self.command = command
        self.enhanced = enhanced
        self.refused: Sequence[tuple[str, int, str]] = list(refused)


class AuthenticationError(SMTPError):
    """Authentication failed, or could not be attempted safely.

    ``server_unverified`` is True when the server accepted us (235) but failed
    the mechanism's proof of its own identity (SCRAM's server signature,
    DIGEST-MD5's rspauth): it does not know the password, so something is
    impersonating it, and no other mechanism is tried on that connection.
    """

    default_code = 535

    def __init__(
        self, diagnostic: str, code: int | None = None, *, server_unverified: bool = False
    ) -> None:
        super().__init__(diagnostic, code)
        self.server_unverified = server_unverified


class TLSError(SMTPError):
    """TLS could not be set up, or the server attacked the TLS upgrade.

    ``certificate`` is True when the server's certificate chain or host name
    failed verification; ``attack`` when the server (or someone on the path)
    attacked the upgrade, e.g. by injecting replies before the handshake;
    ``policy`` when the TLS policy refused to go on without TLS. No policy
    downgrades an attack to plain text. None of those three is
    :attr:`transient`: trying again cannot fix them.
    """

    default_code = 454

    def __init__(
        self,
        diagnostic: str,
        code: int | None = None,
        *,
        certificate: bool = False,
        attack: bool = False,
        policy: bool = False,
    ) -> None:
        super().__init__(diagnostic, code)
        self.certificate = certificate
        self.attack = attack
        self.policy = policy

    @property
    def transient(self) -> bool:
        return super().transient and not (self.certificate or self.attack or self.policy)


class DeliveryUnknownError(SMTPError):
    """The connection was lost (or the wait ran out) after the final "." was
    sent and before the server's reply: the server may or may not have taken
    the message. Sending again may deliver it twice.

    Not :attr:`~SMTPError.transient` (although its code is 400): a retry loop
    must not resend it blindly; :attr:`may_have_been_delivered` is True.

    From a server that answers per recipient (LMTP) some answers may have
    come before the loss: ``delivered`` names the recipients that got a
    positive one, ``refused`` those refused (at RCPT or after the end,
    ``(address, code, diagnostic)``), ``unknown`` those whose delivery is
    unknown (empty for SMTP: the delivery of the whole message is unknown).
    """

    default_code = 400

    def __init__(
        self,
        diagnostic: str,
        code: int | None = None,
        *,
        delivered: Sequence[str] = (),
        refused: Sequence[tuple[str, int, str]] = (),
        unknown: Sequence[str] = (),
    ) -> None:
        super().__init__(diagnostic, code)
        self.delivered = tuple(delivered)
        self.refused: Sequence[tuple[str, int, str]] = list(refused)
        self.unknown = tuple(unknown)

    @property
    def may_have_been_delivered(self) -> bool:
        return True


class ServerFailure:
    """Why one server of ``servers`` was given up, for :class:`ConnectError`."""

    __slots__ = ("error", "port", "server")

    def __init__(self, server: str, port: int, error: SMTPError) -> None:
        self.server = server
        self.port = port
        self.error = error

    def __repr__(self) -> str:
        return f"ServerFailure({self.server!r}, {self.port}, {self.error!r})"

    def __str__(self) -> str:
        return f"{self.server}:{self.port}: {self.error.code} {self.error.diagnostic}"


class ConnectError(SMTPError):
    """A server could not be used: the connection was refused or failed, or
    the greeting or EHLO/HELO was not accepted.

    Raised by a transport for one server; raised by :func:`smtplug.sendmessage`
    once every server failed, with ``failures`` saying why, server by server.
    """

    def __init__(
        self,
        diagnostic: str,
        code: int | None = None,
        *,
        failures: Sequence[ServerFailure] = (),
    ) -> None:
        super().__init__(diagnostic, code)
        self.failures: tuple[ServerFailure, ...] = tuple(failures)

    @property
    def transient(self) -> bool:
        """With ``failures``: True when trying again may reach a server, i.e.
        when any server failed transiently; otherwise by the code."""
        if self.failures:
            return any(failure.error.transient for failure in self.failures)
        return super().transient

    @property
    def permanent(self) -> bool:
        """With ``failures``: True when every server failed permanently."""
        if self.failures:
            return all(failure.error.permanent for failure in self.failures)
        return super().permanent

    @classmethod
    def from_failures(cls, failures: Sequence[ServerFailure]) -> ConnectError:
        """The error for "every server failed", naming each and its failure."""
        if not failures:
            return cls("no server to try", 400)
        text = "no server could be used: " + "; ".join(str(f) for f in failures)
        return cls(text, failures[-1].error.code, failures=failures)
