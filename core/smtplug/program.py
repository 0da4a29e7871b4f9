"""A client's connection and the programs that use it: send one message, close.

Theory of operation. :class:`Conduct` is what :class:`smtplug.Client` and
:class:`smtplug.AsyncClient` share: the plan (the checked options), the kept
connection's :class:`~smtplug.wire.Wire` and capabilities, and the programs
(generators yielding :mod:`smtplug.actions`) that a driver runs:

* :meth:`Conduct.send`: make sure a session is open (:func:`connect.open_session`,
  reconnecting when the kept one is gone), run the transaction, and decide
  what its failure means: reconnect once when a kept session turns out stale
  before MAIL was accepted, move on to the next server after a 421 before the
  message's end, reset the transaction after a refusal, drop a connection
  that broke, and say "delivery unknown" when the end was sent and no answer
  can be trusted;
* :meth:`Conduct.close`: QUIT when the session is sound, then close.

Every decision is here once: the blocking and asyncio drivers only perform
the actions. A driver that is interrupted (a cancelled task,
``KeyboardInterrupt``) closes the connection itself, which marks its wire
broken: the next send opens a fresh one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Generator
from typing import Any

from smtplug import envelope, events, session
from smtplug.actions import CLOSE, PROBE
from smtplug.connect import ConnectionPlan, open_session
from smtplug.errors import (
    ConnectionLostError,
    DeliveryUnknownError,
    ResponseError,
    ServerFailure,
    SMTPError,
    TLSError,
)
from smtplug.observe import Observers, logger
from smtplug.options import MessageOptions
from smtplug.protocol import Capabilities
from smtplug.protocol.dsn import MailParameters
from smtplug.results import SendResult
from smtplug.session import Stage
from smtplug.wire import Wire

__all__ = ["Conduct", "Follow", "Program", "interrupted_after_delivery"]

#: A program: yields actions, is sent their results, returns a value.
Program = Generator[Any, Any, Any]

#: Asked with a session's capabilities just before a message's end is written:
#: the next message's first flight and what observers are told of it
#: (:func:`session.flight_ahead`), or None for no message to follow.
Follow = Callable[[Capabilities], "session.Flight | None"]


class Conduct:
    """The state of one client's connection, and its programs."""

    __slots__ = ("ahead", "capabilities", "hook", "plan", "wire")

    def __init__(self, plan: ConnectionPlan, hook: Observers) -> None:
        self.plan = plan
        self.hook = hook
        self.wire: Wire | None = None
        self.capabilities: Capabilities | None = None
        #: The session whose next transaction's first flight went behind the
        #: end of the last message (:func:`session.flight_ahead`), with the
        #: lines to tell observers: the next send reads its replies first.
        self.ahead: tuple[Wire, session.Flight] | None = None

    @property
    def connected(self) -> bool:
        """True while a session is open (it may still turn out to be stale)."""
        return self.wire is not None and not self.wire.broken

    def forget(self) -> None:
        """The connection is closed (or being closed by the driver): forget it."""
        self.wire = None
        self.capabilities = None
        self.ahead = None

    def _drop(self) -> Generator[Any, Any, None]:
        self.forget()
        yield CLOSE

    def close(self) -> Generator[Any, Any, None]:
        """QUIT when the session is sound, then close; never raises."""
        wire = self.wire
        self.forget()
        if wire is None:
            return
        try:
            if not wire.broken:
                with contextlib.suppress(SMTPError):
                    yield from wire.step(session.quit(self.plan.timeouts))
        except Exception as exc:  # an observer's, at QUIT: the work is done
            logger.error("while closing: %s", type(exc).__name__, exc_info=exc)
        yield CLOSE  # (interrupted instead, the driver closes it)

    def send_prepared(
        self,
        prepared: envelope.PreparedMessage,
        extras: MailParameters | None,
        options: MessageOptions,
        *,
        last: bool,
        follow: Follow | None = None,
    ) -> Generator[Any, Any, SendResult]:
        """:meth:`send` with the per-message options as the API checked them."""
        return self.send(
            prepared,
            atleastone=options.atleastone,
            queue=options.queue,
            progress=options.progress,
            last=last,
            extras=extras,
            follow=follow,
        )

    def _follow(self, wire: Wire, capabilities: Capabilities, follow: Follow) -> bytes:
        """(Asked by the transaction just before the end of its message is
        written.) The next transaction's first flight, from ``follow``."""
        flight = follow(capabilities)
        if flight is None:
            return b""
        self.ahead = (wire, flight)
        return flight.data

    def send(
        self,
        prepared: envelope.PreparedMessage,
        *,
        atleastone: bool,
        queue: bool,
        progress: Callable[[int], None] | None,
        last: bool,
        extras: MailParameters | None,
        follow: Follow | None = None,
    ) -> Generator[Any, Any, SendResult]:
        """Send one prepared message over the kept session (opened if needed).

        ``follow(capabilities)``, when given, may name the next message's
        first flight (:func:`session.flight_ahead`) to write behind this
        one's end (no QUIT is then pipelined): whoever gives it must send
        that message next, on this Conduct (or close it)."""
        timeouts = self.plan.timeouts
        failed: list[ServerFailure] = []
        attempt = 0
        ahead, self.ahead = self.ahead, None  # (forget() clears it: it is self.wire's)
        if ahead is not None and (ahead[0].broken or not ahead[0].readable):
            ahead = None
            yield from self._drop()  # (replies are due that no transaction will read)
        while True:
            attempt += 1
            if self.wire is not None and self.wire.broken:
                yield from self._drop()  # closed under a send that was interrupted
            reused = self.wire is not None
            if ahead is not None:
                pass  # (its first flight is on the wire: no probe, no new session)
            elif (
                self.wire is not None
                and self.capabilities is not None
                and self.capabilities.has("CHUNKING")
                and self.capabilities.has("PIPELINING")
                and (yield PROBE)
            ):
                # The whole message would go in the first write: make sure
                # the kept session is still there, or the delivery could end
                # unknown. Any other transaction finds out at MAIL.
                self.wire.event(events.Reconnecting())
                yield from self._drop()
            if self.wire is None or self.capabilities is None:
                self.wire, self.capabilities = yield from open_session(
                    self.plan, self.hook, failed=failed
                )
            wire, capabilities = self.wire, self.capabilities
            if extras is not None and extras.requiretls:
                try:
                    _check_requiretls(wire)
                except TLSError:
                    if ahead is not None:
                        yield from self._drop()  # (replies are due: see above)
                    raise
            outcome = session.TransactionOutcome()
            successor = None
            if follow is not None and not last:
                successor = functools.partial(self._follow, wire, capabilities, follow)
            try:
                if queue and capabilities.has("XQUE") and ahead is None:
                    yield from wire.step(session.queue(timeouts))
                # wire.step(transaction), inline: one generator layer less on
                # each of the transaction's actions.
                wire.begin_step()
                if ahead is not None:
                    wire.told(ahead[1].display)  # (written behind the message before)
                try:
                    yield from session.transaction(
                        message=prepared,
                        capabilities=capabilities,
                        atleastone=atleastone,
                        timeouts=timeouts,
                        outcome=outcome,
                        quit_after=last,
                        progress=progress,
                        extras=extras,
                        dialect=self.plan.dialect,
                        ahead=None if ahead is None else ahead[1],
                        successor=successor,
                    )
                except BaseException as exc:
                    wire.failed(exc)
                    raise
                finally:
                    ahead = None  # (read, or the connection is dropped below)
            except (ConnectionLostError, ResponseError) as exc:
                again = prepared.body.restartable or not prepared.body.started
                # A kept session the server closed while idle (or answers 421
                # to MAIL): reconnect once, transparently.
                stale = (
                    reused
                    and attempt == 1
                    and outcome.stage is Stage.MAIL
                    and (isinstance(exc, ConnectionLostError) or exc.code == 421)
                    and again
                )
                # 421 anywhere before the end of the message: a temporary
                # failure of this server; nothing was delivered, try the next.
                closing = (
                    not stale
                    and isinstance(exc, ResponseError)
                    and exc.code == 421
                    and outcome.stage is not Stage.SENT
                    and again
                )
                if wire.broken or outcome.session_over or stale or closing:
                    yield from self._drop()
                elif self.ahead is not None:
                    pass  # refused at its end: the next transaction is on its way
                else:
                    # A refused DATA (or RCPT ...) leaves the transaction open on
                    # the server: reset it, even on a one-shot's last send, whose
                    # next attempt (retry=) would otherwise MAIL into it.
                    with contextlib.suppress(SMTPError):
                        yield from wire.step(session.reset(timeouts))
                if stale:
                    wire.event(events.Reconnecting(exc.diagnostic))
                    continue
                if closing:
                    info = wire.info
                    failed.append(ServerFailure(info.server, info.port, exc))
                    wire.event(events.Failover(info.server, info.port, exc))
                    continue
                raise
            except Exception as exc:
                yield from self._drop()
                if isinstance(exc, DeliveryUnknownError):
                    raise
                if outcome.delivered:
                    # The server said 250 to the message's end: that is not
                    # undone by what failed afterwards (an observer at QUIT).
                    logger.error(
                        "after the message was delivered: %s", type(exc).__name__, exc_info=exc
                    )
                    return _result(outcome, wire)
                if outcome.stage is Stage.SENT:
                    # The end is on the wire: whatever failed next (a broken
                    # reply, an observer, a progress callback) leaves the
                    # server's answer unknown, and so the delivery.
                    raise DeliveryUnknownError(
                        f"the end of the message was sent to {wire.info.server}, then "
                        f"{_what_failed(exc)}: the message may or may not have been delivered"
                    ) from exc
                raise
            except BaseException:
                # Interrupted (a cancelled task): the driver closes the
                # connection; if the end was sent, nobody knows the outcome.
                self.forget()
                if outcome.delivered:
                    # (Cancelled while the QUIT behind it was answered.)
                    interrupted_after_delivery(_result(outcome, wire))
                elif outcome.stage is Stage.SENT:
                    logger.warning(
                        "%s:%s: interrupted after the end of the message was sent: the "
                        "message may or may not have been delivered",
                        wire.info.server,
                        wire.info.port,
                    )
                raise
            if outcome.session_over or wire.broken:
                # (Broken: a read or write failed on the way, whatever the step
                # made of it; the connection carries no further command.)
                yield from self._drop()
            if outcome.refused and not outcome.delivered:
                logger.warning(
                    "%s:%s: message NOT sent: %d recipient(s) refused (%s)%s",
                    wire.info.server,
                    wire.info.port,
                    len(outcome.refused),
                    "; ".join(f"{a}: {c} {d}" for a, c, d in outcome.refused[:3]),
                    "; atleastone=True would send it to the others"
                    if outcome.accepted_recipients and not atleastone
                    else "",
                )
            return _result(outcome, wire)


