#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) with MedLedger and its dev tools.
# Safe to run twice: it reinstalls only when pyproject.toml changed.
set -euo pipefail
LOG_TAG=bootstrap
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

py="${PYTHON:-python3}"
command -v "$py" >/dev/null || die "Python 3.11+ is required: apt-get install python3 python3-venv"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11+ is required (found $("$py" -V))"
if [ ! -x "$MEDLEDGER_VENV/bin/python" ]; then
  log "creating virtualenv in $MEDLEDGER_VENV"
  "$py" -m venv "$MEDLEDGER_VENV" || die "cannot create a venv: apt-get install python3-venv"
fi
stamp="$MEDLEDGER_VENV/.medledger-installed"
native="$MEDLEDGER_ROOT/native/ed25519-batch"  # ZIP 215 batch verification (Rust, built here)
if [ ! -f "$stamp" ] || [ "$MEDLEDGER_ROOT/pyproject.toml" -nt "$stamp" ] \
   || [ -n "$(find "$native/src" "$native/Cargo.toml" "$native/Cargo.lock" "$native/pyproject.toml" -newer "$stamp" 2>/dev/null)" ]; then
  command -v cargo >/dev/null || die "Rust's cargo is required to build $native (https://rustup.rs, or apt-get install cargo)"
  log "installing MedLedger and its dependencies into the venv (builds native/ed25519-batch with cargo)"
  "$MEDLEDGER_VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  # cargo's build directory is shared by every checkout on the machine: a fresh
  # clone recompiles only the crate, not its dependencies (3 s instead of 25-34 s).
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MEDLEDGER_CACHE_DIR/cargo-target}" \
    "$MEDLEDGER_VENV/bin/pip" install -q --disable-pip-version-check "$native"
  "$MEDLEDGER_VENV/bin/pip" install -q --disable-pip-version-check -e "$MEDLEDGER_ROOT[dev]"
  touch "$stamp"
fi
