"""Seen-window memory and snapshot cost at the tail's top rate (`python -m bench.seen_memory`).

Fills one stream's state with N real-length v1 ids (`evt_` + 24 base62 characters) spread over
the buckets of a sweep window, then reports Python heap per id (tracemalloc) or the RSS delta,
the time a restore of it takes, and the time `snapshot()` takes for a full bucket that
received a few hundred new ids.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from ingestor.events import Stream
from ingestor.stream import BUCKET_MS, StreamState

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class _Seen:
    id: str
    created_ms: int


def v1_ids(rng: random.Random, n: int) -> list[str]:
    """n 28-character ids shaped like Stripe's v1 event ids (distinct: 62**24 possible)."""
    return ["evt_" + "".join(rng.choices(BASE62, k=24)) for _ in range(n)]


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def fill(rt: StreamState, rng: random.Random, n: int, buckets: int, start_ms: int) -> None:
    """Marks n fresh ids, 300 per commit as at 3,000 events/s, n / buckets per bucket."""
    per = -(-n // buckets)
    for b in range(buckets):
        base = start_ms + b * BUCKET_MS
        for i in range(0, per, 300):
            ids = v1_ids(rng, min(300, per - i))
            rt.mark(_Seen(x, base + (i + j) * BUCKET_MS // per) for j, x in enumerate(ids))
            rt.snapshot()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=1_800_000)
    parser.add_argument("--buckets", type=int, default=60)
    parser.add_argument("--rss", action="store_true", help="RSS delta instead of tracemalloc")
    args = parser.parse_args()
    rng = random.Random(1)
    rt = StreamState(Stream("v1"))
    rt.set_tail_start(0)
    rt.snapshot()
    # Ids are made while measuring and only the state keeps them, so the figure counts the
    # strings as well as the structure holding them.
    if args.rss:
        before = _rss_bytes()
    else:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    fill(rt, rng, args.ids, args.buckets, 1_700_000_000_000)
    fill_s = time.perf_counter() - t0
    after = _rss_bytes() if args.rss else tracemalloc.get_traced_memory()[0]
    if not args.rss:
        tracemalloc.stop()
    what = "RSS delta" if args.rss else "traced heap"
    print(
        f"{args.ids:,} ids in {args.buckets} buckets: {what} {(after - before) / 1e6:.1f} MB, "
        f"{(after - before) / args.ids:.1f} bytes/id ({fill_s:.1f} s to fill)"
    )

    # What a restart reads: the same ids written as full chunks.
    whole = StreamState(rt.stream)
    whole.set_tail_start(0)
    for b in rt.seen.buckets():
        whole.mark(_Seen(x, b) for x in rt.seen.ids(b))
    store = {k: v for k, v in whole.snapshot().items() if v is not None}
    del whole
    t0 = time.perf_counter()
    back = StreamState.restore(store)[rt.stream]
    print(f"restore of {back.seen_count:,} ids: {time.perf_counter() - t0:.1f} s")
    del rt, back, store

    # Snapshot of a 30k-id bucket that received 300 new ids since the last snapshot.
    rt = StreamState(Stream("v1"))
    rt.set_tail_start(0)
    bucket = v1_ids(rng, 30_300)
    rt.mark(_Seen(x, 5_000) for x in bucket[:30_000])
    rt.snapshot()
    rounds = 20
    elapsed = 0.0
    written = 0
    for r in range(rounds):
        rt.mark(_Seen(x, 5_000) for x in v1_ids(rng, 300))
        t0 = time.perf_counter()
        snap = rt.snapshot()
        elapsed += time.perf_counter() - t0
        written += sum(len(v) for v in snap.values() if v is not None)
        del r
    print(
        f"snapshot of a 30k-id bucket + 300 new ids: {elapsed / rounds * 1000:.2f} ms, "
        f"{written / rounds / 1000:.1f} KB written per snapshot"
    )


if __name__ == "__main__":
    main()
