"""Prometheus metrics of the service, in one registry so tests and /metrics see the same."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Label values known in advance. Each series is exported at 0 from the start: a series that
# first appears at 1 has no `increase()`, so an alert on it would miss the first event.
DLQ_REASONS = ("too_large", "hydration_failed")
TRANSACTION_OUTCOMES = ("committed", "aborted")
HYDRATION_RESULTS = ("ok", "not_found", "failed", "retry", "coalesced", "cached")
RETRY_REASONS = (
    "rate_limited",
    "connection",
    "malformed",
    "conflict",
    "server_error",
    "should_retry",
    "other",
)
APIS = ("v1", "v2")

EVENTS_PUBLISHED = Counter(
    "ingestor_events_published",
    "Events committed to Kafka, by source api and event type.",
    ["source", "type"],
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "ingestor_api_requests",
    "Stripe API requests by endpoint (path template) and HTTP status (or 'error').",
    ["endpoint", "status"],
    registry=REGISTRY,
)
API_ANOMALIES = Counter(
    "ingestor_api_anomalies",
    "List answers that break the API's contract, by stream and kind: out_of_range (an event "
    "outside the created range the request asked for, dropped) and stuck_cursor (a page "
    "cursor that does not advance; the walk ends there).",
    ["stream", "kind"],
    registry=REGISTRY,
)
API_ANOMALY_KINDS = ("out_of_range", "stuck_cursor")
API_RETRIES = Counter(
    "ingestor_api_retries",
    "Stripe API requests retried, by reason.",
    ["reason"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "ingestor_rate_limited",
    "HTTP 429 answers from Stripe.",
    registry=REGISTRY,
)
RATE_BUDGET = Gauge(
    "ingestor_rate_budget_requests_per_second",
    "Current shared request budget after adapting to 429s.",
    registry=REGISTRY,
)
EVENT_LAG = Histogram(
    "ingestor_event_lag_seconds",
    "Now minus event created, at commit.",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400, 604800, 2592000),
    registry=REGISTRY,
)
DUPLICATES_SKIPPED = Counter(
    "ingestor_duplicates_skipped",
    "Events read again (overlap re-reads, sweeps) and skipped as already published.",
    ["source"],
    registry=REGISTRY,
)
DLQ_EVENTS = Counter(
    "ingestor_dlq_events",
    "Events written to the dead-letter topic, by reason.",
    ["reason"],
    registry=REGISTRY,
)
HYDRATION_REQUESTS = Counter(
    "ingestor_hydration_requests",
    "Related-object fetches for thin events, by result (ok, not_found, failed, retry; coalesced"
    " = shared a fetch in flight, cached = used a completed one kept in the fetch cache).",
    ["result"],
    registry=REGISTRY,
)
TRANSACTIONS = Counter(
    "ingestor_transactions",
    "Kafka transactions by outcome (committed, aborted).",
    ["outcome"],
    registry=REGISTRY,
)
BATCH_EVENTS = Histogram(
    "ingestor_batch_events",
    "Events per committed batch.",
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
    registry=REGISTRY,
)
WATERMARK_AGE = Gauge(
    "ingestor_watermark_age_seconds",
    "Now minus the stream's watermark (newest event time fully committed).",
    ["stream"],
    registry=REGISTRY,
)
CURSOR_GAP_ALARM = Gauge(
    "ingestor_cursor_gap_alarm",
    "1 while a stream's cursor is older than the gap threshold (retention cliff ahead).",
    ["stream"],
    registry=REGISTRY,
)
SWEEP_WINDOW = Gauge(
    "ingestor_sweep_window_seconds",
    "Width of the stream's last sweep (grows past the configured window while a sweep or "
    "the polls lag; capped at twice the window only while sweeps are slower than it).",
    ["stream"],
    registry=REGISTRY,
)
SWEEP_SKIPPED = Counter(
    "ingestor_sweep_skipped_seconds",
    "Seconds of created time a sweep skipped, unread, because sweeps were slower than their "
    "window (late events created there are not re-read).",
    ["stream"],
    registry=REGISTRY,
)
STREAM_PARKED = Gauge(
    "ingestor_stream_parked",
    "1 while a stream is parked after an error retrying cannot fix (e.g. revoked access).",
    ["stream"],
    registry=REGISTRY,
)
CONNECTED_ACCOUNTS = Gauge(
    "ingestor_connected_accounts",
    "Connected accounts GET /v1/accounts listed at the last scan (stripe.accounts = all).",
    registry=REGISTRY,
)
POLL_INTERVAL = Gauge(
    "ingestor_poll_interval_seconds",
    "The stream's current tail poll interval: the configured one after news, growing while "
    "polls find nothing, up to the idle cap the budget and the number of streams allow.",
    ["stream"],
    registry=REGISTRY,
)
SHARD_OWNED = Gauge(
    "ingestor_shard_owned",
    "1 while this process owns the shard (assigned by the group, not yet released).",
    ["shard"],
    registry=REGISTRY,
)
CURSOR_EXPIRED = Counter(
    "ingestor_cursor_expired",
    "Windows lost because a cursor aged out of Stripe's 30-day retention.",
    ["stream"],
    registry=REGISTRY,
)
BACKFILL_EVENTS = Counter(
    "ingestor_backfill_events",
    "Events published by backfill.",
    registry=REGISTRY,
)
BACKFILL_SLICES = Gauge(
    "ingestor_backfill_slices",
    "Backfill slices by state (total, done).",
    ["state"],
    registry=REGISTRY,
)
BACKFILL_PROGRESS = Gauge(
    "ingestor_backfill_progress_ratio",
    "Share of the backfill time range committed (0..1).",
    registry=REGISTRY,
)
ERRORS = Counter(
    "ingestor_errors",
    "Errors by kind (exception class name), retried or fatal.",
    ["kind"],
    registry=REGISTRY,
)
READY = Gauge(
    "ingestor_ready",
    "1 while /readyz answers ready.",
    registry=REGISTRY,
)

# --- webhook receiver -------------------------------------------------------------------------

WEBHOOK_OUTCOMES = ("committed", "duplicate", "ignored", "unavailable", "timeout", "error")
WEBHOOK_REJECT_REASONS = (
    "no_header",
    "malformed_header",
    "no_signature",
    "mismatch",
    "stale_timestamp",
    "body_not_utf8",
    "too_large",
    "read_timeout",
    "malformed_json",
    "malformed_event",
    "unknown_object",
    "method",
)
WEBHOOK_DELIVERIES = Counter(
    "ingestor_webhook_deliveries",
    "Verified webhook deliveries handed to the pipeline, by api and outcome (committed, "
    "duplicate and ignored are answered 200; unavailable, timeout and error 5xx).",
    ["api", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_REJECTS = Counter(
    "ingestor_webhook_rejects",
    "Webhook requests refused before the pipeline saw them, by reason (bad or stale "
    "signature, oversize or slow body, malformed JSON, wrong method).",
    ["reason"],
    registry=REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "ingestor_webhook_latency_seconds",
    "Webhook request -> response time (body read, verify, pipeline ack), by HTTP status.",
    ["status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

WEBHOOK_DECISIONS = Counter(
    "ingestor_webhook_decisions",
    "What the intake decided for each verified delivery, by answer (committed, duplicate, "
    "ignored: 200; unavailable: 503) and reason: pushed (published from the delivery), polled "
    "(the poll it woke published it), seen, settled (older than every read still to come), "
    "backfilled, before_start, stream/type (not ingested here), and for 503s kafka, starting, "
    "stopping, parked, backfill_pending, fetch_failed, timeout, error.",
    ["outcome", "reason"],
    registry=REGISTRY,
)


def _start_at_zero() -> None:
    for counter, label, values in (
        (DLQ_EVENTS, "reason", DLQ_REASONS),
        (TRANSACTIONS, "outcome", TRANSACTION_OUTCOMES),
        (HYDRATION_REQUESTS, "result", HYDRATION_RESULTS),
        (API_RETRIES, "reason", RETRY_REASONS),
        (DUPLICATES_SKIPPED, "source", APIS),
        (WEBHOOK_REJECTS, "reason", WEBHOOK_REJECT_REASONS),
    ):
        for value in values:
            counter.labels(**{label: value})
    for api in APIS:
        for outcome in WEBHOOK_OUTCOMES:
            WEBHOOK_DELIVERIES.labels(api=api, outcome=outcome)


_start_at_zero()