def interrupted_after_delivery(result: SendResult) -> None:
    """Say that a send interrupted (a cancelled task, ``KeyboardInterrupt``)
    after the server accepted its message did deliver it: the caller sees only
    the interruption, and must not send it again."""
    logger.warning(
        "%s:%s: interrupted after the server accepted the message: it WAS delivered (%s)",
        result.server,
        result.port,
        result.reply,
    )


def _result(outcome: session.TransactionOutcome, wire: Wire) -> SendResult:
    return SendResult(
        outcome.refused,
        accepted=outcome.delivered,
        server=wire.info.server,
        port=wire.info.port,
        reply=outcome.reply,
        recipients=outcome.accepted_recipients,
        tls=wire.tls_info,
    )


def _check_requiretls(wire: Wire) -> None:
    """RFC 8689: a REQUIRETLS message goes only over TLS with a verified
    certificate and host name."""
    tls = wire.tls_info
    if tls is None or not tls.verified:
        state = "in plain text" if tls is None else "over TLS whose certificate was not verified"
        raise TLSError(
            f"requiretls=True and the session with {wire.info.server} runs {state} "
            "(RFC 8689 needs verified TLS): not sent",
            policy=True,
        )


def _what_failed(exc: Exception) -> str:
    if isinstance(exc, SMTPError):
        return f"{type(exc).__name__}: {exc}"
    # Not the text of a foreign exception: it could hold anything.
    return f"an observer or callback raised {type(exc).__name__}"
