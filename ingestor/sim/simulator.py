"""Simulator: the in-memory Stripe account (events, objects, clock, runtime knobs), no HTTP."""

from __future__ import annotations

import dataclasses
import random
import re
from bisect import bisect
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import Any

from ingestor.clock import wall_ms
from ingestor.sim.catalog import KINDS, Catalog, Kind, TypeInfo, describe
from ingestor.sim.ids import IdMaker
from ingestor.sim.objects import ObjectStore
from ingestor.sim.problems import ApiError
from ingestor.sim.scenario import Faults, Scenario, load_scenario
from ingestor.sim.store import EventStore
from ingestor.sim.views import Views

DAY_MS = 86_400_000
AUTHORIZED = "account.application.authorized"
DEAUTHORIZED = "account.application.deauthorized"


class _Mix:
    """A weighted choice of event types, drawn with one random number."""

    def __init__(self, type_ixs: list[int], weights: Iterable[float]) -> None:
        self.type_ixs = type_ixs
        self.cum = list(accumulate(weights))
        if not self.cum or self.cum[-1] <= 0:
            raise ValueError("a type mix needs a positive total weight")

    def pick(self, rng: random.Random) -> int:
        return self.type_ixs[bisect(self.cum, rng.random() * self.cum[-1])]


class Simulator:
    """Everything a simulated Stripe account holds; time moves with `clock_ms` (by default the
    process's clock, `ingestor.clock`, so under a simulated clock visibility, retention and live
    generation follow simulated time) plus an offset tests can advance; live events are
    generated lazily on each `tick`."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        seed: int = 0,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.scenario = scenario = scenario or load_scenario(None)
        self.seed = seed
        self.catalog = Catalog.load(scenario.stripe_fixtures)
        self.catalog.check(scenario)
        self._clock_ms = clock_ms
        start_ms = int(scenario.start_time * 1000) if scenario.start_time else None
        self._offset_ms = (start_ms - clock_ms()) if start_ms else 0
        # History hangs off the configured start exactly, so a fixed start_time is reproducible.
        self._history_end_ms = start_ms if start_ms else self.now_ms()
        self.rng = random.Random(seed)
        self.fault_rng = random.Random(seed ^ 0x5EED_FA17)
        self.events = EventStore()
        self.objects = ObjectStore()
        self.evt_ids = IdMaker(seed, "evt")
        self.obj_ids = {k.name: IdMaker(seed, "o" + k.id_prefix) for k in KINDS}
        self.kinds: list[Kind] = list(KINDS)
        self.kind_ix = {k.name: i for i, k in enumerate(self.kinds)}
        self.accounts: list[str | None] = [None]
        self.account_ix: dict[str | None, int] = {None: 0}
        # Connect: when accounts connected mid-run, which are revoked, and the connected
        # account each account.application.* event (on the platform's stream) names.
        self.connected_ms: dict[str, int] = {}
        self.revoked: set[str] = set()
        self.event_account: dict[int, str] = {}
        for acct in scenario.accounts:
            self.add_account(acct)
        self.types: list[TypeInfo] = []
        self.type_ix: dict[tuple[str, str], int] = {}
        self._pools: dict[tuple[int, int], list[int]] = {}
        self.views = Views(self)
        self.mix = {
            api: _Mix([self.register_type(t, api) for t, _ in w], (x for _, x in w))
            for api, w in (("v1", scenario.v1_types), ("v2", scenario.v2_types))
        }
        # Runtime knobs (POST /_sim/config changes them).
        self.faults: Faults = scenario.faults
        # API path prefixes the injected faults apply to; empty = every API path.
        self.fault_paths: tuple[str, ...] = ()
        self.rate_limit = scenario.rate_limit
        self.endpoint_rate_limit = scenario.endpoint_rate_limit
        self.concurrency_limit = scenario.concurrency_limit
        self.endpoint_concurrency_limit = scenario.endpoint_concurrency_limit
        self.latency_ms = (scenario.latency_min_ms, scenario.latency_max_ms)
        self.late_share = scenario.late_share
        self.lag_seconds = (scenario.lag_min_seconds, scenario.lag_max_seconds)
        self.counts: dict[str, dict[str, int]] = {}
        self._generate_history()
        self.live_rate = 0.0
        self._live_next_ms = 0.0
        self._burst_next_ms = 0.0
        self.set_live_rate(scenario.live_rate)

    # --- clock ---------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return self._clock_ms() + self._offset_ms

    def advance_clock(self, seconds: float) -> None:
        """Jumps simulated time forward (late events come due, old ones age out) without making
        the live generator produce the skipped stretch."""
        delta = int(seconds * 1000)
        self._offset_ms += delta
        self._live_next_ms += delta
        self._burst_next_ms += delta
        self.tick()

    def retention_cutoff_ms(self, now_ms: int | None = None) -> int:
        now = self.now_ms() if now_ms is None else now_ms
        return now - int(self.scenario.retention_days * DAY_MS)

    # --- registries ----------------------------------------------------------------------------

    def add_account(self, account: str) -> int:
        if account not in self.account_ix:
            self.account_ix[account] = len(self.accounts)
            self.accounts.append(account)
        return self.account_ix[account]

    def register_type(self, name: str, api: str) -> int:
        ix = self.type_ix.get((api, name))
        if ix is None:
            info = describe(name, api)
            ix = len(self.types)
            self.types.append(info)
            self.type_ix[(api, name)] = ix
            self.views.add_type(info)
        return ix

    def types_matching(self, api: str, pattern: str) -> list[int]:
        """Registered type ids matching a name or a `*` wildcard pattern."""
        if "*" not in pattern:
            ix = self.type_ix.get((api, pattern))
            return [] if ix is None else [ix]
        rx = re.compile(".*".join(re.escape(p) for p in pattern.split("*")) + r"\Z")
        return [i for i, t in enumerate(self.types) if t.api == api and rx.match(t.name)]

    # --- generation ----------------------------------------------------------------------------

    def _pick_account(self) -> int:
        n = len(self.accounts)
        if n == 1 or self.rng.random() < self.scenario.platform_share:
            return 0
        return 1 + self.rng.randrange(n - 1)

    def _object_for(self, info: TypeInfo, account: int, created_ms: int) -> int:
        assert info.kind is not None
        kind = self.kind_ix[info.kind.name]
        pool = self._pools.setdefault((account, kind), [])
        if pool and info.action != "created" and self.rng.random() >= self._p_new:
            # Favour recent objects: most of an object's events come soon after its creation.
            obj = pool[-1 - self.rng.randrange(min(64, len(pool)))]
            if not self.objects.deleted[obj]:
                return obj
        obj = self.objects.add(kind, account, created_ms)
        self.views.add_object(obj)
        pool.append(obj)
        return obj

    def make_event(
        self,
        type_ix: int,
        account: int,
        created_ms: int,
        *,
        visible_at: int | None = None,
        obj: int | None = None,
    ) -> int:
        """Creates one event (and touches its object); returns its serial."""
        info = self.types[type_ix]
        version = 0
        if info.kind is None:
            obj = -1
        else:
            if obj is None:
                obj = self._object_for(info, account, created_ms)
            version = self.objects.touch(obj, info.status, info.deletes)
        stream = self.events.stream_for(self.accounts[account], info.api)
        assert stream is not None
        at = created_ms if visible_at is None else visible_at
        serial = self.events.add(created_ms, type_ix, obj, version, stream, at)
        self.views.add_event(serial, info.api)
        return serial

    @property
    def _p_new(self) -> float:
        return 1.0 / self.scenario.events_per_object

    def _generate_history(self) -> None:
        s, rng = self.scenario, self.rng
        now = self._history_end_ms
        span = int(s.history_span_seconds * 1000)
        start = now - span
        # Times carry a burst flag in the low bit so one integer sort orders everything.
        stamps = [(start + int(rng.random() * span)) << 1 for _ in range(s.history_events)]
        for _ in range(s.history_bursts):
            second = (start + int(rng.random() * span)) // 1000
            stamps.extend(
                ((second * 1000 + rng.randrange(1000)) << 1) | 1 for _ in range(s.burst_size)
            )
        stamps.sort()
        v1, v2 = self.mix["v1"], self.mix["v2"]
        for stamp in stamps:
            if stamp & 1:
                self.make_event(v1.pick(rng), 0, stamp >> 1)
                continue
            mix = v2 if rng.random() < s.v2_share else v1
            self.make_event(mix.pick(rng), self._pick_account(), stamp >> 1)

    def set_live_rate(self, rate: float, burst_interval_seconds: float | None = None) -> None:
        now = self.now_ms()
        self.live_rate = rate
        if burst_interval_seconds is not None:
            self.scenario = dataclasses.replace(
                self.scenario, live_burst_interval_seconds=burst_interval_seconds
            )
        self._live_next_ms = now + (1000.0 / rate if rate > 0 else 0.0)
        interval = self.scenario.live_burst_interval_seconds
        self._burst_next_ms = now + interval * 1000.0 if interval > 0 else 0.0

    def _visible_at(self, created_ms: int) -> int:
        if self.late_share > 0 and self.rng.random() < self.late_share:
            lo, hi = self.lag_seconds
            return created_ms + int(self.rng.uniform(lo, hi) * 1000)
        return created_ms

    def tick(self) -> None:
        """Brings the account up to now: due live events are created, due late events appear."""
        now = self.now_ms()
        s = self.scenario
        if self.live_rate > 0:
            step = 1000.0 / self.live_rate
            while self._live_next_ms <= now:
                created = int(self._live_next_ms)
                mix = self.mix["v2"] if self.rng.random() < s.v2_share else self.mix["v1"]
                self.make_event(
                    mix.pick(self.rng),
                    self._pick_account(),
                    created,
                    visible_at=self._visible_at(created),
                )
                self._live_next_ms += step
        if s.live_burst_interval_seconds > 0 and self._burst_next_ms:
            while self._burst_next_ms <= now:
                created = int(self._burst_next_ms)
                for _ in range(s.burst_size):
                    self.make_event(self.mix["v1"].pick(self.rng), 0, created)
                self._burst_next_ms += s.live_burst_interval_seconds * 1000.0
        self.events.release(now)

    # --- control surface -----------------------------------------------------------------------

    def add_events(
        self,
        count: int = 1,
        *,
        type: str | None = None,
        account: str | None = None,
        api: str = "v1",
        lag_seconds: float = 0.0,
        created: float | None = None,
        object_id: str | None = None,
    ) -> list[str]:
        """Creates `count` events now (or at `created`, unix seconds) that become visible
        `lag_seconds` after max(created, now); returns their ids."""
        if api not in ("v1", "v2"):
            raise ValueError("api must be 'v1' or 'v2'")
        if count < 0 or lag_seconds < 0:
            raise ValueError("count and lag_seconds must be >= 0")
        self.tick()
        now = self.now_ms()
        created_ms = now if created is None else int(created * 1000)
        visible_at = max(created_ms, now) + int(lag_seconds * 1000)
        acct = 0 if account is None else self.add_account(account)
        obj = None
        if object_id is not None:
            obj = self.find_object(object_id)
            if obj is None:
                raise ValueError(f"no such object {object_id!r}")
        fixed = None if type is None else self.register_type(type, api)
        if fixed is not None and obj is not None:
            kind = self.types[fixed].kind
            if kind is None or self.kind_ix[kind.name] != self.objects.kind[obj]:
                raise ValueError(f"{type!r} events are not about {object_id!r}")
        ids = []
        for _ in range(count):
            t = self.mix[api].pick(self.rng) if fixed is None else fixed
            serial = self.make_event(t, acct, created_ms, visible_at=visible_at, obj=obj)
            ids.append(self.views.event_id(serial))
        self.events.release(now)
        return ids

    def connect_account(self, account: str, *, lag_seconds: float = 0.0) -> str:
        """Connects `account` now: an `account.application.authorized` event on the
        platform's stream (its `account` names the connected account; it becomes visible
        `lag_seconds` later, as Stripe's list is eventually consistent), the account listed by
        `GET /v1/accounts` (created now) and readable from now on; returns the event's id."""
        self.tick()
        now = self.now_ms()
        self.add_account(account)
        self.revoked.discard(account)
        self.connected_ms[account] = now
        return self._connect_event(AUTHORIZED, account, now, int(lag_seconds * 1000))

    def revoke_account(self, account: str) -> str:
        """Revokes the platform's access to `account` now: reads for it answer 403, it leaves
        the `GET /v1/accounts` listing and an `account.application.deauthorized` event is
        on the platform's stream; events keep happening in it. Returns the event's id."""
        self.tick()
        now = self.now_ms()
        self.revoked.add(account)
        return self._connect_event(DEAUTHORIZED, account, now)

    def _connect_event(self, type_name: str, account: str, now: int, lag_ms: int = 0) -> str:
        type_ix = self.register_type(type_name, "v1")
        serial = self.make_event(type_ix, 0, now, visible_at=now + lag_ms)
        self.event_account[serial] = account
        self.events.release(now)
        return self.views.event_id(serial)

    def find_object(self, object_id: str) -> int | None:
        for ix, kind in enumerate(self.kinds):
            if object_id.startswith(kind.id_prefix):
                obj = self.views.find_object(ix, object_id)
                if obj is not None:
                    return obj
        return None

    def set_faults(
        self,
        faults: Faults | None = None,
        *,
        rate_limit: float | None = None,
        endpoint_rate_limit: float | None = None,
        concurrency_limit: int | None = None,
        endpoint_concurrency_limit: int | None = None,
        latency_ms: tuple[float, float] | None = None,
        late_share: float | None = None,
        lag_seconds: tuple[float, float] | None = None,
        live_rate: float | None = None,
        fault_paths: Sequence[str] | None = None,
        **probabilities: float,
    ) -> None:
        """Changes faults (a whole Faults, or single probabilities by name), the limits (global
        and per-operation rates, concurrency caps; 0 = none), latency, lateness or live rate at
        runtime. `fault_paths` limits the faults to API paths
        starting with one of the given prefixes (e.g. `/v1/customers/`); empty = every path."""
        new = faults or self.faults
        if probabilities:
            new = dataclasses.replace(new, **probabilities)
        if new.total() > 1.0:
            raise ValueError("fault probabilities add up to more than 1")
        self.faults = new
        if fault_paths is not None:
            if isinstance(fault_paths, str) or not all(isinstance(p, str) for p in fault_paths):
                raise ValueError("fault_paths must be a list of path prefixes")
            self.fault_paths = tuple(fault_paths)
        if rate_limit is not None:
            self.rate_limit = float(rate_limit)
        if endpoint_rate_limit is not None:
            self.endpoint_rate_limit = float(endpoint_rate_limit)
        if concurrency_limit is not None:
            self.concurrency_limit = int(concurrency_limit)
        if endpoint_concurrency_limit is not None:
            self.endpoint_concurrency_limit = int(endpoint_concurrency_limit)
        if latency_ms is not None:
            lo, hi = float(latency_ms[0]), float(latency_ms[1])
            if not 0 <= lo <= hi:
                raise ValueError("need 0 <= latency min <= max")
            self.latency_ms = (lo, hi)
        if late_share is not None:
            self.late_share = float(late_share)
        if lag_seconds is not None:
            self.lag_seconds = (float(lag_seconds[0]), float(lag_seconds[1]))
        if live_rate is not None:
            self.set_live_rate(float(live_rate))

    def faults_apply(self, path: str) -> bool:
        """Whether injected faults may hit a request for `path` (see `fault_paths`)."""
        return not self.fault_paths or path.startswith(self.fault_paths)

    def truth(self) -> list[dict[str, Any]]:
        """Every event made visible so far, in order of visibility: {id, api, type, object_id,
        account, created, created_ms, visible_ms, serial (the tie-break of equal created_ms in
        Stripe's list order)}."""
        import orjson

        rows: list[dict[str, Any]] = orjson.loads(self.truth_bytes())["events"]
        return rows

    def warm(self) -> int:
        """Renders every event made so far into the render cache (see Views.warm)."""
        self.tick()
        return self.views.warm()

    def truth_bytes(self) -> bytes:
        self.tick()
        return self.views.truth_bytes()

    def count(self, endpoint: str, status: str) -> None:
        per = self.counts.setdefault(endpoint, {})
        per[status] = per.get(status, 0) + 1

    def counters(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.counts.items()}

    def reset_counters(self) -> None:
        self.counts.clear()

    def api_error_for_account(self, account: str | None) -> ApiError | None:
        if account is None or (account in self.account_ix and account not in self.revoked):
            return None
        return ApiError(
            403,
            f"The provided key does not have access to account '{account}' (or that account "
            "does not exist). Application access may have been revoked.",
            code="account_invalid",
        )
