"""bench.run's machine conditions: the CPU steal share and the conditions line."""

from __future__ import annotations

from bench.run import machine_line, python_loop_seconds, steal_share


def test_steal_share_is_stolen_time_over_all_time_between_two_snapshots() -> None:
    """Only the differences count: 30 of 100 ticks stolen is 0.3, whatever came before."""
    before = [1000, 0, 500, 9000, 0, 0, 0, 200]
    after = [1040, 0, 510, 9020, 0, 0, 0, 230]  # user +40, system +10, idle +20, steal +30
    assert steal_share(before, after) == 0.3


def test_steal_share_is_unknown_without_counters_or_elapsed_time() -> None:
    """No /proc/stat, or no tick between the snapshots: no figure rather than a made-up 0."""
    times = [1, 2, 3, 4, 5, 6, 7, 8]
    assert steal_share(None, times) is None
    assert steal_share(times, None) is None
    assert steal_share(times, list(times)) is None


def test_machine_line_names_steal_and_free_memory_when_known() -> None:
    """The line a table carries: steal as a percentage, free memory in GB; absent when unknown."""
    line = machine_line(0.5, 2048.0)
    assert "CPU steal 50% of CPU time" in line
    assert "2.0 GB of memory free" in line
    assert "steal" not in machine_line(None, None)
    assert "memory" not in machine_line(None, None)


def test_machine_line_names_the_loop_times_when_given() -> None:
    """The core's speed at the run's start and end, so a slow hour shows in the figures."""
    line = machine_line(None, None, (1.234, 1.5))
    assert "10M-step Python loop took 1.23 s at the start and 1.50 s at the end" in line
    assert "loop" not in machine_line(None, None)


def test_python_loop_seconds_grows_with_the_steps() -> None:
    """A timing of real work: a hundred times the steps takes longer than one."""
    assert 0 < python_loop_seconds(1_000) < python_loop_seconds(100_000)
