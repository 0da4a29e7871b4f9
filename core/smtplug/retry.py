"""Retry with backoff, and an overall deadline per send: decided once, without I/O.

Theory of operation. :class:`Retry` is a frozen policy; its one decision,
:meth:`Retry.delay`, is a pure function of the failure, the attempt number
and the time spent: the seconds to wait before the next attempt, or None.
:func:`guarded` turns one attempt's program (``Conduct.send`` for a client,
the pool's slot program for a pool) into the program of the whole send: it
runs attempts, yields a :class:`~smtplug.actions.Sleep` between them (the
driver only sleeps), and, with a deadline, passes every action through
:func:`capped`, which caps the timeout of every wait (connect, greeting,
each reply, each write, the TLS handshake) by what is left of the deadline
and refuses a wait when nothing is left. Both drivers run the same program:
the blocking and the asyncio API make the same decisions.

What is retried (:meth:`Retry.retryable`): only what cannot have delivered
the message and may work next time; a 421 or a lost connection, 4xx replies
to MAIL, DATA or the message's end, a message whose every refusal of a
recipient was 4xx, a server that could not be reached. Never a permanent
failure (5xx), never a TLS refusal (certificate, host name, attack, policy)
or a server failing its own authentication, never bad input, and never
:class:`~smtplug.errors.DeliveryUnknownError` unless ``unknown="retry"``.
The Conduct drops a connection that broke (a 421, a lost connection), so
the next attempt opens a fresh one, starting again from the first server of
``servers``. A body read from a stream that was started cannot be sent
again: no retry then.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

from smtplug.actions import Open, Receive, Send, Sleep, Upgrade
from smtplug.envelope import PreparedMessage
from smtplug.errors import (
    AuthenticationError,
    ConnectError,
    DeadlineExceededError,
    DeliveryUnknownError,
    InvalidInputError,
    MessageTooLargeError,
    PluginError,
    ProtocolError,
    SMTPError,
    TLSError,
)
from smtplug.observe import logger
from smtplug.results import SendResult

__all__ = [
    "NO_LIMITS",
    "Limits",
    "Repace",
    "Retry",
    "capped",
    "guarded",
    "limits",
    "now",
    "of_send",
    "whole",
]

#: The clock of the deadline and of the time spent (a test may replace it).
_clock: Callable[[], float] = time.monotonic

Program = Generator[Any, Any, Any]


def _number(name: str, value: object, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"Retry: {name} must be a finite number, not {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = "more than" if strict else "at least"
        raise InvalidInputError(f"Retry: {name} must be {relation} {minimum:g}, not {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class Retry:
    """A retry policy: how often to try a send, how long to wait in between.

    ``attempts``: tries in all (the first one included; 1: no retry).
    Before attempt *n+1* the wait is ``min(max_backoff, backoff *
    multiplier ** (n - 1))`` seconds, times ``rng()`` (a number in [0, 1):
    "full jitter", so that many senders do not retry in step) unless
    ``jitter`` is False. ``deadline``: seconds for the whole send, every
    attempt and every wait; no attempt starts and no wait ends past it.
    ``unknown``: ``"fail"`` (the default) never sends again a message whose
    delivery is unknown; ``"retry"`` does (at-least-once: the server may get
    it twice, with the same Message-ID; the result says
    ``may_be_duplicate``).
    """

    attempts: int = 3
    backoff: float = 1.0
    multiplier: float = 2.0
    max_backoff: float = 60.0
    jitter: bool = True
    deadline: float | None = None
    unknown: Literal["fail", "retry"] = "fail"
    rng: Callable[[], float] = dataclasses.field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        attempts = self.attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidInputError(
                f"Retry: attempts must be a whole number of at least 1, not {attempts!r}"
            )
        _number("backoff", self.backoff, minimum=0, strict=False)
        _number("multiplier", self.multiplier, minimum=1, strict=False)
        _number("max_backoff", self.max_backoff, minimum=0, strict=False)
        if self.deadline is not None:
            _number("deadline", self.deadline, minimum=0, strict=True)
        if not isinstance(self.jitter, bool):
            raise InvalidInputError(f"Retry: jitter must be True or False, not {self.jitter!r}")
        if self.unknown not in ("fail", "retry"):
            raise InvalidInputError(
                f'Retry: unknown must be "fail" or "retry", not {self.unknown!r}'
            )
        if not callable(self.rng):
            raise InvalidInputError("Retry: rng must be a callable returning a number in [0, 1)")

    def retryable(self, failure: SMTPError | SendResult) -> bool:
        """True when sending again is safe and may work (see the module doc)."""
        if isinstance(failure, SendResult):
            # Not delivered, for recipients refused, each of them for now only.
            return (
                not failure.accepted
                and bool(failure)
                and all(400 <= entry.code < 500 for entry in failure)
            )
        if isinstance(failure, DeliveryUnknownError):
            return self.unknown == "retry"
        if isinstance(failure, ConnectError) and failure.failures:
            errors = [f.error for f in failure.failures]
            return not any(_refusal(e) for e in errors) and any(self.retryable(e) for e in errors)
        if _refusal(failure) or isinstance(
            failure, InvalidInputError | PluginError | ProtocolError | MessageTooLargeError
        ):
            return False
        return failure.transient

    def backoff_for(self, attempt: int) -> float:
        """The wait after attempt number ``attempt`` (from 1), jitter applied."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** (attempt - 1))
        if not self.jitter:
            return base
        share = float(self.rng())
        if not 0 <= share <= 1:
            raise InvalidInputError(f"Retry: rng returned {share!r}, not a number in [0, 1)")
        return base * share

    def delay(self, failure: SMTPError | SendResult, attempt: int, elapsed: float) -> float | None:
        """The decision: after attempt number ``attempt`` (from 1) ended in
        ``failure``, ``elapsed`` seconds after the send began, the seconds to
        wait before the next attempt; None: no further attempt."""
        if attempt >= self.attempts or not self.retryable(failure):
            return None
        wait = self.backoff_for(attempt)
        if self.deadline is not None and elapsed + wait >= self.deadline:
            return None
        return wait


