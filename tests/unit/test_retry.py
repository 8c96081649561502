"""The one retry policy: backoff bounds, decisions, counting once, groups, resets, stamina modes."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import stamina

from ingestor import retry
from ingestor.errors import (
    KafkaUnavailable,
    StripeAuthError,
    StripeInvalidRequest,
    StripeServerError,
)
from ingestor.metrics import REGISTRY
from ingestor.retry import Failure, RetryPolicy


class Sleeps:
    """Records backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def errors(kind: str) -> float:
    return REGISTRY.get_sample_value("ingestor_errors_total", {"kind": kind}) or 0.0


def api_retries(reason: str) -> float:
    return REGISTRY.get_sample_value("ingestor_api_retries_total", {"reason": reason}) or 0.0


class Flaky:
    """Fails with the given errors in turn, then returns "done"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def test_full_jitter_spans_zero_to_the_step_and_never_passes_the_cap() -> None:
    """Delay = rng x min(cap, base x 2^(n-1)): 0 at rng 0, the step at rng 1, the cap late on."""
    low = RetryPolicy("t", base=0.5, cap=30.0, rng=lambda: 0.0)
    high = RetryPolicy("t", base=0.5, cap=30.0, rng=lambda: 1.0)
    assert [low.delay(n) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert [high.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert high.delay(7) == 30.0
    assert high.delay(10_000) == 30.0  # no float overflow after a day of retries


def test_jitter_floor_keeps_part_of_the_step() -> None:
    """jitter_floor=0.5 waits at least half of each step (the hydrator's equal jitter)."""
    policy = RetryPolicy("t", base=1.0, cap=10.0, jitter_floor=0.5, rng=lambda: 0.0)
    assert [policy.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


def test_retry_after_is_a_floor_itself_capped() -> None:
    """Retry-After raises a short delay to it, but a huge one stops at the cap."""
    policy = RetryPolicy("t", base=0.1, cap=5.0, rng=lambda: 0.0)
    assert policy.delay(1, retry_after=2.0) == 2.0
    assert policy.delay(1, retry_after=3600.0) == 5.0


async def test_retriable_failures_are_retried_and_each_error_counted_once() -> None:
    """Three KafkaUnavailable then success: three sleeps, three errors counted, the result."""
    sleeps = Sleeps()
    policy = retry.forever("generation", sleep=sleeps)
    before = errors("KafkaUnavailable")
    flaky = Flaky(*[KafkaUnavailable("down") for _ in range(3)])
    assert await policy.call(flaky) == "done"
    assert flaky.calls == 4
    assert len(sleeps.delays) == 3
    assert errors("KafkaUnavailable") - before == 3


async def test_an_error_counted_below_is_not_counted_again_above() -> None:
    """An error that escapes an inner policy (the client's) is counted there, not twice."""
    inner = RetryPolicy("request", attempts=2, api=True, sleep=Sleeps())
    outer = retry.forever("poll", sleep=Sleeps())
    flaky = Flaky(*[StripeServerError("busy", status=503) for _ in range(3)])
    errors_before = errors("StripeServerError")
    retries_before = api_retries("server_error")

    async def request() -> str:
        return await inner.call(flaky)

    assert await outer.call(request) == "done"
    assert flaky.calls == 4
    assert errors("StripeServerError") - errors_before == 3
    # Only the inner policy's retries are API retries: attempts 1 and 3 were retried there.
    assert api_retries("server_error") - retries_before == 2


async def test_a_final_error_is_raised_as_it_came_and_a_group_stays_a_group() -> None:
    """A non-retriable error inside an exception group ends at once, re-raised as the group."""
    group = ExceptionGroup("backfill", [StripeAuthError("revoked", status=401)])
    flaky = Flaky(group)
    with pytest.raises(ExceptionGroup) as info:
        await retry.forever("backfill", sleep=Sleeps()).call(flaky)
    assert info.value is group
    assert flaky.calls == 1


async def test_a_retriable_error_inside_a_group_is_retried() -> None:
    """The first real error inside a group decides, as for a task group's failure."""
    flaky = Flaky(ExceptionGroup("backfill", [StripeServerError("busy", status=502)]))
    assert await retry.forever("backfill", sleep=Sleeps()).call(flaky) == "done"
    assert flaky.calls == 2


async def test_stripe_should_retry_overrides_the_status_at_the_request_layer_only() -> None:
    """should_retry=true retries a 400 and false stops a 503 where obeyed; `forever` loops
    above the client decide by the error's kind alone."""
    obeying = RetryPolicy("request", attempts=3, sleep=Sleeps())
    again = Flaky(StripeInvalidRequest("again", status=400, should_retry=True))
    assert await obeying.call(again) == "done"
    stop = Flaky(StripeServerError("no", status=503, should_retry=False))
    with pytest.raises(StripeServerError):
        await obeying.call(stop)
    assert stop.calls == 1
    loop = Flaky(StripeServerError("no", status=503, should_retry=False))
    assert await retry.forever("poll", sleep=Sleeps()).call(loop) == "done"


async def test_attempts_bound_the_calls_and_failures_see_will_retry() -> None:
    """attempts=3 makes three calls; the callback sees will_retry true, true, then false."""
    seen: list[Failure] = []
    policy = RetryPolicy("t", attempts=3, sleep=Sleeps())
    flaky = Flaky(*[StripeServerError("busy", status=500) for _ in range(5)])
    with pytest.raises(StripeServerError):
        await policy.call(flaky, on_failure=seen.append)
    assert flaky.calls == 3
    assert [(f.attempt, f.will_retry) for f in seen] == [(1, True), (2, True), (3, False)]


async def test_a_first_attempt_that_succeeds_never_builds_a_retry_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The common case costs one call: stamina's retry context is only entered after a
    failure (it cost more CPU than a simulated request)."""

    def refuse(**_kwargs: object) -> None:
        raise AssertionError("retry context built for a call that did not fail")

    monkeypatch.setattr(stamina, "retry_context", refuse)
    flaky = Flaky()
    assert await RetryPolicy("t", attempts=3, sleep=Sleeps()).call(flaky) == "done"
    assert flaky.calls == 1


async def test_a_retry_after_the_bare_first_attempt_waits_its_backoff_and_succeeds() -> None:
    """A first failure outside stamina is still backed off (the first step) and retried, and
    the attempts after it stay numbered from 2 with the bound unchanged."""
    sleeps = Sleeps()
    seen: list[Failure] = []
    policy = RetryPolicy("t", attempts=2, base=1.0, rng=lambda: 1.0, sleep=sleeps)
    flaky = Flaky(StripeServerError("busy", status=500))
    assert await policy.call(flaky, on_failure=seen.append) == "done"
    assert flaky.calls == 2
    assert sleeps.delays == [1.0]
    assert [(f.attempt, f.will_retry) for f in seen] == [(1, True)]


async def test_fresh_failure_starts_the_backoff_over() -> None:
    """A failure after a healthy spell (fresh) waits the first step again, not the next."""
    sleeps = Sleeps()
    policy = replace(retry.forever("generation", base=1.0, cap=100.0, sleep=sleeps), rng=lambda: 1)
    outages = [KafkaUnavailable(str(n)) for n in range(4)]
    flaky = Flaky(*outages)
    await policy.call(flaky, fresh=lambda exc: exc is outages[2])
    assert sleeps.delays == [1.0, 2.0, 1.0, 2.0]


async def test_stamina_testing_mode_zeroes_every_delay_and_sets_attempts() -> None:
    """Under stamina.set_testing the policy neither waits nor exceeds the test's attempts."""
    sleeps = Sleeps()
    flaky = Flaky(*[KafkaUnavailable("down") for _ in range(5)])
    with stamina.set_testing(True, attempts=2), pytest.raises(KafkaUnavailable):
        await retry.forever("generation", sleep=sleeps).call(flaky)
    assert flaky.calls == 2
    assert sleeps.delays == []


async def test_cancellation_while_backing_off_is_not_retried() -> None:
    """Cancelling during a backoff ends the call with CancelledError, no further attempt."""
    entered = asyncio.Event()

    async def stuck(delay: float) -> None:
        entered.set()
        await asyncio.Event().wait()

    flaky = Flaky(KafkaUnavailable("down"))
    task = asyncio.create_task(retry.forever("generation", sleep=stuck).call(flaky))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flaky.calls == 1


async def test_until_set_sleep_ends_early_when_stopped() -> None:
    """The restart loop's backoff returns as soon as stop is set, not after the delay."""
    stop = asyncio.Event()
    sleep = retry.until_set(stop)
    loop = asyncio.get_running_loop()
    started = loop.time()
    loop.call_later(0.05, stop.set)
    await sleep(30.0)
    assert loop.time() - started < 5.0


def test_stamina_own_instrumentation_is_off_so_retries_count_once() -> None:
    """Importing ingestor.retry turns off stamina's hooks (a second counter and log line)."""
    assert stamina.instrumentation.get_on_retry_hooks() == ()
