"""Benchmarks (`make bench`); results are quoted in bench/README.md (a short table in README.md)."""
