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
case "${1:-all}" in
  # tlog-tiles side by side and fsck at scale (issue 13): Go builds Tessera v1.0.4's tools.
  tiles) exec "$py" deploy/bench_tiles.py ;;
  fsck) exec "$py" deploy/bench_tiles.py --fsck-entries "${BENCH_EVENTS:-1000000}" ;;
  all) ;;
  *) echo "usage: bench.sh [all|tiles|fsck]" >&2; exit 2 ;;
esac
"$py" deploy/bench_ledger.py --events "${BENCH_EVENTS:-1000000}"
"$py" deploy/bench_proofs.py --entries 1200000   # proofs from tiles in memory, and from PostgreSQL
if [ -f deploy/bench_consent.py ]; then
  "$py" deploy/bench_consent.py
fi
"$py" deploy/bench_metrics.py   # the metrics' own cost, in-process
"$py" deploy/bench_verify.py    # what a forged record costs a verifier, in-process
"$py" deploy/bench_records.py
"$py" deploy/bench_hops.py     # one hop between processes: the floor under the read target
"$py" deploy/bench_audit.py --events "${BENCH_EVENTS:-1000000}"
"$py" deploy/bench_disclosures.py --rows "${BENCH_EVENTS:-1000000}"   # records' ListDisclosures index
"$py" deploy/bench_monitor.py
