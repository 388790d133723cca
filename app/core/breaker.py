"""A small circuit breaker for an optional dependency (Redis).

After `failures` consecutive failures the breaker opens: callers skip the
dependency at once for `cooldown` seconds instead of each waiting for a timeout.
Then a single call is let through as a probe (half-open): its success closes the
breaker, its failure opens it for another cool-down.

Written here rather than taken from a library: the maintained breakers
(pybreaker, aiobreaker, purgatory) wrap calls in their own async machinery or
need a storage backend; this one is plain state, costs a comparison per call and
runs in one event loop per worker, so it needs no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing or self._clock() - self._opened_at >= self._cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether to call the dependency now. When the cool-down is over, exactly one
        caller gets True (the probe) until it reports back."""
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self._cooldown:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> bool:
        """Count a failure; returns True when this failure opened the breaker."""
        self._failures += 1
        was_closed = self._opened_at is None
        if self._probing or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._probing = False
            return was_closed
        return False
