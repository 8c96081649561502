"""Wires sources, dedupe, hydration, routing and the transactional sink; owns shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from ingestor import clock, metrics, retry
from ingestor.accounts import GONE, AccountDirectory, Change, feed, streams_of
from ingestor.anchors import Anchors, chains
from ingestor.backfill import Backfiller, BackfillStats, Slice, SlicePlan, Timed
from ingestor.committer import Batch, CommitQueue, Committer, Routed
from ingestor.config import Config, KafkaConfig, Loaded, WebhookConfig
from ingestor.errors import (
    CursorExpired,
    Fenced,
    IngestorError,
    KafkaUnavailable,
    MalformedResponse,
    StatePartitionMismatch,
)
from ingestor.events import Api, Event, Hydration, Stream
from ingestor.health import GapAlarm, HealthServer, Readiness
from ingestor.hydrate import Hydrator
from ingestor.intake import DUPLICATE_VERDICTS, WebhookIntake, classify
from ingestor.limits import Priority, fair_key
from ingestor.log import TransactionalLog
from ingestor.pages import (
    V1_EVENTS,
    V1_LIMIT,
    V2_EVENTS,
    Page,
    Skip,
    v1_pages,
    v1_second,
    v2_pages,
)
from ingestor.plan import lost_window, plan_backfill, retention_edge, retention_floor
from ingestor.plan import read_through as plan_read_through
from ingestor.progress import ProgressReporter
from ingestor.ratelimit import RateBudget
from ingestor.route import IngestMode, Router
from ingestor.shards import (
    RELEASE_MARGIN_SECONDS,
    GroupMembership,
    ShardGroup,
    ShardSet,
    shard_of,
    streams_by_shard,
)
from ingestor.sink import Sink
from ingestor.stream import Seen, StreamState
from ingestor.stripe_api import StripeClient
from ingestor.tail import Tail
from ingestor.timespec import parse_since
from ingestor.transport import Transport
from ingestor.webhook import Ack, Delivery, Intake, WebhookServer

log = structlog.get_logger(__name__)

T = TypeVar("T")
T_Timed = TypeVar("T_Timed", bound=Timed)
# A sliced read hydrates this many listed events at once (at least one slice), ahead of the
# one being emitted: enough to keep the hydrator's fetch slots busy past one slow fetch.
PREPARE_AHEAD_EVENTS = 2_000
# A tail more than this far behind catches up in parallel slices instead of one long poll.
CATCH_UP_MIN_GAP_MS = 120_000
# ...and a busy tail hands the gap that built up during its last poll to the slicer too.
BUSY_GAP_MIN_MS = 2_000
# Pushed events wait this long for others before they are queued as one batch per stream:
# at hundreds of deliveries a second that is many events per state snapshot and per
# transaction, for a few ms of latency.
PUSH_LINGER_S = 0.005
# A pushed event another reader holds (claimed, not yet queued) is looked at again this often.
HELD_RETRY_S = 0.01
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_DATA_LOST = 3


def now_ms() -> int:
    return clock.wall_ms()


def _retention_floor(granularity_ms: int) -> int:
    """The oldest created time a read may ask for: Stripe keeps events 30 days."""
    return retention_floor(now_ms(), granularity_ms)


def oldest_first(events: Sequence[T_Timed]) -> list[T_Timed]:
    """Newest-first list order (Stripe's) to publishing order: oldest first by (created,
    position in the list, reversed); events of one second keep Stripe's order."""
    out = list(reversed(events))
    out.sort(key=lambda e: e.created_ms)  # stable
    return out


@dataclass(slots=True)
class RunOutcome:
    """What a run leaves for the exit code: windows really lost, streams parked."""

    lost_windows: list[tuple[str, int, int]] = field(default_factory=list)
    parked: dict[str, str] = field(default_factory=dict)

    def lose(self, stream: str, lo_ms: int, hi_ms: int) -> bool:
        """Records a lost window once; False if it (or one covering it) was recorded."""
        for key, lo, hi in self.lost_windows:
            if key == stream and lo <= lo_ms and hi_ms <= hi:
                return False
        self.lost_windows.append((stream, lo_ms, hi_ms))
        return True


