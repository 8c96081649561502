#!/usr/bin/env bash
# `make test`'s pytest: the deterministic simulation (pure CPU, in fast-forwarded time) runs at
# a lower CPU priority beside the rest (real broker and sockets, mostly waiting on I/O), so
# the two halves share the machine's cores instead of taking turns, and the real-time tests
# keep first call on the CPU. Exits non-zero if either half fails.
# Usage: dev/test.sh PYTHON [pytest args for both halves]
set -uo pipefail
py="$1"
shift
log="$(mktemp -t ingestor-simulation-XXXXXX.log)"
trap 'rm -f "$log"' EXIT

nice -n 10 "$py" -m pytest tests/simulation -p no:cacheprovider "$@" >"$log" 2>&1 &
sim=$!
# Stopped together: an interrupted run leaves no simulation running on.
trap 'kill "$sim" 2>/dev/null; rm -f "$log"' EXIT

"$py" -m pytest tests --ignore=tests/simulation "$@"
rest=$?
wait "$sim"
simulation=$?

echo "---- tests/simulation (run alongside) ----"
cat "$log"
echo "test: tests/simulation exit $simulation, the other tests exit $rest"
if [[ $rest != 0 || $simulation != 0 ]]; then
  exit 1
fi