def _refusal(error: SMTPError) -> bool:
    """A failure that trying again cannot fix and must not try to."""
    if isinstance(error, TLSError):
        return error.certificate or error.attack or error.policy
    return isinstance(error, AuthenticationError) and error.server_unverified


@dataclass(frozen=True, slots=True)
class Limits:
    """A send's checked retry policy and deadline (seconds), either may be None."""

    retry: Retry | None = None
    deadline: float | None = None

    @property
    def active(self) -> bool:
        return self.retry is not None or self.deadline is not None


NO_LIMITS = Limits()


def _deadline(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"deadline must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidInputError(f"deadline must be a positive number of seconds, not {value!r}")
    return float(value)


def _policy(value: object) -> Retry | None:
    if value is None or value is False:
        return None
    if not isinstance(value, Retry):
        raise InvalidInputError(f"retry must be a smtplug.Retry, False or None, not {value!r}")
    return value


def limits(retry: object, deadline: object, default: Limits | None = None) -> Limits:
    """The checked limits of a client (``default`` None) or of one send
    (``default``: its client's, used where the send gives None; a send's
    ``retry=False`` turns retry off)."""
    if default is None:
        checked = Limits(_policy(retry), _deadline(deadline))
        return checked if checked.active else NO_LIMITS
    if retry is None and deadline is None:
        return default
    policy = default.retry if retry is None else _policy(retry)
    seconds = default.deadline if deadline is None else _deadline(deadline)
    return Limits(policy, seconds)


# --- the programs ----------------------------------------------------------------------

_TIMED = (Send, Receive, Upgrade, Open)


def _waiting_for(action: object) -> str:
    if isinstance(action, Receive):
        return f"the reply to {action.command}"
    if isinstance(action, Send):
        return f"sending {action.display.splitlines()[0] if action.display else 'data'}"
    if isinstance(action, Upgrade):
        return "the TLS handshake"
    assert isinstance(action, Open)
    return f"connecting to {action.info.server}:{action.info.port}"


class _Deadline:
    """One send's deadline: the absolute time, and whether it cut a wait."""

    __slots__ = ("hit", "seconds", "until")

    def __init__(self, seconds: float, started: float) -> None:
        self.seconds = seconds
        self.until = started + seconds
        self.hit = False

    def error(self, what: str) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"the deadline of {self.seconds:g} s for the whole send ran out ({what}): not sent"
        )


def capped(program: Program, deadline: _Deadline) -> Program:
    """``program`` with every wait capped by what is left of ``deadline``;
    a wait asked for when nothing is left is not made: the deadline's error
    is thrown in instead, for the program to make of it what it makes of a
    timeout (a :class:`DeliveryUnknownError` once the message's end was
    sent). An error the program raises after the deadline cut a wait is
    :class:`DeadlineExceededError` (from it), unless the delivery is unknown."""
    clock = _clock
    until = deadline.until
    try:
        action = next(program)
        while True:
            cut = False
            if isinstance(action, _TIMED):
                remaining = until - clock()
                if remaining <= 0:
                    deadline.hit = True
                    action = program.throw(deadline.error(_waiting_for(action)))
                    continue
                if action.timeout is None or action.timeout > remaining:
                    action = dataclasses.replace(action, timeout=remaining)
                    cut = True
            try:
                result = yield action
            except GeneratorExit:
                program.close()
                raise
            except Exception as exc:
                if cut and clock() >= until:
                    deadline.hit = True
                action = program.throw(exc)
            else:
                action = program.send(result)
    except StopIteration as stop:
        return stop.value
    except SMTPError as exc:
        if deadline.hit and not isinstance(exc, DeliveryUnknownError | DeadlineExceededError):
            raise deadline.error(f"{type(exc).__name__}: {exc}") from exc
        raise


def of_send(retry: object, deadline: object, default: Limits) -> Limits | None:
    """A client's send's limits (checked: before the message is read), or
    None when it has neither a retry policy nor a deadline: then the attempt
    is the whole send (:func:`whole`), with no wrapper to pay for."""
    if retry is None and deadline is None and not default.active:
        return None
    return limits(retry, deadline, default)


