"""The one retry policy: capped exponential backoff with jitter, decided and counted once."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import stamina
import structlog

from ingestor import metrics
from ingestor.errors import (
    IngestorError,
    MalformedResponse,
    StripeConnectionError,
    StripeError,
    StripeLockTimeout,
    StripeRateLimited,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[Any]]

# Past this many doublings every step is the cap anyway; the bound keeps 2**n a finite float.
_MAX_DOUBLINGS = 64
_COUNTED = "_ingestor_counted"

# This module is the one layer that counts and logs retries. stamina's default hooks would
# count each one again (a Prometheus counter in the default registry) and log it again (a
# structlog line whose wait always reads 0 here, because the backoff sleep is ours: see `call`).
stamina.instrumentation.set_on_retry_hooks(())


def root_cause(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups; `exc` itself otherwise."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def count_error(exc: BaseException) -> bool:
    """Counts `exc` in `ingestor_errors_total` unless a layer below did; True if counted now.

    The mark lives on the exception object, so an error raised by the Stripe client's policy
    and seen again by a caller's policy (hydration, a poll loop) is counted exactly once.
    """
    if getattr(exc, _COUNTED, False):
        return False
    metrics.ERRORS.labels(kind=type(exc).__name__).inc()
    setattr(exc, _COUNTED, True)
    return True


def retry_reason(exc: BaseException) -> str:
    """The `reason` label of `ingestor_api_retries_total` for a retried Stripe request."""
    if isinstance(exc, StripeRateLimited):
        return "rate_limited"
    if isinstance(exc, StripeConnectionError):
        return "connection"
    if isinstance(exc, MalformedResponse):
        return "malformed"
    if not isinstance(exc, StripeError):
        return "other"
    if exc.status == 409 or isinstance(exc, StripeLockTimeout):
        return "conflict"
    if exc.status is not None and exc.status >= 500:
        return "server_error"
    return "should_retry"


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt as the policy judged it (what `on_failure` callbacks receive)."""

    error: BaseException  # as raised, possibly an exception group
    cause: BaseException  # the error that decided: the first real one inside any group
    attempt: int  # 1-based, counting every attempt of this `call`
    will_retry: bool
    delay: float  # seconds before the next attempt; 0 when not retrying


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to retry one kind of operation; `call` runs an operation under it.

    Backoff: before retry n (n failures in the current streak) it waits a random point of
    [jitter_floor * step, step], step = min(cap, base * 2**(n-1)). `jitter_floor=0` is full
    jitter, which spreads a crowd of retrying callers best. A `Retry-After` hint on the error
    is a floor, itself capped at `cap` so a huge value cannot wedge the caller.

    Decision: the error (the first real one inside exception groups) must be an instance of
    `on`, and retriable: `IngestorError.retriable`, overridden by a Stripe error's
    `should_retry` (the `Stripe-Should-Retry` header) when `obey_should_retry`. `attempts`
    bounds the attempts of one `call`; None retries until success, a final error or
    cancellation. The last error is re-raised as it came (groups stay groups).

    Counting: every error once in `ingestor_errors_total` (see `count_error`), and, when
    `api`, every retry once in `ingestor_api_retries_total`.

    Time: the backoff is slept with `sleep` (inject a recorder in tests; asyncio's own sleep
    also runs under a fast-forwarding loop such as looptime). Under `stamina.set_testing`
    every delay is 0 and stamina's attempt count applies.
    """

    what: str
    attempts: int | None = None
    base: float = 0.5
    cap: float = 30.0
    jitter_floor: float = 0.0
    on: tuple[type[BaseException], ...] = (IngestorError,)
    obey_should_retry: bool = True
    api: bool = False
    sleep: Sleep = asyncio.sleep
    rng: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be >= 1 or None, got {self.attempts!r}")
        if self.base < 0 or self.cap < 0:
            raise ValueError("base and cap must be >= 0")
        if not 0 <= self.jitter_floor <= 1:
            raise ValueError(f"jitter_floor must be in [0, 1], got {self.jitter_floor!r}")

    def with_attempts(self, attempts: int | None) -> RetryPolicy:
        return replace(self, attempts=attempts)

    def retriable(self, exc: BaseException) -> bool:
        """Whether `exc` (or the first real error inside it) is worth another attempt."""
        cause = root_cause(exc)
        if not isinstance(cause, self.on):
            return False
        hint = cause.should_retry if isinstance(cause, StripeError) else None
        if self.obey_should_retry and hint is not None:
            return hint
        return bool(getattr(cause, "retriable", True))

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the `failures`-th failure in a row."""
        if stamina.is_testing():
            return 0.0
        step = min(self.cap, self.base * 2.0 ** min(max(failures - 1, 0), _MAX_DOUBLINGS))
        wait = step * (self.jitter_floor + (1.0 - self.jitter_floor) * self.rng())
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap))
        return wait

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        on_failure: Callable[[Failure], None] | None = None,
        fresh: Callable[[BaseException], bool] | None = None,
    ) -> T:
        """`await fn()`, retried under this policy; returns its result or raises its last error.

        `on_failure` sees every failed attempt after it was judged and counted; without one
        the policy logs a warning per failure (`log_failure`). `fresh(cause)` returning True
        starts the backoff over: the failure belongs to a new outage, not the last one (a
        restart loop whose previous generation ran healthily).
        """
        run = _Run(self, on_failure, fresh)
        attempts = self.attempts
        # The first attempt runs bare: most calls succeed at once, and setting up stamina's
        # retry context (tenacity underneath) cost more CPU than a simulated request itself.
        # Under stamina's testing mode its attempt count rules, so stamina runs them all.
        if not stamina.is_testing():
            await run.pause()
            try:
                return await fn()
            except (Exception, BaseExceptionGroup) as exc:
                run.failed(exc)
                if not run.retrying:
                    raise
            if attempts is not None:
                attempts -= 1  # >= 1: `failed` retries only while attempts remain
        # stamina runs the attempts and owns the stop; the backoff itself is `run.pause`, so
        # that it goes through `self.sleep` (stamina always sleeps with the event loop's own).
        async for attempt in stamina.retry_context(
            on=run.decided,
            attempts=attempts,
            timeout=None,
            wait_initial=0.0,
            wait_max=0.0,
            wait_jitter=0.0,
        ):
            with attempt:
                await run.pause()
                try:
                    return await fn()
                except (Exception, BaseExceptionGroup) as exc:
                    run.failed(exc)
                    raise
        raise AssertionError("unreachable: stamina re-raises the last error")

    def log_failure(self, failure: Failure) -> None:
        """The default report of one failed attempt: one warning line."""
        cause = failure.cause
        log.warning(
            f"{self.what} failed; retrying" if failure.will_retry else f"{self.what} failed",
            error=str(cause) or type(cause).__name__,
            error_kind=type(cause).__name__,
            attempt=failure.attempt,
            retry_in_s=round(failure.delay, 3) if failure.will_retry else None,
        )


