#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, combined broker+controller) for development
# and tests, assembled from Apache's Maven Central artifacts (no Docker, no tarball).
#
#   deploy/kafka/kafka.sh fetch    download the broker jars once per machine (into the cache dir)
#   deploy/kafka/kafka.sh start    fetch, format storage once, start in the background, wait until ready
#   deploy/kafka/kafka.sh stop     stop the broker (SIGTERM, SIGKILL after 30s)
#   deploy/kafka/kafka.sh status   "kafka: running ..." (exit 0) or "kafka: stopped" (exit 3)
#   deploy/kafka/kafka.sh logs     tail the server log (extra arguments go to tail, e.g. -f, -n 500)
#   deploy/kafka/kafka.sh reset    stop and delete the broker's data (topics, offsets, cluster id)
#
# Settings (environment, defaults from deploy/lib.sh):
#   MEDLEDGER_RUN_DIR                state: $MEDLEDGER_RUN_DIR/kafka/{server.properties,kafka.pid,data,logs}
#   MEDLEDGER_CACHE_DIR              jars:  $MEDLEDGER_CACHE_DIR/kafka-<version>/lib
#   MEDLEDGER_KAFKA_PORT             client listener on 127.0.0.1 (9092)
#   MEDLEDGER_KAFKA_CONTROLLER_PORT  KRaft controller listener on 127.0.0.1 (9093)
#   MEDLEDGER_KAFKA_VERSION          org.apache.kafka:kafka_2.13 version (4.1.2)
#   MEDLEDGER_KAFKA_HEAP             JVM heap, -Xms and -Xmx (512m)
#   MEDLEDGER_KAFKA_START_TIMEOUT    seconds to wait for readiness (90)
set -euo pipefail

LOG_TAG=kafka
# shellcheck source=../lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

KAFKA_DEPLOY_DIR="$MEDLEDGER_ROOT/deploy/kafka"
KAFKA_VERSION="${MEDLEDGER_KAFKA_VERSION:-4.1.2}"
KAFKA_HEAP="${MEDLEDGER_KAFKA_HEAP:-512m}"
KAFKA_START_TIMEOUT="${MEDLEDGER_KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT=30

KAFKA_HOME="$MEDLEDGER_CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIB="$KAFKA_HOME/lib"
KAFKA_LIB_MARKER="$KAFKA_LIB/.complete"

KAFKA_STATE="$MEDLEDGER_RUN_DIR/kafka"
KAFKA_DATA="$KAFKA_STATE/data"
KAFKA_LOGS="$KAFKA_STATE/logs"
KAFKA_PROPS="$KAFKA_STATE/server.properties"
KAFKA_PID="$KAFKA_STATE/kafka.pid"
KAFKA_STDOUT="$KAFKA_STATE/stdout.log"
KAFKA_SERVER_LOG="$KAFKA_LOGS/server.log"

# KafkaRaftServer logs this once the broker and controller have both finished starting up.
KAFKA_READY_LINE="Kafka Server started"

# ---------------------------------------------------------------------------------------------

require_java() {
  command -v java >/dev/null 2>&1 ||
    die "Java 17+ is required but 'java' is not on PATH: apt-get install openjdk-17-jre-headless"
  local spec major
  spec="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n1)"
  major="${spec#1.}"     # "1.8" -> "8", "17" -> "17"
  major="${major%%.*}"
  if ! [[ "$major" =~ ^[0-9]+$ ]] || ((major < 17)); then
    die "Java 17+ is required, found '$(java -version 2>&1 | head -n1)': apt-get install openjdk-17-jre-headless"
  fi
}

require_mvn() {
  command -v mvn >/dev/null 2>&1 || die "Maven is required to fetch the Kafka jars: apt-get install maven"
}

# The marker records the pom it was made from, so editing pom.xml (e.g. the log4j version)
# refreshes the jars; a copy interrupted before the marker was written is redone.
pom_digest() { sha256sum "$KAFKA_DEPLOY_DIR/pom.xml" | cut -d' ' -f1; }

jars_ready() {
  [ -f "$KAFKA_LIB_MARKER" ] && [ "$(cat "$KAFKA_LIB_MARKER")" = "kafka=$KAFKA_VERSION pom=$(pom_digest)" ]
}

