#!/usr/bin/env bash
# The settings the local stack runs with. Source it; every value can be overridden
# from the environment. Services read only MEDLEDGER_* variables (see README).
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export MEDLEDGER_KAFKA_BOOTSTRAP="${MEDLEDGER_KAFKA_BOOTSTRAP:-127.0.0.1:$MEDLEDGER_KAFKA_PORT}"
for _svc in identity consent records ledger; do
  _var="MEDLEDGER_${_svc^^}_DATABASE_URL"
  export "$_var"="${!_var:-postgresql://postgres@127.0.0.1:$MEDLEDGER_PG_PORT/medledger_$_svc}"
done
export MEDLEDGER_IDENTITY_PORT="${MEDLEDGER_IDENTITY_PORT:-50051}"
export MEDLEDGER_CONSENT_PORT="${MEDLEDGER_CONSENT_PORT:-50052}"
export MEDLEDGER_RECORDS_PORT="${MEDLEDGER_RECORDS_PORT:-50053}"
export MEDLEDGER_LEDGER_PORT="${MEDLEDGER_LEDGER_PORT:-50054}"
# The access monitor serves only gRPC health (and reflection) there.
export MEDLEDGER_MONITOR_PORT="${MEDLEDGER_MONITOR_PORT:-50055}"
# Each service's Prometheus endpoint, http://127.0.0.1:<port>/metrics (0 turns it off).
export MEDLEDGER_IDENTITY_METRICS_PORT="${MEDLEDGER_IDENTITY_METRICS_PORT:-9151}"
export MEDLEDGER_CONSENT_METRICS_PORT="${MEDLEDGER_CONSENT_METRICS_PORT:-9152}"
export MEDLEDGER_RECORDS_METRICS_PORT="${MEDLEDGER_RECORDS_METRICS_PORT:-9153}"
export MEDLEDGER_LEDGER_METRICS_PORT="${MEDLEDGER_LEDGER_METRICS_PORT:-9154}"
export MEDLEDGER_MONITOR_METRICS_PORT="${MEDLEDGER_MONITOR_METRICS_PORT:-9155}"
export MEDLEDGER_IDENTITY_ADDRESS="${MEDLEDGER_IDENTITY_ADDRESS:-127.0.0.1:$MEDLEDGER_IDENTITY_PORT}"
export MEDLEDGER_CONSENT_ADDRESS="${MEDLEDGER_CONSENT_ADDRESS:-127.0.0.1:$MEDLEDGER_CONSENT_PORT}"
export MEDLEDGER_LEDGER_ADDRESS="${MEDLEDGER_LEDGER_ADDRESS:-127.0.0.1:$MEDLEDGER_LEDGER_PORT}"
export MEDLEDGER_KEYS_DIR="${MEDLEDGER_KEYS_DIR:-$MEDLEDGER_RUN_DIR/keys}"
export MEDLEDGER_LEDGER_SIGNING_KEY_FILE="${MEDLEDGER_LEDGER_SIGNING_KEY_FILE:-$MEDLEDGER_KEYS_DIR/ledger-checkpoint.key}"
export MEDLEDGER_IDENTITY_TOKEN_KEY_FILE="${MEDLEDGER_IDENTITY_TOKEN_KEY_FILE:-$MEDLEDGER_KEYS_DIR/identity-token.key}"
export MEDLEDGER_IDENTITY_DATA_KEY_FILE="${MEDLEDGER_IDENTITY_DATA_KEY_FILE:-$MEDLEDGER_KEYS_DIR/identity-data.key}"
# Seals consent's break-glass justifications and review notes at rest.
export MEDLEDGER_CONSENT_DATA_KEY_FILE="${MEDLEDGER_CONSENT_DATA_KEY_FILE:-$MEDLEDGER_KEYS_DIR/consent-data.key}"
# The key-encryption key wrapping every patient's record data key (never committed).
export MEDLEDGER_RECORDS_KEK_FILE="${MEDLEDGER_RECORDS_KEK_FILE:-$MEDLEDGER_KEYS_DIR/records-kek.key}"
MEDLEDGER_OPERATOR_KEY_FILE="${MEDLEDGER_OPERATOR_KEY_FILE:-$MEDLEDGER_KEYS_DIR/operator.key}"
export MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY_FILE="${MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY_FILE:-$MEDLEDGER_OPERATOR_KEY_FILE.pub}"
# Event-signing keys: each producing service's private key, and the pinned
# public keys every consumer verifies with (docs/architecture.md, Event signing).
for _svc in identity consent records monitor; do
  _var="MEDLEDGER_${_svc^^}_EVENT_KEY_FILE"
  export "$_var"="${!_var:-$MEDLEDGER_KEYS_DIR/$_svc-events.key}"
done
export MEDLEDGER_EVENT_PRODUCER_KEYS_FILE="${MEDLEDGER_EVENT_PRODUCER_KEYS_FILE:-$MEDLEDGER_KEYS_DIR/event-producers.pub}"
export MEDLEDGER_LEDGER_ORIGIN="${MEDLEDGER_LEDGER_ORIGIN:-medledger.local/ledger}"
MEDLEDGER_VENV="${MEDLEDGER_VENV:-$MEDLEDGER_ROOT/.venv}"
MEDLEDGER_BIN="$MEDLEDGER_VENV/bin/medledger"
# Every process `make up` runs; the access monitor has no database.
MEDLEDGER_SERVICES=(identity consent records ledger monitor)
MEDLEDGER_DATABASES=(identity consent records ledger)
unset _svc _var
