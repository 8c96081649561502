#!/usr/bin/env bash
# Runs a command with the dev broker up; stops the broker afterwards only if this script started it.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
started=0
if ! "$here/kafka/kafka.sh" status >/dev/null 2>&1; then
  "$here/kafka/kafka.sh" up || exit 1
  started=1
fi
"$@"
rc=$?
if [[ $started == 1 ]]; then "$here/kafka/kafka.sh" down; fi
exit $rc