cmd_fetch() {
  require_java
  if jars_ready; then
    return 0
  fi
  require_mvn
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIB (once per machine)"
  mkdir -p "$KAFKA_HOME"
  # Copy into a private directory and rename it into place, so a concurrent start from another
  # checkout never sees a half-filled lib dir and an interrupted copy leaves nothing behind.
  local tmp
  tmp="$(mktemp -d "$KAFKA_HOME/lib.tmp.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp' '$tmp.mvn.log'" EXIT
  # mvn's output is kept for failures only (Debian's Maven 3.8 prints stray colour codes even
  # in batch mode).
  if ! mvn -B -q -f "$KAFKA_DEPLOY_DIR/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
    >"$tmp.mvn.log" 2>&1; then
    sed 's/\x1b\[[0-9;]*m//g' "$tmp.mvn.log" | tail -n 30 >&2
    die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (is Maven Central reachable? mvn output above)"
  fi
  [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
  chmod 755 "$tmp" # mktemp -d makes it private
  printf 'kafka=%s pom=%s\n' "$KAFKA_VERSION" "$(pom_digest)" >"$tmp/.complete"
  if jars_ready; then
    rm -rf "$tmp" # another checkout finished first
  else
    rm -rf "$KAFKA_LIB"
    mv "$tmp" "$KAFKA_LIB"
  fi
  rm -f "$tmp.mvn.log"
  trap - EXIT
  log "fetched $(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars ($(du -sh "$KAFKA_LIB" | cut -f1))"
}

# ---------------------------------------------------------------------------------------------

# start/stop/reset of one run dir take turns (two `start`s at once would both launch a JVM and
# the loser would overwrite kafka.pid). fd 9 is closed for the JVM so it does not hold the lock.
lock_state() {
  mkdir -p "$KAFKA_STATE"
  exec 9>"$KAFKA_STATE/kafka.lock"
  flock -w 180 9 || die "another deploy/kafka/kafka.sh is still busy with $KAFKA_STATE (lock held for 180s)"
}

# Our broker is running: the pid file names a live process that is a Kafka server using our
# server.properties (guards against a recycled pid after a reboot or a killed JVM).
broker_running() {
  pid_alive "$KAFKA_PID" || return 1
  local pid
  pid="$(cat "$KAFKA_PID")"
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $KAFKA_PROPS"
}

# The client port the running broker was configured with (the env may have changed since).
running_port() {
  local port
  port="$(sed -n 's#^advertised\.listeners=PLAINTEXT://[^:]*:\([0-9]*\)$#\1#p' "$KAFKA_PROPS" 2>/dev/null || true)"
  echo "${port:-$MEDLEDGER_KAFKA_PORT}"
}

write_properties() {
  mkdir -p "$KAFKA_STATE" "$KAFKA_DATA" "$KAFKA_LOGS"
  cat >"$KAFKA_PROPS" <<EOF
# Written by deploy/kafka/kafka.sh on every start; edit the script, not this file.
# Single-node KRaft: this one process is both broker and controller, listening on 127.0.0.1 only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$MEDLEDGER_KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$MEDLEDGER_KAFKA_PORT,CONTROLLER://127.0.0.1:$MEDLEDGER_KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$MEDLEDGER_KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA

# One node: internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# Topics are created deliberately (with their own retention), never by a stray produce/fetch.
auto.create.topics.enable=false
num.partitions=3
# Consumer groups form at once instead of after 3 s (speeds tests).
group.initial.rebalance.delay.ms=0
# Internal topics with 5 partitions instead of 50 each: faster first group join, first
# transaction and restart on a small dev machine. Only applied when the topic is first created.
offsets.topic.num.partitions=5
transaction.state.log.num.partitions=5
share.coordinator.state.topic.num.partitions=5
EOF
}

format_storage() {
  # Format once; a formatted data dir keeps its cluster id, topics and offsets across restarts.
  # (Changing the controller port later is fine: the node updates its own voter endpoint.)
  if [ -f "$KAFKA_DATA/meta.properties" ]; then
    return 0
  fi
  local cluster_id
  cluster_id="$(java -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$KAFKA_DEPLOY_DIR/log4j2.xml" \
    -Dkafka.logs.dir="$KAFKA_LOGS" kafka.tools.StorageTool random-uuid)"
  log "formatting $KAFKA_DATA (cluster id $cluster_id)"
  java -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$KAFKA_DEPLOY_DIR/log4j2.xml" \
    -Dkafka.logs.dir="$KAFKA_LOGS" \
    kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$KAFKA_PROPS" >&2 ||
    die "kafka-storage format failed for $KAFKA_DATA"
}

