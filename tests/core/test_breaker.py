"""The circuit breaker's states, on a clock the test moves."""

from __future__ import annotations

from app.core.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read through a call, so the type checker does not pin it after the first assert."""
    return breaker.state


def test_opens_after_consecutive_failures_then_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown=5, clock=clock)
    assert breaker.record_failure() is False
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_success()  # a success resets the count
    breaker.record_failure()
    assert breaker.record_failure() is True
    assert state(breaker) is BreakerState.OPEN
    assert breaker.allow() is False

    clock.now = 5
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow() is True  # the probe
    assert breaker.allow() is False  # only one at a time
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow() is True


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=5, clock=clock)
    breaker.record_failure()
    clock.now = 6
    assert breaker.allow() is True
    assert breaker.record_failure() is False  # was already open: not a new outage
    assert state(breaker) is BreakerState.OPEN
    clock.now = 10
    assert breaker.allow() is False
    clock.now = 11
    assert breaker.allow() is True
