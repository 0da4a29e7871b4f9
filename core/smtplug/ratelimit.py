"""Rate limits for the pools: when may the next message start (sans-IO).

Theory of operation. :class:`RateLimiter` is a GCRA (generic cell rate
algorithm, the token bucket written as one number): ``rate`` messages per
second, of which ``burst`` may start at once after a quiet spell. It keeps
the *theoretical arrival time* ``tat``: when the schedule of the starts
granted so far ends. A start may come ``(burst - 1) / rate`` seconds ahead
of it, never earlier, so that no window of ``w`` seconds ever holds more
than ``burst + w * rate`` starts.

:meth:`RateLimiter.reserve` takes the clock's ``now`` and *grants* a start
time (``now`` or later) to one message, moving the schedule on by
``1 / rate``; it never sleeps. The caller waits until then (``time.sleep``,
``asyncio.sleep``: the limiter does not know which) and starts the message.
A caller that gives up before starting (a cancelled task, a closed pool)
gives the grant back with :meth:`RateLimiter.cancel`, so that it slows
nobody: the latest grant is taken off the schedule; an earlier one leaves a
gap that the next reservation fills, if it is still ahead of it.

One limiter is shared by all the connections of a pool: a lock guards the
reservation (a few additions), never a wait. The per-connection rate is
simpler: a connection carries one message at a time, so its slot keeps the
time its last message started (:func:`next_start`).
"""

from __future__ import annotations

import bisect
import math
import threading

from smtplug.errors import InvalidInputError

__all__ = ["RateLimiter", "next_start", "per_second"]


def per_second(name: str, value: object) -> float:
    """``value`` checked as a rate: a finite number above 0 (messages per second)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name} must be a number of messages per second, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidInputError(
            f"{name} must be a positive number of messages per second, not {value!r}"
        )
    return float(value)


class RateLimiter:
    """``rate`` message starts per second, ``burst`` of them at once (GCRA).

    Thread-safe; :meth:`reserve` and :meth:`cancel` never block but for the
    lock around a few additions.
    """

    __slots__ = ("_gaps", "_last", "_lock", "_tat", "burst", "interval", "rate")

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.rate = per_second("rate_limit", rate)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise InvalidInputError(
                f"rate_burst must be a whole number of at least 1, not {burst!r}"
            )
        self.burst = burst
        self.interval = 1.0 / self.rate
        self._lock = threading.Lock()
        self._tat = -math.inf  # the end of the schedule granted so far
        self._last: float | None = None  # the latest grant, while it may be taken back
        self._gaps: list[float] = []  # grants given back, sorted

    def __repr__(self) -> str:
        return f"<RateLimiter {self.rate:g}/s, burst {self.burst}>"

    def reserve(self, now: float) -> float:
        """Grant one message a start time, ``now`` or later, and book it."""
        with self._lock:
            gaps = self._gaps
            if gaps:
                del gaps[: bisect.bisect_left(gaps, now)]  # (gaps passed: lost)
                if gaps:
                    return gaps.pop(0)
            tat = max(self._tat, now)
            start = max(now, tat - (self.burst - 1) * self.interval)
            self._tat = tat + self.interval
            self._last = start
            return start

    def cancel(self, start: float) -> None:
        """Give back a grant of :meth:`reserve` whose message will not start."""
        with self._lock:
            if start == self._last:
                self._tat -= self.interval  # the latest: as if never booked
                self._last = None
            else:
                bisect.insort(self._gaps, start)


def next_start(last: float, spacing: float | None) -> float:
    """When a connection whose last message started at ``last`` may start
    the next one (``spacing``: seconds between two, or None)."""
    return -math.inf if spacing is None else last + spacing
