"""One SMTP session's logic, written once and without I/O.

Theory of operation. Each step of a session (greeting, EHLO/HELO, QUED, one
mail transaction, QUIT) is a generator. It *yields* what it needs done, a
:class:`Send` (bytes to write) or a :class:`Receive` (read one reply, with a
deadline), and is *sent* back the result: ``None`` for a write, the parsed
:class:`~smtplug.protocol.Reply` for a read. A driver (
:mod:`smtplug.drivers`: blocking or asyncio) runs the generator against a
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

import contextlib
import dataclasses
import enum
import functools
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from smtplug import source
from smtplug.actions import POLL, Action, Receive, Send
from smtplug.envelope import PreparedMessage
from smtplug.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    DeliveryUnknownError,
    InvalidInputError,
    MessageTooLargeError,
    ProtocolError,
    ResponseError,
    SMTPError,
    UnsolicitedReplyError,
)
from smtplug.interfaces import SMTP, Dialect
from smtplug.protocol import Capabilities, Reply, commands
from smtplug.protocol.data import BodyEncoder, DataEncoder, LineCheck
from smtplug.protocol.dsn import MailParameters

# (The actions these steps yield are smtplug.actions'.)
__all__ = [
    "Stage",
    "Timeouts",
    "TransactionOutcome",
    "greet",
    "hello",
    "queue",
    "quit",
    "reset",
    "transaction",
]


#: The phases a wait belongs to, as :class:`Timeouts` names them.
PHASES = ("connect", "greeting", "command", "mail", "rcpt", "data", "block", "final")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long each wait may last, in seconds; every wait has a limit.

    The defaults are RFC 5321 section 4.5.3.2's: 5 minutes for the greeting
    and the replies to MAIL and RCPT, 2 minutes for the reply to DATA, 3
    minutes for each block of message data to be taken, 10 minutes for the
    reply to the final "." (the server may be scanning the message: giving up
    early makes the delivery unknown). The RFC names no wait for other
    commands (EHLO, STARTTLS and its handshake, AUTH, RSET, QUIT), which get
    5 minutes, nor for connecting: 60 seconds lets the next server be tried
    within a minute when a host never answers.
    """

    connect: float = 60.0
    greeting: float = 300.0
    command: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    data: float = 120.0
    """The reply to DATA, and to each BDAT chunk but the last."""
    block: float = 180.0
    """Each write of message data: how long the server may take no byte of it."""
    final: float = 600.0
    """The reply to the final "." (or to ``BDAT ... LAST``)."""


class Stage(enum.Enum):
    """How far a mail transaction got; what a failure at that point means.

    ``MAIL`` until the server accepted MAIL (a failure there: the kept
    session may be stale, reconnecting is safe); ``RCPT`` while recipients
    are given; ``DATA`` once the message started going (nothing delivered
    yet, but the body may not be restartable); ``SENT`` once the end of the
    message is on the wire: from then on a lost connection means the
    delivery is unknown. The transaction only moves forward, except back to
    ``MAIL`` when a pipelined MAIL turns out refused.
    """

    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    SENT = "sent"


@dataclass(slots=True)
class TransactionOutcome:
    """What one mail transaction did, and how far it got (:class:`Stage`)."""

    refused: list[tuple[str, int, str]] = field(default_factory=list)
    accepted_recipients: list[str] = field(default_factory=list)
    delivered: bool = False
    reply: Reply | None = None
    stage: Stage = Stage.MAIL
    quit_sent: bool = False
    session_over: bool = False
    """The session cannot carry another transaction (QUIT sent, or the server
    closed it after the outcome was known)."""


def _expect(reply: Reply, command: str, *codes: int) -> Reply:
    if reply.code not in codes:
        raise ResponseError(reply.diagnostic, reply.code, command=command, enhanced=reply.enhanced)
    return reply


def _command(line: bytes, timeouts: Timeouts) -> Send:
    return Send(line, line[:-2].decode("utf-8", "backslashreplace"), timeouts.command)


def _send(action: Send) -> Generator[Action, Reply | None, bool]:
    """Write; False when the write failed but the server's replies wait unread
    (a refusal or a 421, after which it closed): the caller stops writing and
    reads them, so that what the server said is reported, not the broken pipe."""
    try:
        yield action
    except ConnectionLostError as exc:
        if not exc.replies_pending:
            raise
        return False
    return True


def _send_end(
    action: Send, trailer: bytes, outcome: TransactionOutcome
) -> Generator[Action, Reply | None, bool]:
    """Write the bytes that end the message (and ``trailer``, a pipelined QUIT);
    from then on the outcome's stage is ``Stage.SENT``.

    A failed write did not hand its last octet to the network, so a message
    end that closes the write never reached the server; one followed by more
    (a pipelined QUIT, the next transaction's first flight) may have: its
    delivery is then unknown until a reply says otherwise. A deadline that
    ran out before the write (:func:`smtplug.retry.capped` throws its error
    instead of making it) wrote nothing: the message was not sent.
    """
    try:
        # (_send, inline: this runs for every message.)
        try:
            yield action
        except ConnectionLostError as exc:
            if not exc.replies_pending:
                raise
            written = False
        else:
            written = True
    except ConnectionLostError as exc:
        if trailer and not isinstance(exc, DeadlineExceededError):
            outcome.stage = Stage.SENT
            _after_end(exc, "the end of the message", outcome)
        raise
    if written or trailer:
        outcome.stage = Stage.SENT
    return written