class Pipeline:
    """One generation of the service: restore state, read, commit; rebuilt after Kafka faults."""

    def __init__(
        self,
        config: Config,
        client: StripeClient,
        sink: TransactionalLog,
        hydrator: Hydrator,
        readiness: Readiness,
        streams: Sequence[Stream],
        *,
        backfill: bool,
        since: str | None,
        once: bool,
        outcome: RunOutcome,
    ) -> None:
        self.cfg = config
        self.client = client
        self.sink = sink
        self.hydrator = hydrator
        self.readiness = readiness
        self.streams = list(streams)
        self.backfill = backfill
        self.since = since
        self.once = once
        self.outcome = outcome
        self.router = Router(config.kafka.topic_prefix, firehose=config.kafka.firehose)
        # One transaction's worth queued while one commits: the committer takes what is queued
        # (a transaction costs ~150-300 ms of round trips and markers whatever its size, so
        # fewer, fuller ones are what keeps a backfill off the commit path), and the queue's
        # bound is the memory bound.
        self.queue = CommitQueue(max_items=config.tail.batch_max_events)
        self.sweep_budget = client.budget.share(config.tail.sweep_budget_share)
        if config.tail.sweep_reserved_share > 0:
            # Seed 303: a 429 storm halved the rate while hydration had a backlog, sweeps got
            # 0.4 requests/s, ran slower than the time they covered and were cut.
            self.sweep_budget.reserve(
                config.tail.sweep_reserved_share / config.tail.sweep_budget_share,
                Priority.SWEEP_RESERVED,
            )
        self.gap = GapAlarm(config.alarms.gap_threshold_seconds)
        self.runtimes: dict[Stream, StreamState] = {}
        self.restored = False  # Kafka answered this generation's state restore
        # Webhook intake: tails polling now (strict order wakes them), pushed events waiting
        # to be queued together, and whether deliveries are still taken (not once stopping).
        self.tails: dict[Stream, Tail] = {}
        self.accepting = True
        self._pushed: dict[Stream, list[tuple[Event, Routed, asyncio.Future[int | None]]]] = {}
        self._push_ready = asyncio.Event()
        self._push_idle = asyncio.Event()  # nothing pushed is waiting to be queued
        self._push_idle.set()
        # Set by serve() with stripe.accounts = "all": it sees the events the streams accept.
        self.directory: AccountDirectory | None = None
        # Streams added before the restore: (start, initial scan) for each.
        self._pending: dict[Stream, tuple[int | None, bool]] = {p: (None, True) for p in streams}
        self._restored_state: dict[Stream, StreamState] = {}
        self._ran_before = False  # the state topic held streams at the restore
        self._intake_tg: asyncio.TaskGroup | None = None
        self._api_counts: dict[str, int] = {}
        # Per v1 stream: what busy polls last listed of each recent second (see `_read_slice`).
        self._anchors: dict[Stream, Anchors] = {}
        self._readers: dict[Stream, asyncio.Task[None]] = {}
        self._retry: dict[Stream, asyncio.Event] = {}
        # Streams started at their connection time mid-run: they are never backfilled.
        self._joined_late: set[Stream] = set()
        # Parked because their account left before their reads began.
        self._left: set[Stream] = set()

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Runs until `stop` (or, with --once, until everything available is committed)."""
        # A broker that accepts connections but does not answer holds a restore for up to
        # kafka.request_timeout; a stop must not wait for that (nothing is in flight yet).
        records = await _unless_stopped(self.sink.restore_state(), stop)
        if records is None:
            log.info("stopped while restoring state")
            return
        limit = self.cfg.kafka.max_message_bytes
        restored = StreamState.restore(records, max_message_bytes=limit)
        self._restored_state = dict(restored)
        self._ran_before = bool(restored)
        self.restored = True
        self.readiness.mark_kafka(True)
        self.readiness.mark_restored()
        pending, self._pending = self._pending, {}
        for p, (start, initial) in pending.items():
            self._runtime(p, start, initial=initial)
        if self.directory is not None:
            self._park_unlisted()
        log.info(
            "state restored",
            streams=[p.key for p in self.streams][:50],
            count=len(self.streams),
            resumed=sum(1 for p in self.streams if p in restored),
        )
        try:
            await self._run_tasks(stop)
        finally:
            # Whatever ended this generation, a delivery still waiting learns that its batch
            # will not commit here (503; Stripe retries into the next generation).
            self.accepting = False
            await self.queue.close()
            self._fail_pushed()

    async def _run_tasks(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            committer = tg.create_task(
                Committer(
                    self.queue,
                    self.sink,
                    self.readiness,
                    self.runtimes,
                    self.cfg.tail.batch_max_events,
                ).run()
            )
            flusher = tg.create_task(self._flush_pushed())
            intake = tg.create_task(self._intake())
            stopper = tg.create_task(stop.wait())
            await asyncio.wait([intake, stopper], return_when=asyncio.FIRST_COMPLETED)
            # Stop intake first: new deliveries get 503, readers stop. Readers hold nothing
            # that matters uncommitted: every batch they queued carries its own state
            # snapshot, and what was not queued is re-read. Deliveries already taken are
            # queued and committed with the rest, and answered.
            self.accepting = False
            intake.cancel()
            stopper.cancel()
            # A stop signal drains within the grace period; a finished --once run drains fully.
            grace = self.cfg.alarms.shutdown_grace_seconds if stop.is_set() else None
            try:
                async with asyncio.timeout(grace):
                    await self._push_idle.wait()
                    await self.queue.join()
            except TimeoutError:
                log.error("shutdown deadline passed with batches uncommitted; they will be re-read")
            flusher.cancel()
            committer.cancel()

    async def _intake(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._intake_tg = tg
                for rt in self.runtimes.values():
                    tg.create_task(self._supervise(rt))
        finally:
            self._intake_tg = None

    # --- the stream set ---------------------------------------------------------------------

    def add_streams(
        self, streams: Sequence[Stream], start_ms: int | None, *, initial: bool = False
    ) -> None:
        """Adds streams to the running pipeline (or to the one about to start).

        A stream the state topic has resumes from there. A new one starts at `start_ms` (its
        account's connection time) when it joined after the process's first scan, or at the
        first scan when the service ran before (it connected while the service was down);
        otherwise (None, or a first run) as at start: now, or with `--backfill` after the
        backfill of `backfill.since`. A stream already running that is parked is retried now.
        """
        for p in streams:
            if p in self.runtimes or p in self._pending:
                self._left.discard(p)
                wake = self._retry.get(p)
                if wake is not None and p.key in self.outcome.parked:
                    wake.set()
                continue
            if not self.restored:
                if p not in self._pending:
                    self.streams.append(p)
                self._pending[p] = (start_ms, initial)
                continue
            self.streams.append(p)
            rt = self._runtime(p, start_ms, initial=initial)
            if self._intake_tg is not None:
                self._intake_tg.create_task(self._supervise(rt))
            log.info("stream added", stream=p.key, start=rt.tail_start_ms)

    def park_streams(self, streams: Sequence[Stream], reason: str) -> None:
        """Parks streams whose account left (deauthorized, or gone from the listing): their
        reads stop now, each logs one error, shows in /readyz and the parked metric, and is
        tried again every `alarms.parked_retry_seconds`; the other streams go on."""
        for p in streams:
            if p not in self.runtimes and p not in self._pending:
                continue
            self._park(p.key, reason, "AccountLeft")
            reader = self._readers.get(p)
            if reader is not None:
                reader.cancel()
            else:
                self._left.add(p)  # not reading yet: its first read waits for the retry

    def _park_unlisted(self) -> None:
        """With `accounts = all`, a connected account's stream the state topic holds but the
        first scan did not list (access revoked, or the account removed, while no process
        ran) is parked like one that leaves mid-run: reported, retried, never dropped."""
        apis = configured_apis(self.cfg)
        for p in self._restored_state:
            if p.account is None or p.api not in apis or p in self.runtimes:
                continue
            self.streams.append(p)
            self._runtime(p, None, initial=False)
            self._park(p.key, GONE, "AccountLeft")
            self._left.add(p)

    def nudge(self, stream: Stream) -> None:
        """Polls `stream` now instead of after its (possibly long, idle) interval: for a
        webhook delivery that says the stream has news."""
        tail = self.tails.get(stream)
        if tail is not None:
            tail.nudge()

    def _runtime(self, p: Stream, start_ms: int | None, *, initial: bool) -> StreamState:
        limit = self.cfg.kafka.max_message_bytes
        rt = self._restored_state.get(p)
        if rt is None:
            rt = StreamState(p, max_message_bytes=limit)
            if start_ms is not None and (not initial or self._ran_before):
                rt.set_tail_start(start_ms - start_ms % rt.granularity_ms)
                self._joined_late.add(p)
        if p not in self.runtimes:
            self._api_counts[p.api] = self._api_counts.get(p.api, 0) + 1
            # Summed over a process's pipelines (one per owned shard); serve() subtracts.
            self.readiness.streams += 1
        self.runtimes[p] = rt
        # Exported at 0 once the stream is known (labels() leaves a value already set).
        metrics.CURSOR_EXPIRED.labels(stream=p.key)
        metrics.STREAM_PARKED.labels(stream=p.key)
        metrics.SWEEP_SKIPPED.labels(stream=p.key)
        return rt

    def _park(self, key: str, reason: str, kind: str) -> None:
        if key not in self.outcome.parked:
            log.error(
                "stream parked: an error retrying cannot fix; other streams go on",
                stream=key,
                error=reason,
                kind=kind,
                retry_in_s=self.cfg.alarms.parked_retry_seconds,
            )
        self.outcome.parked[key] = reason
        self.readiness.park(key, reason)
        metrics.STREAM_PARKED.labels(stream=key).set(1)

    # --- streams ----------------------------------------------------------------------------

    async def _supervise(self, rt: StreamState) -> None:
        """Reads one stream; parks it, without touching the others, on an error that
        retrying cannot fix (a connected account that revoked access: 401/403) or when its
        account leaves (`park_streams`: deauthorized, or gone from the listing).

        A parked stream logs one error, sets `ingestor_stream_parked`, shows in /readyz's
        detail and is tried again every `alarms.parked_retry_seconds` (or at once when its
        account is listed again); `--once` finishes the other streams and exits 1.
        """
        p = rt.stream
        key = p.key
        structlog.contextvars.bind_contextvars(stream=key)
        # Each stream is its own party in the limiters' fair queueing (see ratelimit).
        fair_key.set(key)
        wake = self._retry.setdefault(p, asyncio.Event())
        while True:
            if p in self._left:
                self._left.discard(p)
                if self.once:
                    return  # parked before its first read: --once reports it and exits 1
                await self._parked_wait(wake)
                continue
            try:
                # A task of its own, so that park_streams can stop this stream's reads alone.
                async with asyncio.TaskGroup() as tg:
                    reader = tg.create_task(self._read_stream(rt))
                    self._readers[p] = reader
                if not reader.cancelled():
                    return
            except (IngestorError, BaseExceptionGroup) as raised:
                exc = _unwrap(raised)
                if not isinstance(exc, IngestorError) or exc.retriable:
                    raise
                self._park(key, f"{type(exc).__name__}: {exc}", type(exc).__name__)
                if self.once:
                    return
            finally:
                self._readers.pop(p, None)
            if self.once:
                return
            await self._parked_wait(wake)

    async def _parked_wait(self, wake: asyncio.Event) -> None:
        """The slow retry of a parked stream: `alarms.parked_retry_seconds`, or until its
        account is listed again."""
        wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cfg.alarms.parked_retry_seconds):
                await wake.wait()

    def _unpark(self, rt: StreamState) -> None:
        key = rt.stream.key
        if self.outcome.parked.pop(key, None) is not None:
            log.info("stream unparked: reads succeed again", stream=key)
            self.readiness.unpark(key)
            metrics.STREAM_PARKED.labels(stream=key).set(0)

    async def _read_stream(self, rt: StreamState) -> None:
        g = rt.granularity_ms
        now = now_ms()
        if rt.tail_start_ms is None:
            start = now - now % g
            if self.backfill:
                # Backfill owns [since, tail_start), the tail [tail_start, ...): disjoint by
                # created time, so the handover can neither gap nor double. Starting the tail a
                # sweep window back lets its seen window catch events that are still arriving
                # late; older history is settled by the time the backfill reads it.
                back = int(self.cfg.tail.sweep_window_seconds * 1000)
                start = start - back - (start - back) % g
            rt.set_tail_start(start)
        elif rt.sweep_lo_ms is None and rt.watermark_ms is not None:
            # A head written before sweep bounds were kept: sweep a window behind where the
            # stop began, as a sweep then would have.
            rt.set_sweep_lo(rt.watermark_ms - int(self.cfg.tail.sweep_window_seconds * 1000))
        if self.backfill and rt.stream not in self._joined_late:
            self._plan_backfill(rt, now)
        # Before anything is read past it: a stream not read through for 30 days lost events.
        self._check_read_through(rt, now)
        # Persist the tail start at once: events created after it must never be skipped,
        # even if this process dies before its first event arrives.
        await self._enqueue(rt, [], "tail")
        tail = self._make_tail(rt)
        if rt.backfill is not None and not rt.backfill.complete:
            if self.cfg.backfill.tail_during_backfill and not self.once:
                with self._polling(tail):
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._run_backfill(rt))
                        tg.create_task(tail.run())
                return
            await self._run_backfill(rt)

        async def catch_up() -> None:
            await self._read_gap(rt, CATCH_UP_MIN_GAP_MS)

        if self.once:
            await tail.run_once(catch_up)
        else:
            with self._polling(tail):
                await tail.run(catch_up)

    @contextlib.contextmanager
    def _polling(self, tail: Tail) -> Iterator[None]:
        """Makes `tail` the one a strict-order delivery of its stream wakes, while it runs."""
        self.tails[tail.stream] = tail
        try:
            yield
        finally:
            if self.tails.get(tail.stream) is tail:
                del self.tails[tail.stream]

    def _check_read_through(self, rt: StreamState, now: int) -> None:
        """Raises the gap alarm and reports a lost window from the time the stream was last
        read through (not its newest event: a quiet stream is healthy)."""
        read_through = plan_read_through(
            rt.read_through_ms, rt.watermark_ms, rt.tail_start_ms, rt.backfill is not None
        )
        if read_through is None:
            return
        self.gap.check(rt.stream.key, read_through, now)
        self._check_retention(rt, read_through, now, "tail")

    async def _read_gap(self, rt: StreamState, min_gap_ms: int) -> tuple[int, int] | None:
        """Reads from the watermark (less the overlap) up to the last whole second in parallel
        ordered slices; returns (new events, pages read), or None when the gap is smaller than
        `min_gap_ms`.

        A poll walks its window with one sequential cursor and holds it in memory: after
        downtime, or while events arrive faster than one cursor reads, that is slow and
        unbounded. The backfill machinery reads the gap instead: concurrently, oldest first,
        with bounded buffering, deduped against the seen window. Events that turn up late
        behind it are caught by the next poll's overlap and by the sweep.
        """
        g = rt.granularity_ms
        started = now_ms()
        lo = max(rt.poll_lo(int(self.cfg.tail.overlap_seconds * 1000)), _retention_floor(g))
        through = started
        if min_gap_ms >= CATCH_UP_MIN_GAP_MS:
            # A catch-up stops before the second that may still be filling (v1 has whole
            # seconds); the polls after it read from there.
            through = started - 1000
            hi = through - through % g
        else:
            # A busy poll reads everything visible as it starts, the current unit of time
            # included (what fills it later is in the next poll's overlap): otherwise each
            # event would wait a poll more, a second or two, before it is read at all.
            hi = started + g - started % g
        if hi - lo < min_gap_ms:
            return None
        (log.info if min_gap_ms >= CATCH_UP_MIN_GAP_MS else log.debug)(
            "reading a gap behind the watermark in slices", gap_s=round((hi - lo) / 1000)
        )

        async def emit(s: Slice[Routed]) -> None:
            read = s.events or []
            newest = max((i.created_ms for i in read), default=None)
            # Checked again: a sweep running meanwhile may have published or taken some of
            # these since the slice was fetched.
            items = [i for i in read if rt.is_new(i)]
            if len(items) < len(read):
                skipped = len(read) - len(items)
                metrics.DUPLICATES_SKIPPED.labels(source=rt.stream.api).inc(skipped)
            await self._enqueue(rt, items, "tail", items, newest)

        busy: _Busy | None = None
        if min_gap_ms < CATCH_UP_MIN_GAP_MS and rt.stream.api == "v1":
            busy = _Busy(
                self._anchors.setdefault(rt.stream, Anchors()), functools.partial(_known, rt)
            )
            busy.anchors.prune(lo)
        with rt.reading(lo):
            # A catch-up's density is unknown (often a quiet stretch after a backfill); a busy
            # poll's is known to be high and its latency counts, so it fans out at once.
            probe = min_gap_ms >= CATCH_UP_MIN_GAP_MS
            stats = await self._read_sliced(rt, lo, hi, "tail", emit, probe=probe, busy=busy)
        rt.set_read_through(through)
        self._unpark(rt)
        (log.info if min_gap_ms >= CATCH_UP_MIN_GAP_MS else log.debug)(
            "caught up", events=stats.events, pages=stats.pages, splits=stats.splits
        )
        return stats.events, stats.pages

    def _plan_backfill(self, rt: StreamState, now: int) -> None:
        assert rt.tail_start_ms is not None
        since_ms = parse_since(self.since or self.cfg.backfill.since, now)
        plan = plan_backfill(rt.backfill, since_ms, rt.tail_start_ms, now, rt.granularity_ms)
        if plan.clamped_from is not None:
            log.warning(
                "backfill start clamped to Stripe's 30-day retention",
                requested=plan.clamped_from,
                clamped_to=retention_edge(now),
            )
        if plan.action in ("new", "extend"):
            rt.set_backfill(plan.progress)
        elif plan.action == "complete":
            assert plan.progress is not None
            log.info(
                "backfill already complete", start=plan.progress.start_ms, end=plan.progress.end_ms
            )
        elif plan.action == "resume":
            assert plan.progress is not None
            self._check_retention(rt, plan.progress.cursor_ms, now, "backfill")

    def _check_retention(self, rt: StreamState, cursor_ms: int, now: int, what: str) -> None:
        """Reports a cursor that aged out of retention (once per window); a backfill then
        resumes at the retention edge."""
        lost = lost_window(cursor_ms, now)
        if lost is None:
            return
        p = rt.stream
        edge = lost[1]
        if what == "backfill" and rt.backfill is not None:
            rt.advance_backfill(edge - edge % rt.granularity_ms)
        if not self.outcome.lose(p.key, cursor_ms, edge):
            return
        metrics.CURSOR_EXPIRED.labels(stream=p.key).inc()
        log.error(
            "cursor aged out of Stripe's 30-day retention: events in the window are lost",
            what=what,
            lost_from=cursor_ms,
            lost_to=edge,
            recover="re-read the affected objects with Stripe's list endpoints or a Sigma export "
            "for that window; the ingestor resumes at the retention edge",
        )

    def _make_tail(self, rt: StreamState) -> Tail:
        p = rt.stream

        def poll_ok() -> None:
            self.readiness.mark_poll_ok()
            self._unpark(rt)
            if rt.read_through_ms is not None:
                self.gap.check(p.key, rt.read_through_ms, now_ms())

        async def accept(events: list[Event], newest: int | None, priority: Priority) -> int:
            return await self._accept(rt, events, newest, priority)

        tail_cfg = self.cfg.tail
        w = self.cfg.webhook
        if w.enabled and w.poll_interval_seconds > 0:
            # Pushes bring the latency; polls reconcile and can be rarer.
            tail_cfg = dataclasses.replace(tail_cfg, poll_interval=w.poll_interval_seconds)
        return Tail(
            rt,
            lambda lo, hi, extra, priority: self._read_window(
                p, lo, hi, extra, priority, skip=functools.partial(_known, rt)
            ),
            accept,
            tail_cfg,
            sweep_budget=self.sweep_budget,
            on_poll_ok=poll_ok,
            clock_ms=now_ms,
            floor_ms=lambda: _retention_floor(rt.granularity_ms),
            read_gap=lambda: self._read_gap(rt, BUSY_GAP_MIN_MS),
            idle_cap=lambda: self.idle_cap(p.api),
        )

    def idle_cap(self, api: Api) -> float:
        """The longest an idle stream of `api` waits between polls: idle polls of every stream
        together use at most `tail.idle_budget_share` of the global rate, and those of one
        api at most that share of its operation's rate (`GET /v1/events`, `/v2/core/events`).
        """
        share = self.cfg.tail.idle_budget_share
        total = len(self.runtimes)
        of_api = self._api_counts.get(api, 0)
        glob = self.client.limits.global_budget.configured_rate
        op = self.cfg.stripe.endpoint_rate_limit
        return max(total / (share * glob), of_api / (share * op))

    async def _read_window(
        self,
        p: Stream,
        lo_ms: int,
        hi_ms: int | None,
        extra: Sequence[RateBudget],
        priority: Priority,
        *,
        skip: Skip | None = None,
    ) -> AsyncIterator[list[Event]]:
        """Pages of the window; `skip` leaves out (and counts as duplicates) v1 events the
        caller already has, unbuilt (see `_known`)."""
        types = self.cfg.stripe.types
        pages: AsyncIterator[Page]
        if p.api == "v1":
            pages = v1_pages(
                self.client,
                account=p.account,
                created_gte=lo_ms // 1000,
                created_lt=None if hi_ms is None else -(-hi_ms // 1000),
                types=types,
                extra_budgets=extra,
                priority=priority,
                skip=skip,
            )
        else:
            pages = v2_pages(
                self.client,
                account=p.account,
                created_gte_ms=lo_ms,
                created_lt_ms=hi_ms,
                types=types,
                extra_budgets=extra,
                priority=priority,
            )
        async for page in pages:
            if page.skipped:
                metrics.DUPLICATES_SKIPPED.labels(source=p.api).inc(page.skipped)
            yield page.events

    async def _read_slice(
        self, p: Stream, lo_ms: int, hi_ms: int, priority: Priority, busy: _Busy | None
    ) -> AsyncIterator[list[Event]]:
        """Pages of one slice of a sliced read, in list order. For a busy v1 poll (`busy`),
        a slice of one second is read by parallel walks from what the last poll listed of
        it (`anchors.chains`) instead of one page per round trip, events it has published
        are left out unbuilt (`_known`, as in a sequential poll), and what it lists is kept
        for the next poll."""
        if busy is None or hi_ms - lo_ms != 1000 or lo_ms % 1000:
            async for page in self._read_window(p, lo_ms, hi_ms, (), priority):
                yield page
            return
        started = now_ms()
        listing = busy.anchors.get(lo_ms)
        walks = chains(listing, V1_LIMIT) if listing is not None else [(None, None)]
        second = await v1_second(
            self.client,
            account=p.account,
            second=lo_ms // 1000,
            walks=walks,
            types=self.cfg.stripe.types,
            limit=V1_LIMIT,
            priority=priority,
            skip=busy.known,
        )
        skipped = sum(page.skipped for page in second.pages)
        if skipped:
            metrics.DUPLICATES_SKIPPED.labels(source=p.api).inc(skipped)
        # Complete once read after its second ended: then only late events can join it.
        busy.anchors.put(lo_ms, second.ids, complete=started >= hi_ms)
        for listed in second.pages:
            yield listed.events

    # --- turning events into batches --------------------------------------------------------

    async def _prepare(
        self,
        events: list[Event],
        mode: IngestMode,
        known: int | None = None,
        priority: Priority = Priority.HYDRATE,
    ) -> list[Routed]:
        """Hydrates thin events (their fetches waiting at `priority`) and routes every event
        to its records, in the order given; `known` is a hydrator stamp taken after the events
        were listed (default: now)."""
        hydrations: list[Hydration | None]
        if events and events[0].api == "v2":
            hydrations = list(await self.hydrator.hydrate_all(events, known, priority))
        else:
            hydrations = [None] * len(events)
        out: list[Routed] = []
        for event, hydration in zip(events, hydrations, strict=True):
            if (
                hydration is not None
                and hydration.status == "failed"
                and self.cfg.hydrate.on_failure == "dlq"
            ):
                record = self.router.dlq_record(
                    event,
                    "hydration_failed",
                    hydration.error or "hydration failed",
                    ingest_mode=mode,
                    max_bytes=self.cfg.kafka.max_message_bytes,
                )
                log.warning("event sent to DLQ", event_id=event.id, reason=hydration.error)
                out.append(
                    Routed(event.id, event.type, event.api, event.created_ms, [record], True)
                )
                continue
            records = self.router.route(event, hydration, ingest_mode=mode)
            out.append(Routed(event.id, event.type, event.api, event.created_ms, records))
        return out

    async def _accept(
        self,
        rt: StreamState,
        events: list[Event],
        newest: int | None,
        priority: Priority = Priority.HYDRATE,
    ) -> int:
        """Tail intake: drop what is already published or not the tail's, publish the rest.

        `events` come newest first, as Stripe lists them; they are queued oldest first by
        (created, list position). No lock: the ids are taken (`claim`) before hydration, so a
        concurrent reader of the stream skips them and a slow hydration holds nobody else.
        """
        assert rt.tail_start_ms is not None
        start = rt.tail_start_ms
        fresh, dups = rt.claim(e for e in events if e.created_ms >= start)
        if dups:
            metrics.DUPLICATES_SKIPPED.labels(source=rt.stream.api).inc(dups)
        if self.directory is not None:
            self.directory.observe(fresh)
        try:
            fresh = oldest_first(fresh)
            items = await self._prepare(fresh, "tail", priority=priority)
            await self._enqueue(rt, items, "tail", fresh, newest)
        finally:
            rt.release(fresh)  # a no-op for what was queued (queueing marks it seen)
        return len(fresh)

    async def _enqueue(
        self,
        rt: StreamState,
        items: list[Routed],
        mode: IngestMode,
        events: Sequence[Seen] = (),
        newest: int | None = None,
        backfill_cursor: int | None = None,
    ) -> int | None:
        """Queues a batch of `rt` (its state snapshot taken as it is queued); returns the
        batch's number in the queue, or None when nothing was queued."""
        overlap = int(self.cfg.tail.overlap_seconds * 1000)
        sweep = int(self.cfg.tail.sweep_window_seconds * 1000)

        def build() -> Batch | None:
            rt.mark(events)
            if newest is not None:
                rt.advance_watermark(newest)
            if backfill_cursor is not None:
                rt.advance_backfill(backfill_cursor)
            if rt.tail_start_ms is not None:
                rt.prune_unread(overlap, sweep)
            state = rt.snapshot()
            if not items and not state:
                return None
            return Batch(rt.stream, items, state, mode)

        return await self.queue.put(build)

    # --- webhook deliveries -----------------------------------------------------------------

    async def push(self, delivery: Delivery) -> tuple[Ack, str]:
        """A verified delivery in: (answer, reason). COMMITTED only once a transaction that
        holds the event committed; DUPLICATE only once everything queued before the answer
        was decided committed (a seen id may still be queued); otherwise UNAVAILABLE.

        Decided from bounded state (`intake.classify`). In strict order the stream's poll is
        woken first and the pushed payload is published only if that poll did not list it.
        """
        if not self.restored:
            return Ack.UNAVAILABLE, "starting"
        stream = Stream(delivery.api, delivery.account)
        rt = self.runtimes.get(stream)
        if rt is None:
            return Ack.IGNORED, "stream"
        if stream.key in self.outcome.parked:
            return Ack.UNAVAILABLE, "parked"
        if rt.tail_start_ms is None:
            return Ack.UNAVAILABLE, "starting"
        probe = self._pushed_event(delivery)
        overlap = int(self.cfg.tail.overlap_seconds * 1000)
        sweep = int(self.cfg.tail.sweep_window_seconds * 1000)
        polled = False
        while True:
            if not self.accepting:
                return Ack.UNAVAILABLE, "stopping"
            verdict = classify(
                probe.created_ms,
                seen=rt.has_seen(probe.id, probe.created_ms),
                tail_start_ms=rt.tail_start_ms,
                horizon_ms=rt.intake_horizon(probe.created_ms, overlap, sweep),
                backfill=rt.backfill,
            )
            if verdict in DUPLICATE_VERDICTS:
                reason = "polled" if polled and verdict == "seen" else verdict
                if await self.queue.wait_committed(self.queue.queued):
                    return Ack.DUPLICATE, reason
                return Ack.UNAVAILABLE, "kafka"
            if verdict == "backfill_pending":
                return Ack.UNAVAILABLE, verdict
            if self.cfg.webhook.order == "strict" and not polled:
                tail = self.tails.get(stream)
                if tail is None:
                    # Nothing polls this stream now (a backfill first): publishing the push
                    # could overtake older events of its object.
                    return Ack.UNAVAILABLE, "starting"
                await tail.poll_after()
                polled = True
                continue
            fresh, _ = rt.claim([probe])
            if not fresh:
                # Another reader holds it (a sweep, say): it queues it or lets go soon.
                await asyncio.sleep(HELD_RETRY_S)
                continue
            return await self._publish_pushed(rt, probe, delivery)

    def _pushed_event(self, delivery: Delivery) -> Event:
        if delivery.event is not None:
            return delivery.event
        if delivery.notification is None:
            raise ValueError("a delivery carries either a v1 event or a v2 notification")
        # The notification is the thin event as the list shows it; enough to decide and claim.
        return Event.from_v2(delivery.notification, delivery.account, self.client.api_version)

    async def _publish_pushed(
        self, rt: StreamState, probe: Event, delivery: Delivery
    ) -> tuple[Ack, str]:
        """Publishes a claimed pushed event through the same stages as a polled one."""
        handed = False
        try:
            try:
                event = probe if probe.api == "v1" else await self._fetch_v2(probe)
            except IngestorError as exc:
                log.warning("pushed thin event not fetched", event_id=probe.id, error=str(exc))
                return Ack.UNAVAILABLE, "fetch_failed"
            [item] = await self._prepare([event], "webhook")
            done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._pushed.setdefault(rt.stream, []).append((probe, item, done))
            handed = True  # from here the flusher marks (queues) or releases it
            self._push_idle.clear()
            self._push_ready.set()
            seq = await done
        finally:
            if not handed:
                rt.release([probe])
        if seq is None or not await self.queue.wait_committed(seq):
            return Ack.UNAVAILABLE, "kafka"
        return Ack.COMMITTED, "pushed"

    async def _fetch_v2(self, thin: Event) -> Event:
        """`GET /v2/core/events/{id}` with the context as Stripe-Context; published in the
        shape the list gives (the v2 envelope's `event` is the thin event, without `data`),
        so a consumer sees the same value whichever path saw the event first."""
        body = await self.client.request_json(
            "GET", f"/v2/core/events/{thin.id}", account=thin.account, api="v2"
        )
        body.pop("data", None)
        event = Event.from_v2(body, thin.account, self.client.api_version)
        if event.id != thin.id:
            raise MalformedResponse(f"asked for event {thin.id}, got {event.id}")
        return event

    async def _flush_pushed(self) -> None:
        """Queues pushed events, one batch per stream every PUSH_LINGER_S at most: group
        commit, so concurrent deliveries share state snapshots and transactions."""
        while True:
            await self._push_ready.wait()
            await asyncio.sleep(PUSH_LINGER_S)
            self._push_ready.clear()
            groups, self._pushed = self._pushed, {}
            try:
                for stream, entries in groups.items():
                    rt = self.runtimes[stream]
                    events = [e for e, _, _ in entries]
                    seq: int | None = None
                    try:
                        seq = await self._enqueue(rt, [i for _, i, _ in entries], "webhook", events)
                    finally:
                        rt.release(events)  # a no-op for what was queued
                        for *_, done in entries:
                            if not done.done():
                                done.set_result(seq)
            finally:
                self._fail_pushed(groups)
                if not self._pushed:
                    self._push_idle.set()

    def _fail_pushed(
        self,
        groups: dict[Stream, list[tuple[Event, Routed, asyncio.Future[int | None]]]] | None = None,
    ) -> None:
        """Lets go of pushed events not queued (their deliveries get 503)."""
        for stream, entries in (self._pushed if groups is None else groups).items():
            self.runtimes[stream].release(e for e, _, _ in entries)
            for *_, done in entries:
                if not done.done():
                    done.set_result(None)
        if groups is None:
            self._pushed = {}
            self._push_idle.set()

    # --- backfill ---------------------------------------------------------------------------

    async def _read_sliced(
        self,
        rt: StreamState,
        lo: int,
        hi: int,
        mode: IngestMode,
        emit: Callable[[Slice[Routed]], Awaitable[None]],
        *,
        report: bool = False,
        probe: bool = False,
        busy: _Busy | None = None,
    ) -> BackfillStats:
        """Reads [lo, hi) in concurrent slices and hands them to `emit` oldest first; `probe`
        starts with one slice that splits by the density its first page shows (a catch-up
        holding a few events then costs one request, not one per initial slice).

        Slices are hydrated and routed as they are handed over oldest first, not as their
        pages are listed: the listing runs ahead, so an object's events on later pages and
        slices are already known (a hydrator `stamp()` taken after each page) when its first
        fetch goes out, and share that fetch, in flight or kept in the hydrator's cache. Every
        result still comes from a request sent after its event was listed (`Hydrator`), so it
        is never older than the event. Up to `PREPARE_AHEAD_EVENTS` events (at least one
        slice) are hydrated at once, so one slow fetch does not idle the hydrator, while
        `emit` still gets the slices one at a time in order: per-object order and the
        emitted ranges are those of the slices, as before.
        """
        p = rt.stream
        g = rt.granularity_ms
        b = self.cfg.backfill
        # Enough initial slices to use the concurrency at once, none wider than slice_seconds.
        width = max(g, min(b.slice_seconds * 1000, -(-(hi - lo) // b.concurrency)))
        if probe:
            width = max(g, hi - lo)
        plan = SlicePlan[Event].build(lo, hi, width, g)
        limits = self.client.limits
        list_op = limits.operation("GET", V1_EVENTS if p.api == "v1" else V2_EVENTS)
        requested: set[str] = set()  # topics whose creation a fetch already started
        # Per slice (its upper bound, which a split never moves): the hydrator's tick after
        # the last page listed, so after every event the slice holds was known.
        listed: dict[int, int] = {}

        async def fetch(lo: int, hi: int) -> AsyncIterator[list[Event]]:
            # One slice's ids: a server that repeats an event on two pages of one walk must
            # not get it published twice (the backfill keeps no seen window).
            walked: set[str] = set()
            priority = Priority.BACKFILL if mode == "backfill" else Priority.TAIL
            async for page in self._read_slice(p, lo, hi, priority, busy):
                listed[hi] = self.hydrator.stamp()
                self.readiness.mark_poll_ok()
                if self.directory is not None and mode == "tail":
                    self.directory.observe(page)
                events = [e for e in page if e.id not in walked]
                walked.update(e.id for e in events)
                dups = len(page) - len(events)
                if mode == "tail":
                    # Slices are disjoint, so the seen window alone keeps this duplicate-free.
                    events, seen = rt.filter_new(events)
                    dups += seen
                if dups:
                    metrics.DUPLICATES_SKIPPED.labels(source=p.api).inc(dups)
                if new_topics := self._topics_of(events) - requested:
                    requested.update(new_topics)
                    tg.create_task(self._warm_topics(new_topics))
                yield events

        ahead: asyncio.Queue[tuple[Slice[Event], asyncio.Task[list[Routed]]] | None]
        ahead = asyncio.Queue()
        preparing = 0  # events handed over and not yet emitted
        drained = asyncio.Event()

        async def hand_over(s: Slice[Event]) -> None:
            nonlocal preparing
            while preparing >= PREPARE_AHEAD_EVENTS:
                drained.clear()
                await drained.wait()
            events = s.events or []
            known = listed.pop(s.hi_ms, None)
            preparing += len(events)
            ahead.put_nowait((s, tg.create_task(self._prepare(events, mode, known))))

        async def emit_in_order() -> None:
            nonlocal preparing
            while (item := await ahead.get()) is not None:
                s, prepared = item
                await emit(Slice(s.lo_ms, s.hi_ms, await prepared, pages=s.pages))
                preparing -= len(s.events or [])
                drained.set()

        backfiller = Backfiller(
            plan,
            fetch,
            hand_over,
            concurrency=self.cfg.backfill.concurrency,
            max_buffered_events=self.cfg.backfill.max_buffered_events,
            eager_split=probe,
            room=lambda: limits.has_room(list_op),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                emitter = tg.create_task(emit_in_order())
                progress: asyncio.Task[None] | None = None
                if report:
                    start = rt.backfill.start_ms if rt.backfill is not None else lo
                    reporter = ProgressReporter(backfiller, p.key, start_ms=start, end_ms=hi)
                    progress = tg.create_task(reporter.run())
                await _retrying(backfiller.run, mode)
                ahead.put_nowait(None)
                await emitter
                if progress is not None:
                    progress.cancel()
        except BaseExceptionGroup as group:
            # Warm-ups raise nothing (Kafka faults are left to the commit), so without the
            # progress task a group holds only one error, the read's or the emitter's: raised
            # bare, as before the warm-ups (a tail poll's retry looks for the error itself).
            if report or len(group.exceptions) != 1:
                raise
            raise group.exceptions[0]  # noqa: B904 (a "from" would replace its own cause)
        return backfiller.stats

    def _topics_of(self, events: Sequence[Event]) -> set[str]:
        """The topics `events` will be routed to (hydration never changes a topic)."""
        topics = {self.router.topic_for(e.type) for e in events}
        if self.router.firehose and events:
            topics.add(self.router.firehose_topic)
        return topics

    async def _warm_topics(self, topics: set[str]) -> None:
        """Creates the topics a read just met while the reads go on, so the commit that needs
        them (slices are committed oldest first, often seconds later) finds them ready instead
        of waiting for creation and new leaders (0.5-3 s for a first run's ~20 topics). A
        failure is left to that commit, which handles it like any other Kafka fault."""
        with contextlib.suppress(IngestorError):
            await self.sink.ensure_topics(topics)

    async def _run_backfill(self, rt: StreamState) -> None:
        bf = rt.backfill
        assert bf is not None
        log.info("backfill starting", start=bf.cursor_ms, end=bf.end_ms)

        async def emit(s: Slice[Routed]) -> None:
            items: list[Routed] = list(s.events or [])
            await self._enqueue(rt, items, "backfill", backfill_cursor=s.hi_ms)

        s = await self._read_sliced(rt, bf.cursor_ms, bf.end_ms, "backfill", emit, report=True)
        log.info(
            "backfill complete",
            events=s.events,
            pages=s.pages,
            splits=s.splits,
            seconds=round(clock.monotonic() - s.started, 1),
        )


@dataclass(frozen=True, slots=True)
class _Busy:
    """What a busy v1 poll's sliced read knows: the stream's anchors and its `_known`."""

    anchors: Anchors
    known: Skip


def _known(rt: StreamState, event_id: str, created_ms: int) -> bool:
    """Whether a tail read may leave the event out unbuilt: it is published already (so
    `claim` would drop it) and created at or before the watermark (so it cannot move it:
    the watermark a poll reaches is the same with or without it).

    Exact for the reads of `Tail`: each holds its lower bound in `rt.reading` while it runs,
    so no id inside its range leaves the seen window before its events are claimed, and a
    failed transaction rebuilds the whole generation from the state topic, not this window.
    """
    wm = rt.watermark_ms
    return wm is not None and created_ms <= wm and rt.has_seen(event_id, created_ms)


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None when `stop` is set first (`work` is then cancelled)."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(work)
        stopper = tg.create_task(stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        task.cancel()  # a no-op when it finished first
    return None if task.cancelled() else task.result()


def _unwrap(exc: BaseException) -> BaseException:
    """The first real error inside (nested) task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


async def _retrying(fn: Callable[[], Awaitable[object]], what: str) -> None:
    """Re-runs `fn` after retriable failures with capped exponential backoff; `fn` may run a
    task group (the backfiller does): the policy judges the error inside the group."""
    await retry.forever(what).call(fn)


# --- process entry ------------------------------------------------------------------------


def configured_apis(config: Config) -> list[Api]:
    """The apis read for every account: v1 and/or v2 (`stripe.v1`, `stripe.v2`)."""
    apis: list[Api] = []
    if config.stripe.v1:
        apis.append("v1")
    if config.stripe.v2:
        apis.append("v2")
    return apis


def discover_streams(config: Config) -> list[Stream]:
    """(api, account) pairs of the accounts config names; `all` adds the platform here and
    the connected accounts through an `AccountDirectory`."""
    accounts: list[str | None] = []
    wanted = config.stripe.accounts or ("platform",)
    for a in wanted:
        accounts.append(None if a in ("platform", "all") else a)
    seen: dict[Stream, None] = {}
    for acct in accounts:
        for api in configured_apis(config):
            seen[Stream(api, acct)] = None
    return list(seen)


class ShardRouter:
    """The webhook intake's generation: hands each delivery to the running pipeline of its
    account's shard; one this process does not own (or whose pipeline is restarting) is
    answered UNAVAILABLE, so Stripe retries it (and polling reads it meanwhile)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.generations: dict[int, Pipeline] = {}

    async def push(self, delivery: Delivery) -> tuple[Ack, str]:
        generation = self.generations.get(shard_of(delivery.account, self.shards))
        if generation is None:
            return Ack.UNAVAILABLE, "kafka"
        return await generation.push(delivery)


ShardGroupFactory = Callable[[KafkaConfig, ShardSet], GroupMembership]


async def serve(
    loaded: Loaded,
    *,
    backfill: bool = False,
    since: str | None = None,
    once: bool = False,
    stop: asyncio.Event | None = None,
    readiness: Readiness | None = None,
    transport: Transport | None = None,
    open_log: Callable[[KafkaConfig], TransactionalLog] = Sink,
    shard_group: ShardGroupFactory | None = None,
    http: bool = True,
    receiver: Receiver | None = None,
) -> int:
    """Runs the service until `stop` is set (or, with `once`, until caught up).

    Streams map to shards (`shards.shard_of`); each shard this process owns runs its own
    generations of `Pipeline` over its streams, with its own transactional log (opened with
    the shard's number, so its transactional id fences any zombie of that shard). Which shards
    are owned: those the group on the coordination topic assigns (`shards.ShardGroup`) when
    the log is Kafka's and there are several shards; every shard with one shard, with `once`
    (a one-shot run) or with another log.

    The seams the simulation fills: `transport` answers the Stripe client (default: aiohttp
    over the network), `open_log` opens a shard's transactional log for each generation
    (default: Kafka), `shard_group` makes the group membership (default: Kafka's group when
    `open_log` is Kafka's and kafka.shards > 1, else none: every shard is owned),
    `http=False` leaves out the health server, and `receiver` opens what feeds webhook
    deliveries to the intake when `webhook.enabled` (default: the HTTP receiver,
    `ingestor.webhook.WebhookServer`, on its own listener; a delivery for a shard this
    process does not own is answered 503).
    """
    cfg = loaded.config
    stop = stop or asyncio.Event()
    readiness = readiness or Readiness(max_poll_age_seconds=cfg.alarms.ready_max_poll_age_seconds)
    outcome = RunOutcome()
    health: contextlib.AbstractAsyncContextManager[object] = (
        HealthServer(readiness, host=cfg.http.host, port=cfg.http.port)
        if http
        else contextlib.nullcontext()
    )
    if once:
        shard_group = None
    elif shard_group is None and open_log is Sink and cfg.kafka.shards > 1:
        # One shard needs no group: the process owns it, exactly as before shards existed.
        shard_group = ShardGroup
    if cfg.kafka.shard != 0:
        log.warning(
            "kafka.shard is deprecated and ignored: shards are assigned by the group",
            shards=cfg.kafka.shards,
        )
    async with (
        health,
        StripeClient(cfg.stripe, transport=transport) as client,
        Hydrator.for_client(client, cfg.hydrate) as hydrator,
    ):
        streams = discover_streams(cfg)
        directory: AccountDirectory | None = None
        if "all" in cfg.stripe.accounts:
            directory = AccountDirectory(client, cfg.stripe.accounts_rescan_seconds)
            await directory.scan()
        by_shard = streams_by_shard(streams, cfg.kafka.shards)
        grouped = shard_group is not None
        # Webhooks feed a running service; `--once` reads what is there and exits.
        intake = WebhookIntake(cfg, streams, stop) if cfg.webhook.enabled and not once else None
        router = ShardRouter(cfg.kafka.shards)
        if intake is not None:
            intake.generation = router
            if directory is not None:
                # Deliveries of connected accounts are taken once their account is found.
                take = _intake_feed(intake, configured_apis(cfg))
                take(directory.joined())
                directory.subscribe(take)

        async def run_shard(shard: int, shard_stop: asyncio.Event) -> None:
            shard_streams = by_shard[shard]
            if not shard_streams and directory is None:
                # No streams, no producer: owning it only keeps it from another process.
                # (With `accounts = all` any shard may gain a connected account at a rescan.)
                if not once:
                    await shard_stop.wait()
                return
            structlog.contextvars.bind_contextvars(shard=shard)
            kafka = dataclasses.replace(cfg.kafka, shard=shard)
            probe = "kafka" if cfg.kafka.shards == 1 else f"kafka.shard-{shard}"
            try:
                while True:
                    try:
                        await _run_generations(
                            cfg,
                            kafka,
                            client,
                            hydrator,
                            readiness,
                            shard_streams,
                            probe,
                            router,
                            directory,
                            open_log=open_log,
                            stop=shard_stop,
                            backfill=backfill,
                            since=since,
                            once=once,
                            outcome=outcome,
                        )
                        return
                    except Fenced as exc:
                        if not grouped:
                            raise
                        # A zombie that still thinks it owns the shard, or this process after
                        # a pause: the group revokes the shard from whichever it really is
                        # within a session timeout; if it is still ours then, take it back.
                        log.error(
                            "fenced: another producer took this shard; retrying if still owned",
                            shard=shard,
                            error=str(exc),
                            retry_in_s=cfg.kafka.session_timeout,
                        )
                        await retry.until_set(shard_stop)(cfg.kafka.session_timeout)
                        if shard_stop.is_set():
                            return
            finally:
                readiness.remove_probe(probe)

        try:
            async with _open_receiver(cfg.webhook, intake, receiver), asyncio.TaskGroup() as tg:
                rescans = (
                    tg.create_task(directory.run()) if directory is not None and not once else None
                )
                release = max(1.0, cfg.kafka.rebalance_timeout - RELEASE_MARGIN_SECONDS)
                owned = ShardSet(tg, run_shard, release_timeout=release)
                try:
                    if shard_group is not None:
                        await shard_group(cfg.kafka, owned).run(stop)
                    else:
                        await owned.assigned(range(cfg.kafka.shards))
                        # Until every shard is done (--once) or `stop`; then they drain.
                        if once:
                            await _unless_stopped(asyncio.wait(owned.tasks()), stop)
                        else:
                            await stop.wait()
                finally:
                    await owned.release_all()
                    if rescans is not None:
                        rescans.cancel()
        except BaseExceptionGroup as exc:
            raise _unwrap(exc) from None
    if once and outcome.lost_windows:
        return EXIT_DATA_LOST
    if once and outcome.parked:
        log.error("streams parked; their events were not read", parked=outcome.parked)
        return EXIT_FAILURE
    return EXIT_OK


def _intake_feed(intake: WebhookIntake, apis: Sequence[Api]) -> Callable[[Change], None]:
    """A directory subscriber that lets the webhook intake take the found accounts' streams."""

    def apply(change: Change) -> None:
        for j in change.joined:
            intake.add_streams(streams_of(j.account, apis))

    return apply


Receiver = Callable[[WebhookConfig, Intake], contextlib.AbstractAsyncContextManager[object]]
"""Opens the source of webhook deliveries (the HTTP receiver) around the service's run."""


def _open_receiver(
    w: WebhookConfig, intake: WebhookIntake | None, receiver: Receiver | None
) -> contextlib.AbstractAsyncContextManager[object]:
    if intake is None:
        return contextlib.nullcontext()
    if receiver is not None:
        return receiver(w, intake)
    return WebhookServer(
        intake,
        host=w.host,
        port=w.port,
        path=w.path,
        secrets=[s.reveal() for s in w.secrets],
        tolerance_seconds=w.tolerance_seconds,
        max_body_bytes=w.max_body_bytes,
        # The intake answers UNAVAILABLE itself at ack_timeout_seconds, with its reason; the
        # server's own limit is the backstop behind it.
        ack_timeout_seconds=w.ack_timeout_seconds + 1.0,
    )


async def _run_generations(
    cfg: Config,
    kafka: KafkaConfig,
    client: StripeClient,
    hydrator: Hydrator,
    readiness: Readiness,
    streams: Sequence[Stream],
    probe: str,
    router: ShardRouter,
    directory: AccountDirectory | None,
    *,
    open_log: Callable[[KafkaConfig], TransactionalLog],
    stop: asyncio.Event,
    backfill: bool,
    since: str | None,
    once: bool,
    outcome: RunOutcome,
) -> None:
    """One shard's generations: a Pipeline over its log until `stop`, rebuilt from the state
    topic after each Kafka failure."""
    restart = retry.forever("kafka generation", on=(KafkaUnavailable,), sleep=retry.until_set(stop))
    generation: Pipeline | None = None

    async def run_generation() -> None:
        nonlocal generation
        generation = None
        if stop.is_set():
            return
        async with open_log(kafka) as sink:

            async def kafka_ok(sink: TransactionalLog = sink) -> bool:
                return sink.healthy

            readiness.add_probe(probe, kafka_ok)
            generation = Pipeline(
                cfg,
                client,
                sink,
                hydrator,
                readiness,
                streams,
                backfill=backfill,
                since=since,
                once=once,
                outcome=outcome,
            )
            unsubscribe: Callable[[], None] | None = None
            if directory is not None:
                generation.directory = directory
                shards = cfg.kafka.shards

                def owns(account: str | None) -> bool:
                    return shard_of(account, shards) == kafka.shard

                apply = feed(generation, configured_apis(cfg), owns)
                # What was found so far (with its starts), then each change as it is found.
                apply(directory.joined())
                unsubscribe = directory.subscribe(apply)
            router.generations[kafka.shard] = generation
            try:
                await generation.run(stop)
            finally:
                if unsubscribe is not None:
                    unsubscribe()
                router.generations.pop(kafka.shard, None)
                if generation.restored:
                    readiness.streams -= len(generation.runtimes)

    def kafka_down(f: retry.Failure) -> None:
        # The last transaction's outcome is unknown: the next generation rebuilds
        # from the state topic (what Kafka really holds) instead of guessing.
        readiness.mark_kafka(False)
        log.warning(
            "kafka unavailable; restarting from committed state",
            error=str(f.cause),
            retry_in_s=round(f.delay, 2),
        )

    def fresh(_cause: BaseException) -> bool:
        # A generation that restored state was healthy: this is a new outage, so the
        # backoff starts over.
        return generation is not None and generation.restored

    try:
        await restart.call(run_generation, on_failure=kafka_down, fresh=fresh)
    except BaseExceptionGroup as exc:
        raise _unwrap(exc) from None


def main(loaded: Loaded, *, backfill: bool, since: str | None, once: bool) -> int:
    """Process entry for `ingestor run` (logging is set up by the CLI): signals, exit code."""

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await serve(loaded, backfill=backfill, since=since, once=once, stop=stop)
        except (IngestorError, BaseExceptionGroup) as exc:
            cause = _unwrap(exc)
            if isinstance(cause, StatePartitionMismatch):
                log.error("fatal", error=str(cause), kind=type(cause).__name__)
                return EXIT_CONFIG
            if isinstance(cause, Fenced):
                log.error("fenced: another instance owns this shard; exiting", error=str(cause))
            elif isinstance(cause, IngestorError):
                log.error("fatal", error=str(cause), kind=type(cause).__name__)
            else:
                raise
            return EXIT_FAILURE

    return asyncio.run(_main())


__all__ = ["CursorExpired", "Pipeline", "main", "serve"]
