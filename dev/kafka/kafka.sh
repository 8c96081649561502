#!/usr/bin/env bash
# Starts/stops a real single-node Apache Kafka broker (KRaft) from the jars Maven resolved.
# Usage: dev/kafka/kafka.sh up|down|status
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="${KAFKA_STATE_DIR:-$root/.kafka}"
lib="$here/lib"
pidfile="$state/broker.pid"
logfile="$state/broker.log"
python="${PYTHON:-$root/.venv/bin/python}"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"

java_cp() { echo "$lib/*"; }

running() {
  # True only if the recorded pid is alive *and* is our broker (a reused pid is not).
  [[ -f "$pidfile" ]] || return 1
  local pid; pid="$(cat "$pidfile")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka" || return 1
}

resolve() {
  if [[ ! -f "$lib/.complete" ]]; then
    echo "kafka: resolving broker jars with Maven (dev/kafka/pom.xml)"
    rm -rf "$lib"
    mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$lib" -DincludeScope=runtime
    touch "$lib/.complete"
  fi
}

configure() {
  mkdir -p "$state/data"
  sed -e "s#@DATA@#$state/data#" -e "s#@PORT@#$port#" -e "s#@CPORT@#$cport#" \
    "$here/server.properties" >"$state/server.properties"
  if [[ ! -f "$state/data/meta.properties" ]]; then
    local cluster
    cluster="$(java -cp "$(java_cp)" kafka.tools.StorageTool random-uuid)"
    java -cp "$(java_cp)" -Dlog4j2.configurationFile="$here/log4j2.properties" \
      kafka.tools.StorageTool format --standalone -t "$cluster" \
      -c "$state/server.properties" >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; exit 1; }
  fi
}

up() {
  if running; then
    echo "kafka: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return 0
  fi
  resolve
  configure
  echo "kafka: starting broker on 127.0.0.1:$port (log: $logfile)"
  # setsid: the broker must outlive the make process that started it.
  setsid nohup java -Xms512m -Xmx2g -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$here/log4j2.properties" \
    -Dkafka.logs.dir="$state" \
    -cp "$(java_cp)" kafka.Kafka "$state/server.properties" \
    >"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  if ! "$python" "$here/wait_ready.py" --bootstrap "127.0.0.1:$port" --timeout "${KAFKA_WAIT_SECONDS:-90}"; then
    echo "kafka: broker did not become ready; last log lines:" >&2
    tail -n 40 "$logfile" >&2 || true
    down || true
    exit 1
  fi
  echo "kafka: ready (pid $(cat "$pidfile"))"
}

down() {
  if ! running; then
    echo "kafka: not running"
    rm -f "$pidfile"
    return 0
  fi
  local pid; pid="$(cat "$pidfile")"
  echo "kafka: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "kafka: pid $pid ignored SIGTERM for 30 s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then echo "running (pid $(cat "$pidfile"))"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
