"""Webhook intake: the decision rules, numbered commits, the tail's wake-up, the answers."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Sequence

import pytest

from ingestor import config
from ingestor.committer import Batch, CommitQueue
from ingestor.config import TailConfig
from ingestor.events import Event, Stream
from ingestor.intake import WebhookIntake, classify, type_wanted
from ingestor.limits import Priority
from ingestor.ratelimit import RateBudget
from ingestor.state import BackfillProgress
from ingestor.stream import StreamState
from ingestor.tail import Tail
from ingestor.webhook import Ack, Delivery

T0 = 1_000_000_000
HORIZON = T0 + 50_000


def decide(created: int, *, seen: bool = False, bf: BackfillProgress | None = None) -> str:
    return classify(created, seen=seen, tail_start_ms=T0, horizon_ms=HORIZON, backfill=bf)


def test_a_seen_id_is_a_duplicate_wherever_it_was_created() -> None:
    """An id in the seen window is a duplicate before any time rule applies."""
    assert decide(T0 + 60_000, seen=True) == "seen"
    assert decide(T0 - 1, seen=True) == "seen"


def test_an_event_older_than_the_prune_horizon_is_settled_by_polling() -> None:
    """Stripe's retry days later: created before every read that could still return it, so
    polling published it (or never will read it): a duplicate, with no id kept for it."""
    assert decide(HORIZON - 1) == "settled"
    assert decide(HORIZON) == "new"
    assert decide(T0 + 10 * 86_400_000) == "new"


def test_before_the_tail_start_the_backfill_decides_by_its_cursor() -> None:
    """Below the tail start a running backfill owns the range: a duplicate once its cursor
    passed the event, otherwise Stripe must retry; outside any backfill it is history this
    process never ingests."""
    bf = BackfillProgress(start_ms=T0 - 100_000, end_ms=T0, cursor_ms=T0 - 50_000)
    assert decide(T0 - 60_000, bf=bf) == "backfilled"
    assert decide(T0 - 50_000, bf=bf) == "backfill_pending"
    assert decide(T0 - 1, bf=bf) == "backfill_pending"
    assert decide(T0 - 200_000, bf=bf) == "before_start"
    assert decide(T0 - 1) == "before_start"
    done = dataclasses.replace(bf, cursor_ms=T0)
    assert decide(T0 - 1, bf=done) == "backfilled"


def test_type_filter_follows_stripe_wildcards() -> None:
    """`stripe.types` empty takes every type; `charge.*` takes charge types only."""
    assert type_wanted("charge.updated", ())
    assert type_wanted("charge.updated", ("charge.*",))
    assert not type_wanted("invoice.paid", ("charge.*",))


def _batch(n: int) -> Batch:
    return Batch(Stream("v1"), [], {b"k%d" % n: b"v"}, "webhook")


async def test_commit_queue_numbers_batches_and_reports_commits_in_order() -> None:
    """Batches are numbered as queued; a waiter for batch n returns True once n committed."""
    q = CommitQueue(100)
    assert await q.put(lambda: _batch(1)) == 1
    assert await q.put(lambda: None) is None  # nothing queued, no number used
    assert await q.put(lambda: _batch(2)) == 2
    waiter = asyncio.create_task(q.wait_committed(2))
    taken = await q.take(10)
    await asyncio.sleep(0)
    assert not waiter.done()
    await q.done(len(taken))
    assert await waiter is True
    assert q.committed == 2


async def test_commit_waiters_wake_as_commits_pass_their_batch_only() -> None:
    """Waiters for batches 1..3 registered out of order: a commit of two batches wakes those
    of 1 and 2 (True) and leaves the one for 3 waiting until its own commit."""
    q = CommitQueue(100)
    for n in range(3):
        await q.put(functools.partial(_batch, n))
    waiters = {seq: asyncio.create_task(q.wait_committed(seq)) for seq in (3, 1, 2)}
    await asyncio.sleep(0)
    assert len(await q.take(10)) == 3
    await q.done(2)
    await asyncio.sleep(0)
    assert waiters[1].done()
    assert waiters[2].done()
    assert not waiters[3].done()
    await q.done(1)
    assert [await waiters[s] for s in (1, 2, 3)] == [True, True, True]


async def test_a_closed_queue_refuses_batches_and_tells_waiters_they_failed() -> None:
    """After close (failed transaction, generation over) no batch is queued and a waiter for
    an uncommitted batch gets False: its delivery is never answered as committed."""
    q = CommitQueue(100)
    seq = await q.put(lambda: _batch(1))
    assert seq == 1
    waiter = asyncio.create_task(q.wait_committed(seq))
    await asyncio.sleep(0)
    await q.close()
    assert await waiter is False
    built: list[int] = []

    def build() -> Batch:
        built.append(2)
        return _batch(2)

    assert await q.put(build) is None
    assert built == []


class _Source:
    def __init__(self) -> None:
        self.rt = StreamState(Stream("v1"))
        self.rt.set_tail_start(T0)
        self.reads = 0
        self.first = asyncio.Event()

    async def read(
        self, lo: int, hi: int | None, extra: Sequence[RateBudget], priority: Priority
    ) -> AsyncIterator[list[Event]]:
        self.reads += 1
        self.first.set()
        await asyncio.sleep(0.01)
        empty: list[Event] = []
        yield empty

    async def accept(self, events: list[Event], newest: int | None, priority: int = 0) -> int:
        return len(events)


async def test_poll_after_wakes_a_sleeping_poll_loop_and_waits_for_a_fresh_poll() -> None:
    """With a poll interval of an hour, poll_after still returns within moments, and only
    after a poll that started after the call."""
    src = _Source()
    tail = Tail(
        src.rt,
        src.read,
        src.accept,
        TailConfig(poll_interval=3600, sweep_window_seconds=0),
        sweep_budget=None,
        clock_ms=lambda: T0 + 1000,
    )
    runner = asyncio.create_task(tail.run())
    try:
        async with asyncio.timeout(5):
            await src.first.wait()
            before = src.reads
            await tail.poll_after()
            assert src.reads > before
            await tail.poll_after()
            assert src.reads > before + 1
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


def _config(**webhook: object) -> config.Config:
    w = config.WebhookConfig(
        enabled=True,
        secrets=(config.Secret("whsec_x"),),
        **webhook,  # type: ignore[arg-type]  # test overrides
    )
    return dataclasses.replace(
        config.Config(), webhook=w, stripe=config.StripeConfig(types=("charge.*",))
    )


def _delivery(event_type: str = "charge.updated", account: str | None = None) -> Delivery:
    event = Event("evt_1", event_type, "v1", account, T0, False, None, "ch_1", {})
    return Delivery("v1", "evt_1", event_type, T0, account, event, None)


class _Generation:
    def __init__(self, answer: tuple[Ack, str] | None) -> None:
        self.answer = answer
        self.calls = 0

    async def push(self, delivery: Delivery) -> tuple[Ack, str]:
        self.calls += 1
        if self.answer is None:
            await asyncio.Event().wait()  # never answers
        assert self.answer is not None
        return self.answer


async def test_intake_ignores_streams_and_types_it_does_not_ingest() -> None:
    """A delivery for an account or api not read, or a type outside stripe.types, is
    IGNORED (200, nothing published) without reaching the pipeline."""
    gen = _Generation((Ack.COMMITTED, "pushed"))
    intake = WebhookIntake(_config(), [Stream("v1")], asyncio.Event())
    intake.generation = gen
    assert await intake(_delivery(account="acct_1Other")) is Ack.IGNORED
    assert await intake(_delivery("invoice.paid")) is Ack.IGNORED
    assert gen.calls == 0
    assert await intake(_delivery()) is Ack.COMMITTED


async def test_intake_answers_unavailable_between_generations_when_stopping_and_late() -> None:
    """No generation running (Kafka down, restarting), a stop begun, or no answer within
    ack_timeout_seconds: UNAVAILABLE, so Stripe retries."""
    stop = asyncio.Event()
    intake = WebhookIntake(_config(ack_timeout_seconds=0.05), [Stream("v1")], stop)
    assert await intake(_delivery()) is Ack.UNAVAILABLE
    intake.generation = _Generation(None)
    assert await intake(_delivery()) is Ack.UNAVAILABLE  # timed out
    intake.generation = _Generation((Ack.COMMITTED, "pushed"))
    stop.set()
    assert await intake(_delivery()) is Ack.UNAVAILABLE
