#!/usr/bin/env bash
# Benchmarks against the real Kafka and PostgreSQL (started if needed).
# Each benchmark prints its figures and the exact command that produced them;
# docs/benchmarks.md records the latest measured figures.
set -euo pipefail
LOG_TAG=bench
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
bash "$HERE/stack.sh" infra >/dev/null
cd "$MEDLEDGER_ROOT"
py="$MEDLEDGER_VENV/bin/python"
"$py" deploy/bench_ledger.py --events "${BENCH_EVENTS:-1000000}"
if [ -f deploy/bench_consent.py ]; then
  "$py" deploy/bench_consent.py
fi
"$py" deploy/bench_metrics.py   # the metrics' own cost, in-process
"$py" deploy/bench_records.py
"$py" deploy/bench_audit.py --events "${BENCH_EVENTS:-1000000}"
"$py" deploy/bench_monitor.py