class _Run:
    """The state of one `RetryPolicy.call`: attempts, the failure streak, the next delay."""

    __slots__ = (
        "_attempts",
        "_fresh",
        "_judged",
        "_on_failure",
        "_pending",
        "_policy",
        "_retry",
        "_streak",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        on_failure: Callable[[Failure], None] | None,
        fresh: Callable[[BaseException], bool] | None,
    ) -> None:
        self._policy = policy
        self._on_failure = on_failure
        self._fresh = fresh
        self._attempts = 0
        self._streak = 0
        self._pending = 0.0
        self._judged: BaseException | None = None
        self._retry = False

    async def pause(self) -> None:
        self._attempts += 1
        delay, self._pending = self._pending, 0.0
        if delay > 0:
            await self._policy.sleep(delay)

    def failed(self, exc: BaseException) -> None:
        policy = self._policy
        cause = root_cause(exc)
        if self._streak and self._fresh is not None and self._fresh(cause):
            self._streak = 0
        self._streak += 1
        count_error(cause)
        retry = policy.retriable(exc) and (
            policy.attempts is None or self._attempts < policy.attempts
        )
        delay = 0.0
        if retry:
            hint = cause.retry_after if isinstance(cause, StripeError) else None
            delay = policy.delay(self._streak, hint)
            if policy.api:
                metrics.API_RETRIES.labels(reason=retry_reason(cause)).inc()
        self._judged, self._retry, self._pending = exc, retry, delay
        failure = Failure(exc, cause, self._attempts, retry, delay)
        if self._on_failure is None:
            policy.log_failure(failure)
        else:
            self._on_failure(failure)

    @property
    def retrying(self) -> bool:
        """Whether the last failed attempt is to be retried."""
        return self._retry

    def decided(self, exc: Exception) -> bool:
        # stamina asks after every failed attempt; anything `failed` did not judge (a
        # cancellation while backing off) is final.
        return exc is self._judged and self._retry


def forever(
    what: str,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    on: tuple[type[BaseException], ...] = (IngestorError,),
    sleep: Sleep = asyncio.sleep,
) -> RetryPolicy:
    """A policy that re-runs an operation after retriable failures until it succeeds.

    For loops above the Stripe client (a poll, a catch-up, a Kafka generation): the client
    already obeyed `Stripe-Should-Retry` for the request that carried it, so here only the
    error's kind decides; a 503 marked "do not retry" must not stop a stream for good.
    """
    return RetryPolicy(
        what, attempts=None, base=base, cap=cap, on=on, obey_should_retry=False, sleep=sleep
    )


def until_set(stop: asyncio.Event) -> Sleep:
    """A backoff sleep that ends early once `stop` is set (a restart loop being stopped)."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()

    return sleep


__all__ = [
    "Failure",
    "RetryPolicy",
    "count_error",
    "forever",
    "retry_reason",
    "root_cause",
    "until_set",
]
