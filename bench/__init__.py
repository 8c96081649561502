"""Benchmarks (`make bench`); results are quoted in README.md."""
