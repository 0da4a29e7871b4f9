"""One SMTP session's logic, written once and without I/O.

Theory of operation. Each step of a session (greeting, EHLO/HELO, QUED, one
mail transaction, QUIT) is a generator. It *yields* what it needs done, a
:class:`Send` (bytes to write) or a :class:`Receive` (read one reply, with a
deadline), and is *sent* back the result: ``None`` for a write, the parsed
:class:`~smtplug.protocol.Reply` for a read. A driver (the sync one in
:mod:`smtplug.driver` now, an asyncio one later) runs the generator against a
real stream. I/O failures are thrown *into* the generator at the yield that
caused them, so the session decides what they mean: a connection lost while
waiting for the reply to the final "." becomes
:class:`~smtplug.errors.DeliveryUnknownError`, anywhere else
:class:`~smtplug.errors.ConnectionLostError`.

Success codes are checked exactly per command (RFC 5321 4.3.2): greeting 220,
EHLO/HELO 250, MAIL 250, RCPT 250/251, DATA 354, end of data 250.
A 421 at any step means the server is closing: the session stops there,
without RSET or QUIT.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from smtplug.errors import (
    AuthenticationError,
    ConnectionLostError,
    DeliveryUnknownError,
    ResponseError,
    SMTPError,
)
from smtplug.interfaces import SASLExchange
from smtplug.protocol import Capabilities, Reply, commands
from smtplug.protocol.data import DataEncoder

__all__ = [
    "Receive",
    "Send",
    "Timeouts",
    "TransactionOutcome",
    "greet",
    "hello",
    "queue",
    "quit",
    "reset",
    "transaction",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data``; ``display`` is what observers are shown (secrets redacted)."""

    data: bytes
    display: str


@dataclass(frozen=True, slots=True)
class Receive:
    """Read one complete reply within ``timeout`` seconds (``None``: no limit)."""

    timeout: float | None
    command: str  # what the reply answers, for error messages


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Secure the connection with TLS now (after a 220 to STARTTLS).

    The driver refuses if any byte from the server is still unread (response
    injection), runs the handshake within ``timeout`` seconds and starts a
    fresh reply parser on the encrypted stream.
    """

    timeout: float | None


Action = Send | Receive | Upgrade


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long each read may wait, in seconds (Tcllib's waits by default).

    Tcllib waits 600 s for the greeting and for the reply to MAIL, 300 s for
    other commands, 600 s for RCPT (it asks for 3600 s and caps waits at
    600 s), and ``-maxsecs`` (120 s) for the reply to the final ".".
    """

    greeting: float | None = 600.0
    command: float | None = 300.0
    mail: float | None = 600.0
    rcpt: float | None = 600.0
    final: float | None = 120.0

    @classmethod
    def tcllib(cls, *, timeout: float | None, maxsecs: float | None) -> Timeouts:
        """Tcllib's waits, each replaced by ``timeout`` when given."""
        if timeout is None:
            return cls(final=maxsecs)
        return cls(timeout, timeout, timeout, timeout, maxsecs)


@dataclass(slots=True)
class TransactionOutcome:
    """What one mail transaction did."""

    refused: list[tuple[str, int, str]] = field(default_factory=list)
    accepted_recipients: list[str] = field(default_factory=list)
    delivered: bool = False
    reply: Reply | None = None


def _expect(reply: Reply, command: str, *codes: int) -> Reply:
    if reply.code not in codes:
        raise ResponseError(reply.diagnostic, reply.code, command=command, enhanced=reply.enhanced)
    return reply


def _command(line: bytes) -> Send:
    return Send(line, line[:-2].decode("utf-8", "backslashreplace"))


