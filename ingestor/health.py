"""Health: readiness, the /healthz /readyz /metrics server, and the cursor gap alarm."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ingestor.clock import monotonic, wall_ms
from ingestor.listener import Listener
from ingestor.logs import mask_secrets
from ingestor.metrics import CURSOR_GAP_ALARM, READY, REGISTRY

log = structlog.get_logger("ingestor.health")

# --- readiness --------------------------------------------------------------------------------

Probe = Callable[[], Awaitable[bool]]


class Readiness:
    """What /readyz reports: Kafka reachable, state restored, and a recent successful poll.

    The pipeline calls the `mark_*` methods; probes (e.g. "is the sink's producer healthy")
    run only when /readyz is asked, so a dead broker shows up even between pipeline calls.
    """

    def __init__(
        self,
        *,
        max_poll_age_seconds: float = 60.0,
        probe_timeout_seconds: float = 2.0,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.kafka_ok = False
        self.state_restored = False
        self.last_poll_ok_monotonic: float | None = None
        self.max_poll_age_seconds = max_poll_age_seconds
        self.probe_timeout_seconds = probe_timeout_seconds
        self._clock = clock
        self._probes: dict[str, Probe] = {}
        self.parked: dict[str, str] = {}
        self.streams = 0
        READY.set(0)

    def mark_kafka(self, ok: bool) -> None:
        self.kafka_ok = ok
        self._publish()

    def mark_restored(self) -> None:
        self.state_restored = True
        self._publish()

    def mark_poll_ok(self) -> None:
        """Call after any successful Stripe page read (tail poll or backfill slice page)."""
        self.last_poll_ok_monotonic = self._clock()
        self._publish()

    def park(self, stream: str, reason: str) -> None:
        """A stream stopped on an error retrying cannot fix: a detail of /readyz, which goes
        not-ready only once every stream is parked (the others still flow)."""
        self.parked[stream] = reason
        self._publish()

    def unpark(self, stream: str) -> None:
        self.parked.pop(stream, None)
        self._publish()

    def add_probe(self, name: str, probe: Probe) -> None:
        """A check run on each /readyz hit; False, an exception or a timeout means not ready."""
        self._probes[name] = probe

    def remove_probe(self, name: str) -> None:
        self._probes.pop(name, None)

    def reasons(self) -> list[str]:
        """Why the process is not ready, in plain words (empty when ready); probes not run."""
        out: list[str] = []
        if not self.kafka_ok:
            out.append("kafka: not connected")
        if not self.state_restored:
            out.append("state: not restored from the state topic yet")
        if self.last_poll_ok_monotonic is None:
            out.append("stripe: no successful poll yet")
        else:
            age = self._clock() - self.last_poll_ok_monotonic
            if age > self.max_poll_age_seconds:
                out.append(
                    f"stripe: last successful poll {age:.0f}s ago "
                    f"(max {self.max_poll_age_seconds:.0f}s)"
                )
        if self.parked and len(self.parked) >= self.streams:
            out.append(f"streams: all {len(self.parked)} parked")
        return out

    def ready(self) -> bool:
        ok = not self.reasons()
        READY.set(1 if ok else 0)
        return ok

    async def check(self) -> list[str]:
        """reasons() plus the result of every probe, run concurrently with a bounded wait."""
        out = self.reasons()
        names = list(self._probes)
        results = await asyncio.gather(
            *(self._run_probe(self._probes[n]) for n in names), return_exceptions=False
        )
        out += [f"{n}: {problem}" for n, problem in zip(names, results, strict=True) if problem]
        READY.set(0 if out else 1)
        return out

    async def _run_probe(self, probe: Probe) -> str | None:
        try:
            async with asyncio.timeout(self.probe_timeout_seconds):
                ok = await probe()
        except TimeoutError:
            return f"probe timed out after {self.probe_timeout_seconds:g}s"
        except Exception as exc:
            return mask_secrets(f"probe failed: {type(exc).__name__}: {exc}")
        return None if ok else "probe reports unhealthy"

    def _publish(self) -> None:
        READY.set(0 if self.reasons() else 1)


# --- HTTP server ------------------------------------------------------------------------------


class HealthServer(Listener):
    """aiohttp server for /healthz, /readyz and /metrics; port 0 picks a free port (`.port`)."""

    kind = "health"

    def __init__(
        self,
        readiness: Readiness,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        super().__init__(host=host, port=port)
        self._readiness = readiness
        self._registry = registry

    @property
    def url(self) -> str:
        return self.base_url

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        reasons = await self._readiness.check()
        body: dict[str, object] = {"ready": not reasons}
        if reasons:
            body["reasons"] = reasons
        if self._readiness.parked:
            body["parked"] = dict(self._readiness.parked)
        return web.json_response(body, status=503 if reasons else 200)

    async def _metrics(self, _request: web.Request) -> web.Response:
        self._readiness.ready()  # refresh the READY gauge: poll age changes with time alone
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


# --- cursor gap alarm -------------------------------------------------------------------------

DEFAULT_GAP_THRESHOLD_S = 7 * 86400.0


def check_gap(
    stream_key: str,
    cursor_ms: int | None,
    now_ms: int | None = None,
    threshold_s: float = DEFAULT_GAP_THRESHOLD_S,
) -> bool:
    """True (and CURSOR_GAP_ALARM=1) when the cursor is older than the threshold.

    Stripe keeps events 30 days; a cursor that falls behind by a week is a warning well before
    data is lost. No cursor yet (fresh start) is not a gap.
    """
    if now_ms is None:
        now_ms = wall_ms()
    alarm = cursor_ms is not None and (now_ms - cursor_ms) / 1000 > threshold_s
    CURSOR_GAP_ALARM.labels(stream=stream_key).set(1 if alarm else 0)
    return alarm


class GapAlarm:
    """check_gap per stream, logging only when a stream's alarm is raised or cleared."""

    def __init__(self, threshold_s: float = DEFAULT_GAP_THRESHOLD_S) -> None:
        self.threshold_s = threshold_s
        self._alarming: set[str] = set()

    def check(self, stream_key: str, cursor_ms: int | None, now_ms: int | None = None) -> bool:
        if now_ms is None:
            now_ms = wall_ms()
        alarm = check_gap(stream_key, cursor_ms, now_ms, self.threshold_s)
        if alarm and stream_key not in self._alarming:
            self._alarming.add(stream_key)
            assert cursor_ms is not None
            log.warning(
                "cursor gap alarm: stream is far behind; Stripe drops events after 30 days",
                stream=stream_key,
                gap_seconds=round((now_ms - cursor_ms) / 1000),
                threshold_seconds=self.threshold_s,
            )
        elif not alarm and stream_key in self._alarming:
            self._alarming.discard(stream_key)
            log.info("cursor gap alarm cleared", stream=stream_key)
        return alarm

    @property
    def alarming(self) -> frozenset[str]:
        return frozenset(self._alarming)