def _tolerant(line: bytes, what: str, timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """A command whose answer the caller judges; only 421 (closing) raises."""
    yield from _send(_command(line, timeouts))
    reply = yield Receive(timeouts.command, what)
    assert reply is not None
    if reply.code == 421:
        raise ResponseError(reply.diagnostic, reply.code, command=what, enhanced=reply.enhanced)
    return reply


def greet(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """Read the greeting; anything but 220 (421 included) fails this server."""
    reply = yield Receive(timeouts.greeting, "the greeting")
    assert reply is not None
    return _expect(reply, "the greeting", 220)


def hello(
    client: str, timeouts: Timeouts, dialect: Dialect = SMTP
) -> Generator[Action, Reply | None, Capabilities]:
    """EHLO, or HELO after a 5xx to EHLO (as Tcllib); anything else fails.

    The verbs are the ``dialect``'s (LMTP: LHLO, and nothing after a 5xx)."""
    verb, fallback = dialect.hello, dialect.fallback_hello
    yield from _send(_hello(verb, client, timeouts.command))
    reply = yield _wait(timeouts.command, verb)
    assert reply is not None
    if reply.code == 250:
        return Capabilities.from_ehlo(reply)
    if fallback is None or not reply.is_permanent:
        raise ResponseError(reply.diagnostic, reply.code, command=verb, enhanced=reply.enhanced)
    yield from _send(_command(commands.hello(fallback, client), timeouts))
    reply = yield Receive(timeouts.command, fallback)
    assert reply is not None
    return Capabilities.from_helo(_expect(reply, fallback, 250))


@functools.lru_cache(maxsize=64)
def _hello(verb: str, client: str, timeout: float) -> Send:
    """The hello's action (checked and encoded once per name: actions are
    immutable; a name that fails its check raises each time)."""
    return Send(commands.hello(verb, client), f"{verb} {client}", timeout)


def queue(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """Tcllib's ``-queue``: QUED, whose answer is only reported, never fatal.

    Only a 421 (the server is closing) stops the session.
    """
    return (yield from _tolerant(commands.qued(), "QUED", timeouts))


#: Seconds the reply to QUIT is awaited at most (or the ``command`` wait, if
#: shorter). QUIT comes when the work is done: a server that never says
#: goodbye must not hold up the caller for the whole ``command`` wait.
QUIT_WAIT = 5.0

#: Commands per pipelined flight: replies to at most this many wait unread, so
#: neither side can fill its buffers and stall the other (RFC 2920 section 3.5).
BATCH = 100


@functools.lru_cache(maxsize=64)
def _wait(timeout: float | None, what: str) -> Receive:
    """The action for one kind of wait; actions are immutable, so each is made once."""
    return Receive(timeout, what)


def _quit_wait(timeouts: Timeouts) -> Receive:
    """The wait for the reply to QUIT: the command wait, at most QUIT_WAIT."""
    return _wait(min(timeouts.command, QUIT_WAIT), "QUIT")


def _after_end(exc: ConnectionLostError, what: str, outcome: TransactionOutcome) -> None:
    """Once the message's end is on the wire, a lost connection means the
    delivery is unknown: raise that instead (the caller re-raises otherwise)."""
    if outcome.stage is Stage.SENT:
        raise DeliveryUnknownError(
            f"the connection was lost after the end of the message was sent and before "
            f"the server's reply to {what}: the message may or may not have been "
            f"delivered ({exc.diagnostic})"
        ) from exc


def _receive(
    timeout: float | None, what: str, outcome: TransactionOutcome
) -> Generator[Action, Reply | None, Reply]:
    """Read one reply; once the message's end is on the wire, a lost
    connection means the delivery is unknown."""
    try:
        reply = yield _wait(timeout, what)
    except ConnectionLostError as exc:
        _after_end(exc, what, outcome)
        raise
    assert reply is not None
    return reply


def _display(payload: bytes) -> str:
    """What observers are shown for CRLF-terminated command lines: one per line."""
    return payload[:-2].decode("utf-8", "backslashreplace").replace("\r\n", "\n")


class _StreamGuard:
    """What a body not checked before sending must pass as it is sent: the
    line rules, and the server's SIZE limit when the size was not known."""

    __slots__ = ("limit", "lines", "octets")

    def __init__(self, lines: LineCheck | None, limit: int | None, octets: int) -> None:
        self.lines = lines
        self.limit = limit
        self.octets = octets

    def feed(self, piece: bytes) -> None:
        if self.lines is not None:
            self.lines.feed(piece)
        if self.limit is not None:
            self.octets += len(piece)
            if self.octets > self.limit:
                raise _too_large(f"more than {self.octets}", self.limit)


def _too_large(size: str, limit: int) -> MessageTooLargeError:
    return MessageTooLargeError(
        f"the message ({size} octets) is larger than the server's SIZE limit ({limit} "
        "octets, RFC 1870): not sent"
    )


#: A message shorter than half a chunk goes to the encoder in one piece
#: (False: never; for the tests that compare it with the chunked path).
_ONE_PIECE = True


def _pieces(message: PreparedMessage, check: _StreamGuard | None) -> Iterable[bytes]:
    """The message's octets in chunks, checked on the way when not checked before."""
    body = message.body
    if (
        _ONE_PIECE
        and check is None
        and body.size is not None
        and len(message.header) + body.size < source.CHUNK // 2
    ):
        # Checked before and small (no chunk boundary can fall inside it, even
        # with every line ending doubled): one piece, one pass of the encoder
        # (which gives the same octets for any split of its input). (A tuple:
        # no generator to run for the message that fits in one.)
        whole = body.whole
        return (message.header + (b"".join(body.chunks()) if whole is None else whole),)
    return _chunked(message, check)


def _chunked(message: PreparedMessage, check: _StreamGuard | None) -> Iterator[bytes]:
    yield message.header
    for chunk in message.body.chunks():
        piece = bytes(chunk)
        if check is not None:
            check.feed(piece)
        yield piece


def _data_body(
    message: PreparedMessage,
    timeouts: Timeouts,
    outcome: TransactionOutcome,
    trailer: bytes,
    progress: Callable[[int], None] | None,
    check: _StreamGuard | None,
    successor: Callable[[], bytes] | None = None,
) -> Generator[Action, Reply | None, None]:
    """The message after a 354: CRLF-normalised, dot-stuffed, chunk by chunk;
    the last chunk, the final "." and ``trailer`` (a pipelined QUIT) in one write.

    Without a trailer, ``successor()`` is asked just before that write for
    the first flight of the next transaction on this connection (see
    :func:`flight_ahead`; b"": none), which joins the write (RFC 2920 section
    3.1: message content may be the first "command" of a group)."""
    encoder = DataEncoder()
    previous = b""
    try:
        for piece in _pieces(message, check):
            out = encoder.encode(piece)
            if out and len(previous) >= source.CHUNK:
                _answered_early((yield POLL), outcome)
                if not (yield from _send(Send(previous, "", timeouts.block))):
                    return  # the server refused mid-message: the caller reads why
                previous = b""
                if progress is not None:
                    progress(encoder.bytes_in - len(piece))
            previous += out
        tail = previous + encoder.finish()
        display = f"<message: {encoder.bytes_in} octets>" + ("\nQUIT" if trailer else "")
        if encoder.bytes_in > source.CHUNK:  # a message written in one piece needs no look
            _answered_early((yield POLL), outcome)
        if successor is not None and not trailer:
            # (Its commands are told to observers when its transaction starts.)
            trailer = successor()
        end = Send(tail + trailer, display, timeouts.block)
        written = yield from _send_end(end, trailer, outcome)
    except UnsolicitedReplyError as exc:
        # A reply already there when octets of the message were to be written
        # (one that came with the 354, say): the server's early answer, as
        # one a POLL finds (nothing of this write went).
        _answered_early(exc.reply, outcome)
        raise
    if written and progress is not None:
        progress(encoder.bytes_in)


def _with_extras(
    message: PreparedMessage,
    params: list[str],
    extras: MailParameters,
    capabilities: Capabilities,
    utf8: bool,
) -> list[bytes]:
    """MAIL and RCPT lines with the caller's parameters, after checking the
    server offers what they need."""
    dsn = extras.dsn
    if dsn is not None and not capabilities.has("DSN"):
        if dsn.required:
            raise InvalidInputError(
                "delivery status notifications were asked for (dsn=) and the server does "
                "not offer DSN (RFC 3461): not sent; DSN(required=False) sends without them"
            )
        extras = dataclasses.replace(extras, dsn=None)
        dsn = None
    if extras.requiretls and not capabilities.has("REQUIRETLS"):
        raise InvalidInputError(
            "requiretls=True and the server does not offer REQUIRETLS (RFC 8689): not sent"
        )
    mail = [*params, *extras.mail]
    if dsn is not None:
        mail += dsn.mail()
    if extras.requiretls:
        mail.append("REQUIRETLS")
    lines = [commands.mail(message.sender, mail, smtputf8=utf8)]
    lines += [
        commands.rcpt(address, extras.for_rcpt(address), smtputf8=utf8)
        for address in message.recipients
    ]
    return lines


def _chunk_replies(
    count: int,
    last: bool,
    timeouts: Timeouts,
    outcome: TransactionOutcome,
    *,
    refused: Reply | None = None,
    per_recipient: bool = False,
) -> Generator[Action, Reply | None, Reply | None]:
    """The replies to ``count`` BDAT chunks (the last of them ``BDAT LAST``
    when ``last``); returns the last one. Every reply due is read before a
    refusal is raised (RFC 3030: one refused chunk fails the transaction):
    one left unread would answer the next command. A connection lost on the
    way still raises the refusal (the message was not taken)."""
    reply: Reply | None = None
    for number in range(count):
        final = last and number == count - 1
        what = "BDAT LAST" if final else "BDAT"
        if final and per_recipient and refused is None:
            reply, refusal = yield from _per_recipient(timeouts.final, what, outcome)
            if refusal is not None:
                raise refusal
            return reply
        try:
            reply = yield from _receive(timeouts.final if final else timeouts.data, what, outcome)
        except (ConnectionLostError, DeliveryUnknownError, ProtocolError):
            if refused is None:
                raise
            break
        if reply.code != 250 and refused is None:
            refused = reply
    if refused is not None:
        _expect(refused, "BDAT", 250)
    return reply


def _per_recipient(
    timeout: float | None, what: str, outcome: TransactionOutcome, *, first: Reply | None = None
) -> Generator[Action, Reply | None, tuple[Reply, ResponseError | None]]:
    """The replies to the end of the message from a server that answers per
    recipient (LMTP, RFC 2033 section 4.2): one for each recipient accepted
    at RCPT, in RCPT order (``first``: the first of them, already read).

    The recipients answered 2xx stay in ``outcome.accepted_recipients``; the
    others join ``outcome.refused``. Returns the reply to report (the first
    positive one) and None, or, when every recipient was refused, the first
    refusal and the :class:`ResponseError` to raise (a refused end, as from an
    SMTP server, with ``refused`` listing them). A 421 refuses its recipient
    and ends the session. The connection lost (or a reply broken) before
    every reply came: :class:`DeliveryUnknownError` naming the recipients
    delivered, refused and unknown.
    """
    recipients = list(outcome.accepted_recipients)
    if not recipients:  # (the server answers an end without recipients once)
        reply = first if first is not None else (yield from _receive(timeout, what, outcome))
        return reply, None
    delivered: list[str] = []
    refused: list[tuple[str, int, str]] = []
    positive: Reply | None = None
    refusal: Reply | None = None
    for index, address in enumerate(recipients):
        if index == 0 and first is not None:
            reply = first
        else:
            try:
                answer = yield _wait(timeout, f"{what} for <{address}>")
            except (ConnectionLostError, ProtocolError) as exc:
                raise _unknown(exc, what, outcome, delivered, refused, recipients[index:]) from exc
            assert answer is not None
            reply = answer
        if 200 <= reply.code < 300:
            delivered.append(address)
            positive = positive or reply
        else:
            refused.append((address, reply.code, reply.diagnostic))
            refusal = refusal or reply
        if reply.code == 421:
            outcome.session_over = True  # the server is closing: no more replies
            if index < len(recipients) - 1:
                lost = ConnectionLostError(f"the server is closing (421 {reply.diagnostic})")
                raise _unknown(lost, what, outcome, delivered, refused, recipients[index + 1 :])
    outcome.accepted_recipients = delivered
    outcome.refused.extend(refused)
    if positive is not None:
        return positive, None
    assert refusal is not None
    if len(refused) == 1:
        diagnostic = refusal.diagnostic
    else:
        diagnostic = "every recipient was refused after the end of the message: " + "; ".join(
            f"{address}: {code} {text}" for address, code, text in refused
        )
    error = ResponseError(
        diagnostic, refusal.code, command=what, enhanced=refusal.enhanced, refused=refused
    )
    return refusal, error


def _unknown(
    exc: SMTPError,
    what: str,
    outcome: TransactionOutcome,
    delivered: list[str],
    refused: list[tuple[str, int, str]],
    unknown: list[str],
) -> DeliveryUnknownError:
    """Replies per recipient missing after the end of the message: for those
    recipients the delivery is unknown."""
    known = []
    if delivered:
        known.append(f"delivered to {', '.join(delivered)}")
    if refused:
        known.append(f"refused for {', '.join(address for address, _, _ in refused)}")
    said = "; ".join(known) or "no recipient's reply came"
    return DeliveryUnknownError(
        f"the connection was lost after the end of the message was sent and before every "
        f"recipient's reply to {what} ({said}): the message may or may not have been "
        f"delivered to {', '.join(unknown)} ({exc.diagnostic})",
        delivered=delivered,
        refused=[*outcome.refused, *refused],
        unknown=unknown,
    )


def _answered_early(reply: Reply | None, outcome: TransactionOutcome) -> None:
    """A reply before the end of the DATA octets: the server refused the message
    while it came (RFC 5321 has it answer only the final "."). The rest is not
    sent, and never the final "." (the server might take the message cut short):
    the session is over, and the reply is the error."""
    if reply is None:
        return
    outcome.session_over = True
    if reply.code >= 400:
        raise ResponseError(
            reply.diagnostic, reply.code, command="the message data", enhanced=reply.enhanced
        )
    raise ProtocolError(f"reply before the end of the message: {reply}")


def _bdat_frames(
    message: PreparedMessage,
    timeouts: Timeouts,
    trailer: bytes,
    progress: Callable[[int], None] | None,
    check: _StreamGuard | None,
) -> Iterator[tuple[Send, bool]]:
    """``BDAT n`` frames (command and octets in one write), the last marked
    LAST and followed by ``trailer``; yields (frame, is_last). The caller marks
    the outcome "sent" once the last frame is written."""
    encoder = BodyEncoder()
    previous = b""
    for piece in _pieces(message, check):
        out = encoder.encode(piece)
        if out and len(previous) >= source.CHUNK:
            frame = commands.bdat(len(previous)) + previous
            yield Send(frame, f"BDAT {len(previous)}", timeouts.block), False
            previous = b""
            if progress is not None:
                progress(encoder.bytes_in - len(piece))
        previous += out
    last = previous + encoder.finish()
    line = commands.bdat(len(last), last=True)
    display = f"BDAT {len(last)} LAST <message: {encoder.bytes_in} octets>"
    display += "\nQUIT" if trailer else ""
    yield Send(line + last + trailer, display, timeouts.block), True
    if progress is not None:
        progress(encoder.bytes_in)


@dataclass(frozen=True, slots=True)
class _TransactionPlan:
    """What a transaction will send and how, decided before its first byte."""

    pipelining: bool
    chunking: bool
    check: _StreamGuard | None  # checks a stream's lines and size as it goes
    lines: Sequence[bytes]  # MAIL and the RCPTs, encoded
    trailer: bytes  # a QUIT pipelined behind the end of the message, or b""
    early: bool  # DATA (or BDAT) joins the MAIL/RCPT flight
    whole_in_flight: bool  # the whole message rides in that flight (one chunk)


#: The largest message that rides whole in the MAIL/RCPT flight (one chunk at
#: most: a larger one is several BDAT chunks, which wait for those replies).
#: benchmarks/flight_threshold.py measures the choice (docs/performance.md).
WHOLE_FLIGHT_MAX = source.CHUNK


def _offers(capabilities: Capabilities) -> tuple[bool, bool, bool, bool, int | None]:
    """What the server offers that a transaction asks about: PIPELINING,
    CHUNKING, 8BITMIME, SMTPUTF8 and the SIZE limit (see Capabilities)."""
    if type(capabilities) is Capabilities:  # immutable: asked once per EHLO reply
        return _offered(capabilities)
    return _offered.__wrapped__(capabilities)


@functools.lru_cache(maxsize=64)
def _offered(capabilities: Capabilities) -> tuple[bool, bool, bool, bool, int | None]:
    return (
        capabilities.has("PIPELINING"),
        capabilities.has("CHUNKING"),
        capabilities.has("8BITMIME"),
        capabilities.has("SMTPUTF8"),
        capabilities.size_limit,
    )


def _plan(
    message: PreparedMessage,
    capabilities: Capabilities,
    atleastone: bool,
    quit_after: bool,
    extras: MailParameters | None,
) -> _TransactionPlan:
    """Check what the server can take (8BITMIME, SMTPUTF8, SIZE) and plan the
    commands and flights; raises before anything is sent."""
    pipelining, chunking, eight_bit, smtputf8, size_limit = _offers(capabilities)
    ascii, size = message.ascii, message.size
    if ascii is False and not eight_bit:
        raise InvalidInputError(
            "the message has 8-bit octets and the server does not offer 8BITMIME: "
            "encode it (quoted-printable or base64), or use a server that offers 8BITMIME"
        )
    if message.smtputf8 and not smtputf8:
        raise InvalidInputError(
            "an address is not ASCII and the server does not offer SMTPUTF8 (RFC 6531): "
            "use an ASCII address (an IDNA A-label domain such as xn--...), or a server "
            "that offers SMTPUTF8"
        )
    # RFC 1870: a message larger than the server takes is not offered at all
    # (SIZE 0 means no fixed limit).
    limit = size_limit or None
    if limit is not None and size is not None and size > limit:
        raise _too_large(str(size), limit)
    # A body not checked before (a stream) is checked as it goes, and one of
    # unknown size counted; a violation aborts the transaction before its end
    # is sent, so nothing is delivered.
    rules = None if message.body.checked else LineCheck(eight_bit=eight_bit)
    count = limit if size is None else None
    check = (
        None if rules is None and count is None else _StreamGuard(rules, count, len(message.header))
    )
    params: list[str] = []
    if size_limit is not None and size is not None:
        params.append(f"SIZE={size}")
    if eight_bit and ascii is not True:
        params.append("BODY=8BITMIME")
    # SMTPUTF8 is declared for a non-ASCII address, and for UTF-8 in the
    # header (RFC 6532) where the server allows it.
    utf8 = message.smtputf8 or (smtputf8 and not message.header.isascii())
    if utf8:
        params.append("SMTPUTF8")
    lines: Sequence[bytes]
    if extras is None:
        recipients = tuple(message.recipients)
        encode = _mail_and_rcpt if len(recipients) <= BATCH else _mail_and_rcpt.__wrapped__
        lines = encode(message.sender, recipients, tuple(params), utf8)
    else:
        lines = _with_extras(message, params, extras, capabilities, utf8)
    trailer = commands.quit() if quit_after and pipelining else b""
    # DATA (or BDAT) may join the MAIL/RCPT flight when no refusal could make
    # the client regret it: with atleastone, or with a single recipient (if it
    # is refused, the server refuses the DATA too: RFC 2920 section 3.1).
    single = len(message.recipients) == 1
    early = pipelining and (atleastone or single) and len(lines) <= BATCH
    # A message that takes more than one BDAT chunk waits for the replies to
    # MAIL and RCPT: a refusal there must not cost its upload (one round trip
    # against the whole message).
    whole_in_flight = early and size is not None and size <= WHOLE_FLIGHT_MAX
    return _TransactionPlan(pipelining, chunking, check, lines, trailer, early, whole_in_flight)


class Flight(NamedTuple):
    """A transaction's first flight, written ahead (:func:`flight_ahead`)."""

    data: bytes  # MAIL, the RCPTs and, where it joins them, DATA
    display: str  # what observers are told of it, a line per command
    plan: _TransactionPlan  # the transaction's plan, made once


def flight_ahead(
    message: PreparedMessage,
    capabilities: Capabilities,
    atleastone: bool,
    extras: MailParameters | None,
) -> Flight | None:
    """The first flight of ``message``'s transaction (MAIL, the RCPTs, and
    DATA where it joins them), to be written behind the end of the message
    before it on a session that offers PIPELINING, with the lines observers
    are told; :func:`transaction` with ``ahead`` then reads its replies.

    None when the transaction cannot start that way: no PIPELINING, more
    than one flight, the whole message in the flight (BDAT), or a check of
    :func:`_plan` that fails (the transaction raises it when it runs)."""
    try:
        plan = _plan(message, capabilities, atleastone, False, extras)
    except SMTPError:
        return None
    if not plan.pipelining or len(plan.lines) > BATCH or (plan.chunking and plan.whole_in_flight):
        return None
    payload = b"".join(plan.lines)
    display = _display(payload)
    if plan.early and not plan.chunking:
        payload += commands.data()
        display += "\nDATA"
    return Flight(payload, display, plan)


@functools.lru_cache(maxsize=256)
def _mail_and_rcpt(
    sender: str, recipients: tuple[str, ...], params: tuple[str, ...], utf8: bool
) -> tuple[bytes, ...]:
    """MAIL and the RCPTs, encoded (and so checked) by the command encoders:
    pure functions of their arguments, so a kept session sending to the same
    recipients again encodes them once (a refusal raises every time).
    Remembered for up to :data:`BATCH` recipients (the memory stays bounded)."""
    mail = commands.mail(sender, params, smtputf8=utf8)
    return (mail, *commands.rcpts(recipients, smtputf8=utf8))


def transaction(
    *,
    message: PreparedMessage,
    capabilities: Capabilities,
    atleastone: bool,
    timeouts: Timeouts,
    outcome: TransactionOutcome,
    quit_after: bool = False,
    progress: Callable[[int], None] | None = None,
    extras: MailParameters | None = None,
    dialect: Dialect = SMTP,
    ahead: Flight | None = None,
    successor: Callable[[], bytes] | None = None,
) -> Generator[Action, Reply | None, TransactionOutcome]:
    """MAIL, RCPT for each recipient, then the message (DATA or BDAT) or RSET.

    The message is sent when at least one recipient was accepted and either
    none was refused or ``atleastone`` is true; otherwise the transaction is
    reset and the refusals returned. A refused MAIL, DATA, BDAT or end of
    data raises :class:`ResponseError`. ``outcome`` records how far it got.

    With PIPELINING (RFC 2920) MAIL and the RCPTs go in one write (in flights
    of :data:`BATCH` commands); with ``atleastone``, or a single recipient, the
    DATA (or, with CHUNKING, the whole message as BDAT) joins that flight,
    since a refused recipient then changes nothing. With CHUNKING (RFC 3030) the message goes
    as BDAT chunks: no dot-stuffing, no 354 to wait for. ``quit_after``
    pipelines QUIT behind the end of the message (PIPELINING only); its reply
    is then read too. ``extras`` are the caller's DSN (RFC 3461), REQUIRETLS
    (RFC 8689) and other MAIL/RCPT parameters; one the server does not offer
    fails before MAIL (DSN only when ``required``; otherwise it is left out).

    With a ``dialect`` whose servers answer per recipient (LMTP), the end of
    the message gets one reply per accepted recipient (:func:`_per_recipient`).

    ``ahead``: the first flight (:func:`flight_ahead`, for this message,
    these capabilities and options) was written behind the end of the
    message before, so the transaction starts by reading its replies, on
    that flight's plan. ``successor`` (with DATA) gives the next transaction's first
    flight to write behind this message's end (:func:`_data_body`).
    """
    per_recipient = dialect.replies_per_recipient
    if ahead is not None and not quit_after:
        plan = ahead.plan  # (made for it: flight_ahead plans no QUIT)
    else:
        plan = _plan(message, capabilities, atleastone, quit_after, extras)
    pipelining, chunking, check = plan.pipelining, plan.chunking, plan.check
    lines, trailer, early = plan.lines, plan.trailer, plan.early
    # (flight_ahead says no to a whole message in the flight.)
    whole_in_flight = plan.whole_in_flight and ahead is None
    bdat_replies = 0

    # -- MAIL and RCPT, in flights when pipelining -----------------------------
    mail_error: ResponseError | None = None
    flights = (
        [lines[i : i + BATCH] for i in range(0, len(lines), BATCH)]
        if pipelining
        else [[line] for line in lines]
    )
    index = 0
    data_reply: Reply | None = None
    mail_wait, rcpt_wait = _wait(timeouts.mail, "MAIL"), _wait(timeouts.rcpt, "RCPT")
    for number, flight in enumerate(flights):
        last_flight = number == len(flights) - 1
        payload = b"".join(flight)
        display = _display(payload)
        if whole_in_flight and last_flight and chunking:
            # The whole message rides in this flight: the first BDAT frame goes
            # in the same write as MAIL and the RCPTs.
            for frame, last in _bdat_frames(message, timeouts, trailer, progress, check):
                if payload:
                    frame = Send(
                        payload + frame.data, f"{display}\n{frame.display}", timeouts.block
                    )
                    payload = b""
                bdat_replies += 1
                # "sent" once the last frame is written, before any reply is read.
                written = yield from (_send_end(frame, trailer, outcome) if last else _send(frame))
                if not written:
                    break  # the server refused and closed: its replies say why
        elif ahead is not None and number == 0:
            pass  # (written behind the end of the message before: flight_ahead)
        else:
            if early and last_flight and not chunking:
                payload += commands.data()
                display += "\nDATA"
            yield from _send(Send(payload, display, timeouts.command))
        try:
            for _ in flight:
                if index == 0:
                    reply = yield mail_wait
                    assert reply is not None
                    if reply.code != 250:
                        # No transaction: whatever followed MAIL in the flight
                        # (even a whole BDAT message) was void; nothing delivered.
                        outcome.stage = Stage.MAIL
                        mail_error = ResponseError(
                            reply.diagnostic, reply.code, command="MAIL", enhanced=reply.enhanced
                        )
                        if reply.code == 421 or not pipelining:
                            raise mail_error
                    elif outcome.stage is Stage.MAIL:
                        outcome.stage = Stage.RCPT
                else:
                    reply = yield rcpt_wait
                    assert reply is not None
                    if reply.code in (250, 251):
                        outcome.accepted_recipients.append(message.recipients[index - 1])
                    elif reply.code == 421:
                        _expect(reply, "RCPT", 250, 251)
                    elif mail_error is None:
                        address = message.recipients[index - 1]
                        outcome.refused.append((address, reply.code, reply.diagnostic))
                index += 1
        except ConnectionLostError as exc:
            if mail_error is not None:
                raise mail_error from exc  # no transaction: nothing can be delivered
            _after_end(exc, "MAIL" if index == 0 else "RCPT", outcome)
            raise
        if early and last_flight and not chunking:
            # (_receive, inline: this runs for every message.)
            try:
                data_reply = yield _wait(timeouts.data, "DATA")
            except ConnectionLostError as exc:
                _after_end(exc, "DATA", outcome)
                raise
            assert data_reply is not None

    commit = bool(outcome.accepted_recipients) and (not outcome.refused or atleastone)
    commit = commit and mail_error is None

    # -- the whole message already went as BDAT in the flight ------------------
    if bdat_replies:
        replies: list[Reply] = []
        try:
            for number in range(bdat_replies):
                what = "BDAT LAST" if number == bdat_replies - 1 else "BDAT"
                timeout = timeouts.final if number == bdat_replies - 1 else timeouts.data
                replies.append((yield from _receive(timeout, what, outcome)))
        except (ConnectionLostError, DeliveryUnknownError):
            # Gone before every reply came: a refusal already read (MAIL, every
            # RCPT, or a chunk: RFC 3030 fails the whole transaction) still
            # says the message cannot have been delivered.
            if mail_error is not None:
                raise mail_error from None
            refused = next((reply for reply in replies if reply.code != 250), None)
            if refused is not None:
                _expect(refused, "BDAT", 250)
            if not outcome.accepted_recipients:
                outcome.session_over = True
                return outcome
            raise
        end_refusal: ResponseError | None = None
        if (
            per_recipient
            and mail_error is None
            and outcome.accepted_recipients
            and all(reply.code == 250 for reply in replies[:-1])
        ):
            # The reply to BDAT LAST was the first recipient's; the others follow.
            replies[-1], end_refusal = yield from _per_recipient(
                timeouts.final, "BDAT LAST", outcome, first=replies[-1]
            )
        if trailer:
            yield from _quit_reply(timeouts, outcome)
        if mail_error is not None:
            raise mail_error
        if end_refusal is not None:
            raise end_refusal
        if commit:
            for reply in replies:
                _expect(reply, "BDAT", 250)
            outcome.delivered = True
            outcome.reply = replies[-1]
        elif not trailer:
            # The accepted MAIL opened a transaction that the refused BDAT did
            # not end (RFC 3030): reset it, or the next MAIL joins it.
            yield from _reset_after_refusal(timeouts, outcome)
        return outcome

    if mail_error is not None:
        if data_reply is not None and data_reply.code == 354:
            # A 354 with MAIL refused: the server has a transaction the client
            # did not make (one left open before). A "." would end its
            # message; the connection is dropped instead (no end, no message).
            outcome.session_over = True
        raise mail_error

    # -- DATA already sent in the flight ---------------------------------------
    if data_reply is not None:
        if data_reply.code != 354:
            if commit:
                _expect(data_reply, "DATA", 354)
            yield from _reset_after_refusal(timeouts, outcome)
            return outcome
        if not commit:
            # A 354 although no recipient was accepted: end the empty message.
            yield from _empty_data(timeouts, outcome)
            yield from _reset_after_refusal(timeouts, outcome)
            return outcome
        outcome.stage = Stage.DATA
        yield from _data_body(message, timeouts, outcome, trailer, progress, check, successor)
        return (yield from _final(timeouts, outcome, bool(trailer), per_recipient))

    if not commit:
        yield from _reset_after_refusal(timeouts, outcome)
        return outcome

    # -- BDAT after the RCPT replies ---------------------------------------------
    if chunking:
        outcome.stage = Stage.DATA
        frames = 0  # chunks written whose replies are not read yet
        refusal: Reply | None = None
        for frame, last in _bdat_frames(message, timeouts, trailer, progress, check):
            if frames:
                # Pipelined chunks: one the server refused fails the transaction
                # (RFC 3030), and no further chunk is sent.
                while frames and refusal is None and (answer := (yield POLL)) is not None:
                    frames -= 1
                    if answer.code != 250:
                        refusal = answer
                if refusal is not None:
                    break
                # Replies to the chunks before may be arriving: not unsolicited.
                frame = Send(frame.data, frame.display, frame.timeout, replies_due=True)
            # SENT once the last frame is written, before its reply is read.
            written = yield from (_send_end(frame, trailer, outcome) if last else _send(frame))
            frames += 1
            if not pipelining or last or not written:
                # Without PIPELINING each chunk waits for its reply.
                final = yield from _chunk_replies(
                    frames, last, timeouts, outcome, per_recipient=per_recipient
                )
                outcome.reply = final
                frames = 0
        if refusal is not None:
            # The chunks already in the pipeline are answered (and discarded).
            yield from _chunk_replies(frames, False, timeouts, outcome, refused=refusal)
        outcome.delivered = True
        if trailer:
            yield from _quit_reply(timeouts, outcome)
        return outcome

    # -- DATA ---------------------------------------------------------------------
    yield from _send(_command(commands.data(), timeouts))
    reply = yield from _receive(timeouts.data, "DATA", outcome)
    _expect(reply, "DATA", 354)
    outcome.stage = Stage.DATA
    yield from _data_body(message, timeouts, outcome, trailer, progress, check, successor)
    return (yield from _final(timeouts, outcome, bool(trailer), per_recipient))


_FINAL = 'the final "."'


def _final(
    timeouts: Timeouts, outcome: TransactionOutcome, quit_sent: bool, per_recipient: bool
) -> Generator[Action, Reply | None, TransactionOutcome]:
    if per_recipient:
        reply, refusal = yield from _per_recipient(timeouts.final, 'the final "."', outcome)
        if refusal is not None:
            if quit_sent:  # the session ends here (see below)
                outcome.quit_sent = outcome.session_over = True
            raise refusal
    else:
        # (_receive, inline: this runs for every message.)
        try:
            answer = yield _wait(timeouts.final, _FINAL)
        except ConnectionLostError as exc:
            _after_end(exc, _FINAL, outcome)
            raise
        assert answer is not None
        reply = answer
        if quit_sent and reply.code not in (250, 251):
            # Refused, with the QUIT behind it on the wire: the session ends here
            # (another transaction on it would meet the reply to QUIT).
            outcome.quit_sent = outcome.session_over = True
        _expect(reply, 'the final "."', 250, 251)
    outcome.delivered = True
    outcome.reply = reply
    if quit_sent:
        yield from _quit_reply(timeouts, outcome)
    return outcome


def _quit_reply(
    timeouts: Timeouts, outcome: TransactionOutcome
) -> Generator[Action, Reply | None, None]:
    """The reply to a pipelined QUIT: the session is over whatever it says."""
    outcome.quit_sent = outcome.session_over = True
    # The message is delivered by now: no answer to QUIT, however broken,
    # may turn that into an error (a caller would send the message again).
    with contextlib.suppress(ConnectionLostError, ProtocolError):
        yield _quit_wait(timeouts)


def _empty_data(
    timeouts: Timeouts, outcome: TransactionOutcome
) -> Generator[Action, Reply | None, None]:
    """End a DATA the server accepted with 354 although nothing is to be sent."""
    yield from _send(Send(b".\r\n", ".", timeouts.block))
    yield from _receive(timeouts.final, 'the final "."', outcome)


def _reset_after_refusal(
    timeouts: Timeouts, outcome: TransactionOutcome
) -> Generator[Action, Reply | None, None]:
    """RSET after recipients were refused and nothing was sent. The outcome is
    known by now: a server that closes (421) or is gone at the RSET changes
    nothing in it, it only ends the session (``outcome.session_over``)."""
    try:
        yield from reset(timeouts)
    except (ResponseError, ConnectionLostError):
        outcome.session_over = True


def reset(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """RSET. Its answer is not checked (Tcllib ignores it), but 421 is."""
    return (yield from _tolerant(commands.rset(), "RSET", timeouts))


def quit(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """QUIT; the caller ignores its failures (the work is done by then).

    Its reply is awaited at most :data:`QUIT_WAIT` seconds.
    """
    yield from _send(_command(commands.quit(), timeouts))
    reply = yield _quit_wait(timeouts)
    assert reply is not None
    return reply