print_failure_context() {
  if [ -s "$KAFKA_SERVER_LOG" ]; then
    log "--- last lines of $KAFKA_SERVER_LOG (config dumps left out) ---"
    grep -v $'^\t' "$KAFKA_SERVER_LOG" | tail -n 30 >&2 || true
  fi
  if [ -s "$KAFKA_STDOUT" ]; then
    log "--- last lines of $KAFKA_STDOUT ---"
    tail -n 20 "$KAFKA_STDOUT" >&2 || true
  fi
}

cmd_start() {
  cmd_fetch
  lock_state
  if broker_running; then
    log "already running (pid $(cat "$KAFKA_PID")) on 127.0.0.1:$(running_port)"
    return 0
  fi
  rm -f "$KAFKA_PID" # stale
  require_free_port "$MEDLEDGER_KAFKA_PORT" "kafka (MEDLEDGER_KAFKA_PORT)"
  require_free_port "$MEDLEDGER_KAFKA_CONTROLLER_PORT" "kafka controller (MEDLEDGER_KAFKA_CONTROLLER_PORT)"

  write_properties
  # Each start gets a fresh server.log, so the readiness check only sees this run's lines.
  if [ -f "$KAFKA_SERVER_LOG" ]; then
    mv -f "$KAFKA_SERVER_LOG" "$KAFKA_SERVER_LOG.prev"
  fi
  : >"$KAFKA_STDOUT"
  format_storage

  local started=$SECONDS
  log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$MEDLEDGER_KAFKA_PORT (controller :$MEDLEDGER_KAFKA_CONTROLLER_PORT)"
  # setsid + nohup: the broker outlives this shell, its terminal and its process group.
  # The inner shell records its own pid and then execs java, so kafka.pid is the JVM's pid.
  KAFKA_PID="$KAFKA_PID" nohup setsid bash -c 'echo $$ >"$KAFKA_PID"; exec "$@"' kafka-broker \
    java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" \
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    -Dkafka.logs.dir="$KAFKA_LOGS" \
    -Dlog4j2.configurationFile="$KAFKA_DEPLOY_DIR/log4j2.xml" \
    -cp "$KAFKA_LIB/*" \
    kafka.Kafka "$KAFKA_PROPS" \
    </dev/null >"$KAFKA_STDOUT" 2>&1 9>&- &

  local i pid=""
  for ((i = 0; i < KAFKA_START_TIMEOUT * 5; i++)); do
    [ -z "$pid" ] && [ -s "$KAFKA_PID" ] && pid="$(cat "$KAFKA_PID")"
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$KAFKA_PID"
      print_failure_context
      die "broker exited during startup (see $KAFKA_SERVER_LOG and $KAFKA_STDOUT)"
    fi
    if [ -n "$pid" ] && port_in_use "$MEDLEDGER_KAFKA_PORT" &&
      grep -qF "$KAFKA_READY_LINE" "$KAFKA_SERVER_LOG" 2>/dev/null; then
      log "ready (pid $pid) on 127.0.0.1:$MEDLEDGER_KAFKA_PORT after $((SECONDS - started))s"
      return 0
    fi
    sleep 0.2
  done
  print_failure_context
  log "not ready after ${KAFKA_START_TIMEOUT}s; stopping it"
  cmd_stop || true
  die "broker did not become ready within ${KAFKA_START_TIMEOUT}s (see $KAFKA_SERVER_LOG and $KAFKA_STDOUT)"
}

cmd_stop() {
  lock_state
  if ! broker_running; then
    rm -f "$KAFKA_PID"
    log "not running"
    return 0
  fi
  local pid i
  pid="$(cat "$KAFKA_PID")"
  log "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < KAFKA_STOP_TIMEOUT * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$KAFKA_PID"
  log "stopped"
}

cmd_status() {
  if broker_running; then
    echo "kafka: running (pid $(cat "$KAFKA_PID")) on 127.0.0.1:$(running_port)"
    return 0
  fi
  echo "kafka: stopped"
  return 3
}

cmd_logs() {
  [ -f "$KAFKA_SERVER_LOG" ] || die "no server log yet at $KAFKA_SERVER_LOG (start the broker first)"
  if [ $# -eq 0 ]; then
    set -- -n 100
  fi
  exec tail "$@" "$KAFKA_SERVER_LOG"
}

cmd_reset() {
  cmd_stop
  rm -rf "$KAFKA_DATA"
  log "deleted $KAFKA_DATA (topics, offsets and cluster id); the next start formats a new one"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  [ $# -gt 0 ] && shift
  case "$cmd" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    reset) cmd_reset ;;
    -h | --help | help | "") usage ;;
    *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