def greet(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """Read the greeting; anything but 220 (421 included) fails this server."""
    reply = yield Receive(timeouts.greeting, "the greeting")
    assert reply is not None
    return _expect(reply, "the greeting", 220)


def hello(client: str, timeouts: Timeouts) -> Generator[Action, Reply | None, Capabilities]:
    """EHLO, or HELO after a 5xx to EHLO (as Tcllib); anything else fails."""
    yield _command(commands.ehlo(client))
    reply = yield Receive(timeouts.command, "EHLO")
    assert reply is not None
    if reply.code == 250:
        return Capabilities.from_ehlo(reply)
    if not reply.is_permanent:
        raise ResponseError(reply.diagnostic, reply.code, command="EHLO", enhanced=reply.enhanced)
    yield _command(commands.helo(client))
    reply = yield Receive(timeouts.command, "HELO")
    assert reply is not None
    return Capabilities.from_helo(_expect(reply, "HELO", 250))


def starttls(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """STARTTLS; the caller reads the reply (220: go on with :func:`upgrade`;
    anything else is a refusal for the TLS policy to judge), except a 421."""
    yield _command(commands.starttls())
    reply = yield Receive(timeouts.command, "STARTTLS")
    assert reply is not None
    if reply.code == 421:
        _expect(reply, "STARTTLS", 220)
    return reply


def upgrade(timeouts: Timeouts) -> Generator[Action, Reply | None, None]:
    """The TLS handshake after a 220 to STARTTLS (RFC 3207).

    Every capability learnt before it is void: the caller sends EHLO again.
    """
    yield Upgrade(timeouts.command)


def queue(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """Tcllib's ``-queue``: QUED, whose answer is only reported, never fatal.

    Only a 421 (the server is closing) stops the session.
    """
    yield _command(commands.qued())
    reply = yield Receive(timeouts.command, "QUED")
    assert reply is not None
    if reply.code == 421:
        _expect(reply, "QUED", 250)
    return reply


def transaction(
    *,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    capabilities: Capabilities,
    atleastone: bool,
    timeouts: Timeouts,
) -> Generator[Action, Reply | None, TransactionOutcome]:
    """MAIL, RCPT for each recipient, then DATA or RSET, as Tcllib decides.

    The message is sent when at least one recipient was accepted and either
    none was refused or ``atleastone`` is true; otherwise the transaction is
    reset and the refusals returned. A failed MAIL, DATA or end of data raises
    :class:`ResponseError`.
    """
    params: list[str] = []
    if capabilities.size_limit is not None:
        params.append(f"SIZE={len(data)}")
    if capabilities.has("8BITMIME") and not data.isascii():
        params.append("BODY=8BITMIME")
    mail_line = commands.mail(sender, params)
    rcpt_lines = [commands.rcpt(address) for address in recipients]

    outcome = TransactionOutcome()
    yield _command(mail_line)
    reply = yield Receive(timeouts.mail, "MAIL")
    assert reply is not None
    _expect(reply, "MAIL", 250)

    for address, line in zip(recipients, rcpt_lines, strict=True):
        yield _command(line)
        reply = yield Receive(timeouts.rcpt, "RCPT")
        assert reply is not None
        if reply.code in (250, 251):
            outcome.accepted_recipients.append(address)
        elif reply.code == 421:
            _expect(reply, "RCPT", 250, 251)
        else:
            outcome.refused.append((address, reply.code, reply.diagnostic))

    if not outcome.accepted_recipients or (outcome.refused and not atleastone):
        yield from reset(timeouts)
        return outcome

    yield _command(commands.data())
    reply = yield Receive(timeouts.command, "DATA")
    assert reply is not None
    _expect(reply, "DATA", 354)

    encoder = DataEncoder()
    payload = encoder.encode(data) + encoder.finish()
    # Body and final "." in one write: no Nagle/delayed-ACK stall between them.
    yield Send(payload, f"<message: {len(data)} octets, {len(payload)} on the wire>")
    try:
        reply = yield Receive(timeouts.final, 'the final "."')
    except ConnectionLostError as exc:
        raise DeliveryUnknownError(
            'the connection was lost after the final "." and before the server\'s reply: '
            f"the message may or may not have been delivered ({exc.diagnostic})"
        ) from exc
    assert reply is not None
    _expect(reply, 'the final "."', 250, 251)
    outcome.delivered = True
    outcome.reply = reply
    return outcome


def reset(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """RSET. Its answer is not checked (Tcllib ignores it), but 421 is."""
    yield _command(commands.rset())
    reply = yield Receive(timeouts.command, "RSET")
    assert reply is not None
    if reply.code == 421:
        _expect(reply, "RSET", 250)
    return reply


def quit(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """QUIT; the caller ignores its failures (the work is done by then)."""
    yield _command(commands.quit())
    reply = yield Receive(timeouts.command, "QUIT")
    assert reply is not None
    return reply


def authenticate(
    mechanism: str,
    exchange: SASLExchange,
    timeouts: Timeouts,
) -> Generator[Action, Reply | None, Reply]:
    """One AUTH exchange (RFC 4954) with one mechanism; secrets never displayed.

    Returns the 235 reply. A refusal raises :class:`AuthenticationError` with
    the server's code; a mechanism's own failure (a bad challenge, a server
    signature that does not verify) cancels the exchange with ``*`` first.
    A 421 raises :class:`ResponseError` (the server is closing).
    """
    try:
        initial = exchange.initial_response()
    except Exception as exc:
        raise _mechanism_failed(mechanism, exc) from exc
    display = f"AUTH {mechanism}" + ("" if initial is None else " <redacted>")
    yield Send(commands.auth(mechanism, initial), display)
    while True:
        reply = yield Receive(timeouts.command, f"AUTH {mechanism}")
        assert reply is not None
        if reply.code == 334:
            try:
                answer = exchange.respond(commands.decode_challenge(reply.text))
            except Exception as exc:
                # Abandon the exchange; the server answers 501 (RFC 4954).
                yield Send(commands.sasl_cancel(), "*")
                cancelled = yield Receive(timeouts.command, "*")
                assert cancelled is not None
                raise _mechanism_failed(mechanism, exc) from exc
            yield Send(commands.sasl_response(answer), "<redacted>")
        elif reply.code == 235:
            try:
                exchange.verify()
            except Exception as exc:
                failure = _mechanism_failed(mechanism, exc)
                raise AuthenticationError(
                    f"{failure.diagnostic} (the server accepted the login but did not prove "
                    "that it knows the password: it may be an impostor)",
                    failure.code,
                    server_unverified=True,
                ) from exc
            return reply
        elif reply.code == 421:
            _expect(reply, f"AUTH {mechanism}", 235)
        else:
            raise AuthenticationError(f"{mechanism}: {reply.code} {reply.diagnostic}", reply.code)


def _mechanism_failed(mechanism: str, exc: Exception) -> AuthenticationError:
    """The error for a mechanism's own failure; never the text of a foreign
    exception (it could hold a secret), only its type."""
    if isinstance(exc, SMTPError):
        text = exc.diagnostic
        if not text.startswith(mechanism):
            text = f"{mechanism}: {text}"
        unverified = isinstance(exc, AuthenticationError) and exc.server_unverified
        return AuthenticationError(text, exc.code, server_unverified=unverified)
    return AuthenticationError(f"{mechanism}: the mechanism failed ({type(exc).__name__})")