def whole(
    attempt: Callable[[], Generator[Any, Any, SendResult]],
    limits: Limits | None,
    prepared: PreparedMessage,
) -> Generator[Any, Any, SendResult]:
    """The program of a client's whole send: ``attempt()`` itself without
    limits (see :func:`of_send`), else :func:`guarded`."""
    if limits is None:
        return attempt()
    return guarded(attempt, limits, prepared)


#: The waits a pool makes before an attempt after the first (its rate
#: limits): a program of :class:`~smtplug.actions.Sleep` that is given the
#: deadline's time (or None) and returns False, having given its booking
#: back, when the attempt could not start before it.
Repace = Callable[[float | None], Generator[Sleep, None, bool]]


def guarded(
    attempt: Callable[[], Generator[Any, Any, SendResult]],
    limits: Limits,
    prepared: PreparedMessage,
    *,
    started: float | None = None,
    repace: Repace | None = None,
) -> Generator[Any, Any, SendResult]:
    """The program of a whole send of ``prepared``: ``attempt()`` (one
    attempt's program, returning a :class:`SendResult`) as often as
    ``limits.retry`` allows, each capped by ``limits.deadline`` (counted from
    ``started``, a value of :func:`now`; default: now). Every attempt sends
    the same prepared octets, so the same Message-ID (added by
    :func:`smtplug.envelope.prepare` when the message has none). A body read
    from a stream that was started is not sent again. After the backoff,
    ``repace`` (a pool's rate limits) runs before each attempt but the first
    (which the caller paced): a retry is a message start like any other; one
    that could only start after the deadline is not made.

    Without limits this is ``attempt()`` itself: nothing in between."""
    if not limits.active:
        return attempt()
    body = prepared.body

    def restartable() -> bool:
        return body.restartable or not body.started

    return _attempts(attempt, limits, restartable, _clock() if started is None else started, repace)


def now() -> float:
    """The clock's time now (for ``started``)."""
    return _clock()


def _attempts(
    attempt: Callable[[], Generator[Any, Any, SendResult]],
    limits: Limits,
    restartable: Callable[[], bool],
    started: float,
    repace: Repace | None = None,
) -> Generator[Any, Any, SendResult]:
    policy = limits.retry
    seconds = [s for s in (limits.deadline, None if policy is None else policy.deadline) if s]
    deadline = _Deadline(min(seconds), started) if seconds else None
    unknown: DeliveryUnknownError | None = None  # an earlier attempt's
    number = 0
    while True:
        number += 1
        program = attempt()
        failure: SMTPError | SendResult
        try:
            if deadline is None:
                result: SendResult = yield from program
            else:
                result = yield from capped(program, deadline)
        except SMTPError as exc:
            failure = exc
        else:
            if result.accepted or policy is None or not policy.retryable(result):
                return _final(result, number, unknown)
            failure = result
        wait = None
        if policy is not None and restartable():
            wait = policy.delay(failure, number, _clock() - started)
            if wait is not None and deadline is not None and _clock() + wait >= deadline.until:
                wait = None  # no sleep past the deadline, no attempt after it
        if wait is None:
            return _given_up(failure, number, unknown)
        assert policy is not None
        logger.info(
            "attempt %d of %d failed (%s); trying again in %.3f s",
            number,
            policy.attempts,
            _what(failure),
            wait,
        )
        yield Sleep(wait)
        if repace is not None and not (
            yield from repace(None if deadline is None else deadline.until)
        ):
            logger.info(
                "attempt %d not made: the rate limit lets it start only after the deadline",
                number + 1,
            )
            return _given_up(failure, number, unknown)
        if isinstance(failure, DeliveryUnknownError):
            unknown = failure  # (for the attempts after it: it may have delivered)


def _given_up(
    failure: SMTPError | SendResult, number: int, unknown: DeliveryUnknownError | None
) -> SendResult:
    """The end of a send whose attempt ``number`` failed and is the last."""
    if isinstance(failure, SendResult):
        return _final(failure, number, unknown)
    if unknown is not None and failure is not unknown:
        raise DeliveryUnknownError(
            f"attempt {number} failed ({type(failure).__name__}: {failure}) and an "
            f"earlier attempt ended with the delivery unknown ({unknown.diagnostic}): "
            "the message may or may not have been delivered"
        ) from failure
    raise failure


def _what(failure: SMTPError | SendResult) -> str:
    if isinstance(failure, SendResult):
        return "recipients refused for now: " + "; ".join(f"{a}: {c}" for a, c, _ in failure[:3])
    return f"{type(failure).__name__}: {failure}"


def _final(result: SendResult, number: int, unknown: DeliveryUnknownError | None) -> SendResult:
    result.attempts = number
    if unknown is not None:
        if not result.accepted:
            # Refused now; an earlier attempt may have delivered it.
            raise DeliveryUnknownError(
                f"attempt {number} was refused ({_what(result)}) and an earlier attempt "
                f"ended with the delivery unknown ({unknown.diagnostic}): the message may "
                "or may not have been delivered"
            ) from unknown
        result.may_be_duplicate = True
    return result
