#!/usr/bin/env bash
# The whole local stack: a real Kafka broker, a real PostgreSQL, the four services and the access monitor.
#   stack.sh up      install what is missing, start everything, wait for SERVING
#   stack.sh down    stop services, Kafka and PostgreSQL
#   stack.sh status  one line per part
#   stack.sh logs    tail every log
#   stack.sh infra   start only Kafka, PostgreSQL and the topics (what tests need)
set -euo pipefail
LOG_TAG=stack
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
SVC_DIR="$MEDLEDGER_RUN_DIR/services"

infra() {
  bash "$HERE/bootstrap.sh"
  bash "$HERE/kafka/kafka.sh" start
  bash "$HERE/postgres/pg.sh" start
  bash "$HERE/postgres/pg.sh" createdb "${MEDLEDGER_DATABASES[@]/#/medledger_}"
  "$MEDLEDGER_BIN" topics ensure
  mkdir -p "$MEDLEDGER_KEYS_DIR"
  chmod 700 "$MEDLEDGER_KEYS_DIR"
  if [ ! -f "$MEDLEDGER_LEDGER_SIGNING_KEY_FILE" ]; then
    log "generating the local checkpoint signing key (never committed) in $MEDLEDGER_LEDGER_SIGNING_KEY_FILE"
    "$MEDLEDGER_BIN" ledger keygen --out "$MEDLEDGER_LEDGER_SIGNING_KEY_FILE"
  fi
  # What auditors pin (`medledger audit verify --verifier-key-file`), derived from the key, not the service.
  "$MEDLEDGER_BIN" ledger verifier-key --signing-key-file "$MEDLEDGER_LEDGER_SIGNING_KEY_FILE" \
    >"$MEDLEDGER_KEYS_DIR/ledger-checkpoint.pub"
  local svc var
  for svc in identity consent records monitor; do
    var="MEDLEDGER_${svc^^}_EVENT_KEY_FILE"
    if [ ! -f "${!var}" ]; then
      log "generating the $svc event-signing key (never committed) in ${!var}"
      "$MEDLEDGER_BIN" events keygen --service "$svc" --out "${!var}" --producers-file "$MEDLEDGER_EVENT_PRODUCER_KEYS_FILE" >/dev/null
    fi
  done
  [ -f "$MEDLEDGER_IDENTITY_TOKEN_KEY_FILE" ] || "$MEDLEDGER_BIN" identity keygen --out "$MEDLEDGER_IDENTITY_TOKEN_KEY_FILE" >/dev/null
  [ -f "$MEDLEDGER_IDENTITY_DATA_KEY_FILE" ] || "$MEDLEDGER_BIN" identity keygen --data-key --out "$MEDLEDGER_IDENTITY_DATA_KEY_FILE" >/dev/null
  [ -f "$MEDLEDGER_CONSENT_DATA_KEY_FILE" ] || "$MEDLEDGER_BIN" identity keygen --data-key --out "$MEDLEDGER_CONSENT_DATA_KEY_FILE" >/dev/null
  [ -f "$MEDLEDGER_RECORDS_KEK_FILE" ] || "$MEDLEDGER_BIN" identity keygen --data-key --out "$MEDLEDGER_RECORDS_KEK_FILE" >/dev/null
  if [ ! -f "$MEDLEDGER_OPERATOR_KEY_FILE" ]; then
    log "generating the bootstrap operator key (the first organization) in $MEDLEDGER_OPERATOR_KEY_FILE"
    "$MEDLEDGER_BIN" identity keygen --out "$MEDLEDGER_OPERATOR_KEY_FILE" | tee /dev/stderr \
      | awk '$1 == "bootstrap_id" {print $2}' >"$MEDLEDGER_OPERATOR_KEY_FILE.id"
  fi
}

service_port() { local v="MEDLEDGER_${1^^}_PORT"; echo "${!v}"; }
metrics_port() { local v="MEDLEDGER_${1^^}_METRICS_PORT"; echo "${!v}"; }

start_service() {
  local name="$1" pidfile="$SVC_DIR/$1.pid" port
  port="$(service_port "$name")"
  if pid_alive "$pidfile"; then
    log "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  require_free_port "$port" "the $name service"
  [ "$(metrics_port "$name")" = 0 ] || require_free_port "$(metrics_port "$name")" "the $name service's metrics"
  nohup "$MEDLEDGER_BIN" serve "$name" >>"$SVC_DIR/$name.log" 2>&1 &
  echo $! >"$pidfile"
  log "$name started (pid $!), log $SVC_DIR/$name.log"
}

stop_service() {
  local name="$1" pidfile="$SVC_DIR/$1.pid" pid i
  pid_alive "$pidfile" || { rm -f "$pidfile"; return; }
  pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  log "$name stopped"
}

