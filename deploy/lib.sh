#!/usr/bin/env bash
# Shared shell functions for MedLedger's deploy scripts. Source it; do not run it.
# Every path and port is a setting with a default, so two checkouts can run side by side.

MEDLEDGER_ROOT="${MEDLEDGER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
MEDLEDGER_RUN_DIR="${MEDLEDGER_RUN_DIR:-$MEDLEDGER_ROOT/.run}"
MEDLEDGER_CACHE_DIR="${MEDLEDGER_CACHE_DIR:-$HOME/.cache/medledger}"
MEDLEDGER_KAFKA_PORT="${MEDLEDGER_KAFKA_PORT:-9092}"
MEDLEDGER_KAFKA_CONTROLLER_PORT="${MEDLEDGER_KAFKA_CONTROLLER_PORT:-9093}"
MEDLEDGER_PG_PORT="${MEDLEDGER_PG_PORT:-55432}"
export MEDLEDGER_ROOT MEDLEDGER_RUN_DIR MEDLEDGER_CACHE_DIR MEDLEDGER_KAFKA_PORT \
  MEDLEDGER_KAFKA_CONTROLLER_PORT MEDLEDGER_PG_PORT

log() { printf '[%s] %s\n' "${LOG_TAG:-medledger}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${LOG_TAG:-medledger}" "$*" >&2; exit 1; }

# port_holder PORT -> prints "pid/command" of the process listening on 127.0.0.1:PORT, empty if free.
port_holder() {
  local port="$1"
  ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*users:((\("[^"]*",pid=[0-9]*\).*/\1/p' | head -n1 | tr -d '"' | sed 's/,pid=/ pid /'
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# require_free_port PORT WHAT: stop with a message naming the port and its holder when taken.
require_free_port() {
  local port="$1" what="$2"
  if port_in_use "$port"; then
    local holder; holder="$(port_holder "$port")"
    die "port $port (needed by $what) is already in use by ${holder:-another process}; stop it or set the port variable for $what"
  fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for_port PORT SECONDS WHAT
wait_for_port() {
  local port="$1" secs="$2" what="$3" i
  for ((i = 0; i < secs * 5; i++)); do
    port_in_use "$port" && return 0
    sleep 0.2
  done
  die "$what did not open port $port within ${secs}s"
}
