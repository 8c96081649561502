"""Kafka's default key partitioner (Java's murmur2), shared by the Kafka writer and memory log."""

from __future__ import annotations

import random

from aiokafka.partitioner import murmur2


class CachingPartitioner:
    """aiokafka's default partitioner (Java's murmur2, so keys land where Java clients put
    them) with the hash of each key remembered: an object's events reuse one key, and the
    pure-Python murmur2 was a visible share of the CPU at thousands of events per second."""

    def __init__(self, max_keys: int = 200_000, rng: random.Random | None = None) -> None:
        self._hashes: dict[bytes, int] = {}
        self._max = max_keys
        self._rng = rng if rng is not None else random.Random()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return self._rng.choice(available or all_partitions)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self._max:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


__all__ = ["CachingPartitioner"]