# register_service_identity NAME: once, register NAME as a SERVICE identity (by the
# bootstrap operator) and export MEDLEDGER_<NAME>_IDENTITY_ID / _KEY_FILE for it.
register_service_identity() {
  local name="$1" key="$MEDLEDGER_KEYS_DIR/$1.key" id_file="$MEDLEDGER_KEYS_DIR/$1.id"
  if [ ! -s "$id_file" ]; then
    [ -f "$key" ] || "$MEDLEDGER_BIN" identity keygen --out "$key" >/dev/null
    "$MEDLEDGER_BIN" identity register --as-id "$(cat "$MEDLEDGER_OPERATOR_KEY_FILE.id")" \
      --as-key "$MEDLEDGER_OPERATOR_KEY_FILE" --kind SERVICE --public-key-file "$key.pub" >"$id_file.tmp" \
      || die "could not register the $name service identity"
    tail -n 1 "$id_file.tmp" | awk '{print $NF}' >"$id_file" && rm -f "$id_file.tmp"
    log "registered the $name service identity $(cat "$id_file")"
  fi
  export "MEDLEDGER_${name^^}_IDENTITY_ID=$(cat "$id_file")" "MEDLEDGER_${name^^}_KEY_FILE=$key"
}

up() {
  infra
  mkdir -p "$SVC_DIR"
  # Check every port first, so a taken port stops us before anything starts.
  for s in "${MEDLEDGER_SERVICES[@]}"; do
    pid_alive "$SVC_DIR/$s.pid" || require_free_port "$(service_port "$s")" "the $s service"
    pid_alive "$SVC_DIR/$s.pid" || [ "$(metrics_port "$s")" = 0 ] || require_free_port "$(metrics_port "$s")" "the $s service's metrics"
  done
  start_service identity
  "$MEDLEDGER_BIN" health --wait 60 identity >/dev/null || die "identity did not become SERVING; see $SVC_DIR/identity.log"
  register_service_identity consent
  register_service_identity records
  for s in "${MEDLEDGER_SERVICES[@]}"; do start_service "$s"; done
  if ! "$MEDLEDGER_BIN" health --wait 90 >/dev/null; then
    "$MEDLEDGER_BIN" health || true
    die "not every service became SERVING; see $SVC_DIR/*.log"
  fi
  echo
  echo "MedLedger is up:"
  echo "  kafka       127.0.0.1:$MEDLEDGER_KAFKA_PORT"
  echo "  postgresql  postgresql://postgres@127.0.0.1:$MEDLEDGER_PG_PORT/ (databases medledger_<service>)"
  "$MEDLEDGER_BIN" health | sed 's/^/  /'
  echo "  metrics (Prometheus text format; alerts and dashboard in k8s/components/monitoring):"
  for s in "${MEDLEDGER_SERVICES[@]}"; do
    if [ "$(metrics_port "$s")" = 0 ]; then
      printf '    %-9s off (MEDLEDGER_%s_METRICS_PORT=0)\n' "$s" "${s^^}"
    else
      printf '    %-9s http://127.0.0.1:%s/metrics\n' "$s" "$(metrics_port "$s")"
    fi
  done
  echo "  tlog-tiles  http://127.0.0.1:${MEDLEDGER_LEDGER_TILES_PORT:-50080}/checkpoint (the ledger's C2SP tlog-tiles reads; Tessera's fsck: --storage_url=http://127.0.0.1:${MEDLEDGER_LEDGER_TILES_PORT:-50080}/)"
  echo "  logs        make logs    stop: make down"
}

down() {
  for s in "${MEDLEDGER_SERVICES[@]}"; do stop_service "$s"; done
  bash "$HERE/kafka/kafka.sh" stop || true
  bash "$HERE/postgres/pg.sh" stop || true
}

status() {
  local s rc=0
  bash "$HERE/kafka/kafka.sh" status || rc=1
  bash "$HERE/postgres/pg.sh" status || rc=1
  for s in "${MEDLEDGER_SERVICES[@]}"; do
    if pid_alive "$SVC_DIR/$s.pid"; then
      echo "$s: running (pid $(cat "$SVC_DIR/$s.pid")) on 127.0.0.1:$(service_port "$s") $("$MEDLEDGER_BIN" health "$s" 2>/dev/null | awk '{print $3}'), metrics :$(metrics_port "$s")"
    else
      echo "$s: stopped"; rc=1
    fi
  done
  return $rc
}

logs() {
  local files=("$SVC_DIR"/*.log)
  tail -n 50 -F "${files[@]}" "$MEDLEDGER_RUN_DIR"/kafka/logs/server.log "$MEDLEDGER_RUN_DIR"/postgres/*.log 2>/dev/null
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) logs ;;
  infra) infra ;;
  start-service) mkdir -p "$SVC_DIR"; start_service "$2" ;;
  stop-service) stop_service "$2" ;;
  *) echo "usage: $0 up|down|status|logs|infra" >&2; exit 2 ;;
esac
