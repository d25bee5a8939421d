#!/usr/bin/env bash
# Private PostgreSQL cluster for MedLedger local development and CI.
#
# Usage: deploy/postgres/pg.sh COMMAND [ARGS]
#   install            find PostgreSQL >= 15 under /usr/lib/postgresql (apt-get install it when missing)
#   start              initialise (once) and start the cluster; prints the connection URL template
#   stop               stop the cluster (fast shutdown); fine when it is not running
#   status             "postgres: running on 127.0.0.1:PORT (pid N)" (exit 0) or "postgres: stopped" (exit 3)
#   createdb NAME...   create each database unless it exists
#   dropdb [--force] NAME...  drop each database if it exists (--force disconnects clients first)
#   psql [ARGS]        open psql on the cluster as user postgres (default database: postgres)
#   url [DB]           print postgresql://postgres@127.0.0.1:PORT/DB
#   logs [-f] [N]      show the last N (default 100) lines of the server log; -f follows it
#   reset              stop the cluster and delete its data directory
#   where              print the cluster directory (data/, socket/, postgres.log) this checkout uses
#
# Settings (environment): MEDLEDGER_RUN_DIR (default <repo>/.run), MEDLEDGER_PG_PORT (default 55432),
#   MEDLEDGER_PG_BIN (a PostgreSQL bin directory to use instead of /usr/lib/postgresql/<newest>/bin),
#   MEDLEDGER_PG_START_TIMEOUT (seconds, default 60),
#   MEDLEDGER_PG_CLUSTERS_DIR (where root keeps clusters, default /var/lib/postgresql/medledger),
#   MEDLEDGER_PG_DIR (use exactly this cluster directory; overrides the rules below).
#
# A cluster directory holds data/ (PGDATA), socket/ (unix socket; /tmp/medledger-pg-<hash> instead
# when that path would be too long for a socket) and postgres.log. Where it is:
#   - as a normal user: $MEDLEDGER_RUN_DIR/postgres; the server runs as that user.
#   - as root: initdb/pg_ctl must run as the `postgres` OS user (initdb refuses to run as root), and
#     that user often cannot reach the checkout (a clone in /root or in a 0700 mktemp dir). So the
#     cluster lives in $MEDLEDGER_PG_CLUSTERS_DIR/<first 12 hex of sha256(real path of
#     $MEDLEDGER_RUN_DIR)>, owned by `postgres`, one per checkout; $MEDLEDGER_RUN_DIR/postgres/cluster
#     and .../postgres.log are symlinks to it. The symlink is what keeps the cluster: a stopped cluster
#     that no run directory points at any more (its checkout or its .run was deleted, e.g. by
#     `make clean`) is deleted by the next `start`, as its data would have been with the checkout.
#   - a cluster already in $MEDLEDGER_RUN_DIR/postgres/data (made by a normal user, or by root
#     before clusters moved out of the checkout) keeps being used there; as root, its server runs as
#     the owner of that data directory. `reset` deletes it, and the next root `start` moves out.
# The cluster listens on 127.0.0.1 only and trusts every local connection: development use only.
# The Debian-managed system cluster (pg_ctlcluster, port 5432) is never touched.
set -euo pipefail

LOG_TAG=postgres
# shellcheck source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../lib.sh"

PG_MIN_MAJOR=15
PG_PORT="$MEDLEDGER_PG_PORT"
PG_HOST=127.0.0.1
START_TIMEOUT="${MEDLEDGER_PG_START_TIMEOUT:-60}"
case "$MEDLEDGER_RUN_DIR" in /*) ;; *) MEDLEDGER_RUN_DIR="$PWD/$MEDLEDGER_RUN_DIR" ;; esac
PG_LINK_DIR="$MEDLEDGER_RUN_DIR/postgres"   # in the checkout: the cluster itself, or symlinks to it
PG_CLUSTERS_DIR="$(realpath -m -- "${MEDLEDGER_PG_CLUSTERS_DIR:-/var/lib/postgresql/medledger}")"
PG_CONF_NAME=medledger.conf   # our settings; included from postgresql.conf
PG_OS_USER=postgres           # OS user that owns the cluster when this script runs as root
PG_SLOT=""                    # set when PG_DIR is root's per-checkout slot under $PG_CLUSTERS_DIR

is_root() { [ "$(id -u)" -eq 0 ]; }

# slot_for RUNDIR -> root's cluster directory for that run directory (a real, absolute path)
slot_for() { printf '%s/%s\n' "$PG_CLUSTERS_DIR" "$(printf '%s' "$1" | sha256sum | cut -c1-12)"; }

# Where this checkout's cluster is (see the header).
if [ -n "${MEDLEDGER_PG_DIR:-}" ]; then
  PG_DIR="$(realpath -m -- "$MEDLEDGER_PG_DIR")"
elif [ -e "$PG_LINK_DIR/data" ]; then
  PG_DIR="$PG_LINK_DIR"
  if is_root; then
    _owner="$(stat -c %U "$PG_DIR/data")"
    [ "$_owner" = root ] || PG_OS_USER="$_owner"
    unset _owner
  fi
elif is_root; then
  PG_DIR="$(slot_for "$(realpath -m -- "$MEDLEDGER_RUN_DIR")")"
  PG_SLOT=1
elif [ -L "$PG_LINK_DIR/cluster" ]; then
  # root's cluster for this checkout: status can probe it; start/stop say to run them as root.
  PG_DIR="$(readlink -- "$PG_LINK_DIR/cluster")"
else
  PG_DIR="$PG_LINK_DIR"
fi
PG_DATA="$PG_DIR/data"
PG_SOCKET_DIR="$PG_DIR/socket"
# A unix socket path is limited to 107 bytes ("/.s.PGSQL.NNNNN" adds 15): a deep checkout gets a
# short socket directory of its own in /tmp instead (clients here connect over TCP anyway).
if [ $((${#PG_SOCKET_DIR} + 15)) -gt 100 ]; then
  PG_SOCKET_DIR="/tmp/medledger-pg-$(printf '%s' "$PG_DIR" | sha256sum | cut -c1-12)"
fi
PG_LOG="$PG_DIR/postgres.log"

url() { printf 'postgresql://postgres@%s:%s/%s\n' "$PG_HOST" "$PG_PORT" "$1"; }

# ---------------------------------------------------------------- binaries

# major_of BINDIR -> major version number printed by pg_ctl --version (e.g. 15)
major_of() { "$1/pg_ctl" --version 2>/dev/null | sed -n 's/^pg_ctl (PostgreSQL) \([0-9][0-9]*\).*/\1/p'; }

usable_bin() { [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ] && [ -x "$1/postgres" ]; }

# find_bin [MAJOR] -> newest /usr/lib/postgresql/<ver>/bin with initdb and pg_ctl (or exactly MAJOR)
find_bin() {
  local want="${1:-}" ver best=""
  if [ -n "${MEDLEDGER_PG_BIN:-}" ]; then
    usable_bin "$MEDLEDGER_PG_BIN" && printf '%s\n' "$MEDLEDGER_PG_BIN"
    return 0
  fi
  for ver in $(ls /usr/lib/postgresql 2>/dev/null | grep -E '^[0-9]+$' | sort -n); do
    usable_bin "/usr/lib/postgresql/$ver/bin" || continue
    if [ -n "$want" ]; then [ "$ver" = "$want" ] && best="/usr/lib/postgresql/$ver/bin"
    elif [ "$ver" -ge "$PG_MIN_MAJOR" ]; then best="/usr/lib/postgresql/$ver/bin"; fi
  done
  if [ -n "$best" ]; then printf '%s\n' "$best"; fi
}

# resolve_bin: set PG_BIN, installing PostgreSQL with apt-get when missing (root only).
resolve_bin() {
  local bin
  if [ -n "${MEDLEDGER_PG_BIN:-}" ] && ! usable_bin "$MEDLEDGER_PG_BIN"; then
    die "MEDLEDGER_PG_BIN=$MEDLEDGER_PG_BIN has no initdb/pg_ctl/postgres"
  fi
  bin="$(find_bin)"
  if [ -z "$bin" ]; then
    if ! is_root; then
      die "PostgreSQL >= $PG_MIN_MAJOR server binaries not found under /usr/lib/postgresql; install them as root: sudo apt-get install -y postgresql (Debian/Ubuntu), or set MEDLEDGER_PG_BIN to a bin directory holding initdb and pg_ctl"
    fi
    command -v apt-get >/dev/null || die "PostgreSQL >= $PG_MIN_MAJOR not found and apt-get is not available; install PostgreSQL server binaries and set MEDLEDGER_PG_BIN"
    log "PostgreSQL >= $PG_MIN_MAJOR not found; installing it with apt-get (a Debian system cluster on 5432 may be created too; it is not used)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    bin="$(find_bin)"
    [ -n "$bin" ] || die "apt-get install postgresql did not provide PostgreSQL >= $PG_MIN_MAJOR under /usr/lib/postgresql"
  fi
  local major; major="$(major_of "$bin")"
  [ -n "$major" ] && [ "$major" -ge "$PG_MIN_MAJOR" ] || die "$bin is PostgreSQL ${major:-?}; need $PG_MIN_MAJOR or newer"
  PG_BIN="$bin"
}

cmd_install() {
  resolve_bin
  log "PostgreSQL $(major_of "$PG_BIN") server binaries: $PG_BIN"
}

# Choose binaries; when the data directory exists use the major version that created it.
select_bin() {
  if [ -f "$PG_DATA/PG_VERSION" ]; then
    local ver bin; ver="$(cat "$PG_DATA/PG_VERSION")"
    bin="$(find_bin "$ver" || true)"
    if [ -n "$bin" ] && [ "$(major_of "$bin")" = "$ver" ]; then PG_BIN="$bin"; return 0; fi
    die "$PG_DATA was created by PostgreSQL $ver, which is not installed (apt-get install -y postgresql-$ver), or wipe it with: $0 reset"
  fi
  resolve_bin
}

# ------------------------------------------------------------ ownership and paths

# Run a server command as the cluster owner: the postgres OS user when we are root, else ourselves.
as_owner() {
  if is_root; then
    (cd "$PG_DIR" && runuser -u "$PG_OS_USER" -- "$@")
  else
    "$@"
  fi
}

# Create $PG_DIR (and socket dir) owned by the cluster owner and check the owner can reach it.
prepare_dirs() {
  mkdir -p "$PG_DIR"
  if [ "${PG_SOCKET_DIR#"$PG_DIR"/}" = "$PG_SOCKET_DIR" ]; then
    # The short socket directory in /tmp: private, and nobody else's (a name in /tmp can be taken).
    mkdir -p -m 0700 "$PG_SOCKET_DIR" || die "cannot create $PG_SOCKET_DIR"
    local sock_owner; sock_owner="$(stat -c %U "$PG_SOCKET_DIR")"
    if [ "$sock_owner" != "$(id -un)" ] && ! { is_root && [ "$sock_owner" = "$PG_OS_USER" ]; }; then
      die "$PG_SOCKET_DIR (the unix socket directory for $PG_DIR) belongs to $sock_owner; remove it, or set MEDLEDGER_RUN_DIR to a shorter path"
    fi
  else
    mkdir -p "$PG_SOCKET_DIR"
  fi
  if is_root; then
    id -u "$PG_OS_USER" >/dev/null 2>&1 || die "OS user '$PG_OS_USER' does not exist (it comes with the Debian postgresql packages); run: apt-get install -y postgresql"
    chown "$PG_OS_USER:$PG_OS_USER" "$PG_DIR" "$PG_SOCKET_DIR"
    [ ! -e "$PG_LOG" ] || chown "$PG_OS_USER:$PG_OS_USER" "$PG_LOG"
    [ ! -e "$PG_DIR/.pg.sh.lock" ] || chown "$PG_OS_USER:$PG_OS_USER" "$PG_DIR/.pg.sh.lock"
    if ! runuser -u "$PG_OS_USER" -- test -x "$PG_DIR" -a -w "$PG_DIR"; then
      local d="$PG_DIR" blocker=""
      while [ "$d" != "/" ]; do
        d="$(dirname "$d")"
        runuser -u "$PG_OS_USER" -- test -x "$d" || blocker="$d"
      done
      if [ "$PG_DIR" = "$PG_LINK_DIR" ]; then
        die "the '$PG_OS_USER' OS user cannot reach the cluster in $PG_DIR: ${blocker:-a parent directory} is not searchable by it ($(stat -c '%A %U:%G' "${blocker:-$PG_DIR}")). Fix with 'chmod o+x ${blocker:-<dir>}', or discard that cluster with '$0 reset' so the next start creates one under $PG_CLUSTERS_DIR"
      fi
      die "the '$PG_OS_USER' OS user cannot reach $PG_DIR: ${blocker:-a parent directory} is not searchable by it ($(stat -c '%A %U:%G' "${blocker:-$PG_DIR}")). Fix with 'chmod o+x ${blocker:-<dir>}', or set MEDLEDGER_PG_DIR / MEDLEDGER_PG_CLUSTERS_DIR to a directory it can reach"
    fi
  elif [ -d "$PG_DATA" ] && [ "$(stat -c %u "$PG_DATA")" != "$(id -u)" ]; then
    die "$PG_DATA belongs to $(stat -c %U "$PG_DATA"), not $(id -un); run this script as root (or that user), or use another MEDLEDGER_RUN_DIR"
  fi
  # A unix socket path is limited to 107 bytes.
  local sock="$PG_SOCKET_DIR/.s.PGSQL.$PG_PORT"
  [ "${#sock}" -le 100 ] || die "unix socket path $sock is too long (${#sock} > 100 bytes); set MEDLEDGER_RUN_DIR to a shorter path"
}

# ------------------------------------------------------------ root's per-checkout slots

slot_owner() { cat "$1/owner" 2>/dev/null; }

# slot_in_use SLOT: the run directory recorded in SLOT/owner still points at SLOT.
slot_in_use() {
  local owner; owner="$(slot_owner "$1")" && [ -n "$owner" ] || return 1
  [ "$(readlink -- "$owner/postgres/cluster" 2>/dev/null)" = "$1" ]
}

# claim_slot (start, under the lock): record this run directory as the slot's owner and point
# $PG_LINK_DIR at it. A stopped cluster left in the slot by an earlier run directory at this path
# that was deleted (make clean) is discarded first, as it would have been inside that directory.
claim_slot() {
  [ -n "$PG_SLOT" ] || return 0
  local me owner; me="$(realpath -m -- "$MEDLEDGER_RUN_DIR")"
  owner="$(slot_owner "$PG_DIR" || true)"
  if [ -n "$owner" ] && [ "$owner" != "$me" ]; then
    die "$PG_DIR belongs to $owner (path hash collision); set MEDLEDGER_PG_DIR for this checkout"
  fi
  if ! slot_in_use "$PG_DIR" && { [ -e "$PG_DATA" ] || [ -e "$PG_DIR/data.initdb" ]; }; then
    if postmaster_pid >/dev/null; then
      log "adopting the running cluster in $PG_DIR (its pointer in $PG_LINK_DIR was deleted)"
    else
      log "discarding $PG_DATA: left by an earlier $MEDLEDGER_RUN_DIR that was deleted"
      rm -rf "$PG_DATA" "$PG_DIR/data.initdb" "$PG_DIR/initdb.log"
      [ ! -e "$PG_LOG" ] || : >"$PG_LOG"
    fi
  fi
  printf '%s\n' "$me" >"$PG_DIR/owner"
  mkdir -p "$PG_LINK_DIR" || die "cannot create $PG_LINK_DIR"
  ln -sfn "$PG_DIR" "$PG_LINK_DIR/cluster"
  ln -sfn "$PG_LOG" "$PG_LINK_DIR/postgres.log"
}

# prune_slots (root start): delete stopped clusters under $PG_CLUSTERS_DIR that no run directory
# points at any more (their checkout was deleted), skipping any another pg.sh is busy with.
prune_slots() {
  [ -n "$PG_SLOT" ] && [ -d "$PG_CLUSTERS_DIR" ] || return 0
  local slot owner
  for slot in "$PG_CLUSTERS_DIR"/*/; do
    slot="${slot%/}"
    [ "$slot" != "$PG_DIR" ] && [ -f "$slot/owner" ] || continue
    slot_in_use "$slot" && continue
    PG_DATA="$slot/data" postmaster_pid >/dev/null && continue
    owner="$(slot_owner "$slot" || true)"
    if (
      exec 8>>"$slot/.pg.sh.lock"
      flock -n 8 || exit 1
      ! slot_in_use "$slot" && ! PG_DATA="$slot/data" postmaster_pid >/dev/null || exit 1
      rm -rf "$slot"
    ); then
      log "deleted the stopped cluster $slot of ${owner:-?}, which no longer points at it"
    fi
  done
}

# Serialise start/stop/reset so two concurrent callers do not initdb or start twice.
take_lock() {
  mkdir -p "$PG_DIR" 2>/dev/null || die "cannot create $PG_DIR as $(id -un); set MEDLEDGER_RUN_DIR to a writable directory"
  if ! is_root && { [ ! -w "$PG_DIR" ] || { [ -e "$PG_DIR/.pg.sh.lock" ] && [ ! -w "$PG_DIR/.pg.sh.lock" ]; }; }; then
    die "$PG_DIR is managed by $(stat -c %U "$PG_DIR") (root runs the cluster as '$PG_OS_USER'); run this as root (sudo $0 ...), or set MEDLEDGER_RUN_DIR to a directory of your own"
  fi
  exec 9>"$PG_DIR/.pg.sh.lock"
  flock -w 120 9 || die "another pg.sh is still busy with $PG_DIR (lock $PG_DIR/.pg.sh.lock)"
}

# ------------------------------------------------------------------- state

# postmaster_pid -> pid from postmaster.pid when that process is alive and is a postgres server
postmaster_pid() {
  local pid
  [ -f "$PG_DATA/postmaster.pid" ] || return 1
  pid="$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || [ -d "/proc/$pid" ] || return 1
  if [ -r "/proc/$pid/stat" ]; then
    local stat; stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    # "pid (comm) state ...": a reused pid is not a postgres; a zombie (Z) is a dead server not yet reaped.
    case "$stat" in *"(postgres) "[!ZX]*|*"(postmaster) "[!ZX]*) ;; *) return 1 ;; esac
  fi
  printf '%s\n' "$pid"
}

# Port the running server actually listens on (line 4 of postmaster.pid), falling back to the setting.
running_port() { sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null | grep -E '^[0-9]+$' || printf '%s\n' "$PG_PORT"; }

pg_ready() { "$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "${1:-$PG_PORT}" -U postgres -d postgres -t 2 >/dev/null 2>&1; }

LOG_OFFSET=0   # size of the log before our pg_ctl start: show only what this start wrote
show_log_tail() {
  if [ -f "$PG_LOG" ]; then
    log "last lines of $PG_LOG:"
    tail -c "+$((LOG_OFFSET + 1))" "$PG_LOG" | tail -n 40 | sed 's/^/    /' >&2
  fi
}

# A server killed with SIGKILL stays a zombie until its parent (often pid 1) reaps it; meanwhile the
# postmaster.pid lock still names a live pid and a new server refuses to start. Wait for the reaping.
wait_stale_pid() {
  local pid i
  pid="$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null)" || return 0
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] || return 0
  grep -q '^[^)]*) [ZX]' "/proc/$pid/stat" 2>/dev/null || return 0
  log "previous postgres (pid $pid) died and is not reaped yet (zombie); waiting for it to go away"
  for ((i = 0; i < START_TIMEOUT * 4; i++)); do
    [ -d "/proc/$pid" ] || return 0
    sleep 0.25
  done
  die "pid $pid named in $PG_DATA/postmaster.pid is still a zombie after ${START_TIMEOUT}s; its parent ($(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')) does not reap children"
}

# wait_ready PID: until pg_isready answers on 127.0.0.1, the postmaster exits, or the timeout ends.
wait_ready() {
  local pid="$1" i
  for ((i = 0; i < START_TIMEOUT * 4; i++)); do
    pg_ready && return 0
    if [ -n "$pid" ] && ! postmaster_pid >/dev/null; then
      show_log_tail; die "postgres (pid $pid) exited while starting"
    fi
    sleep 0.25
  done
  show_log_tail
  die "postgres did not accept connections on $PG_HOST:$PG_PORT within ${START_TIMEOUT}s"
}

# ------------------------------------------------------------------ start

sq() { printf "'%s'" "${1//\'/\'\'}"; }   # quote a postgresql.conf string value

write_conf() {
  local tmp="$PG_DIR/.$PG_CONF_NAME.new"
  cat >"$tmp" <<EOF
# Written by deploy/postgres/pg.sh; regenerated when its settings change. Local development only.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = $(sq "$PG_SOCKET_DIR")
max_connections = 200
shared_buffers = 256MB
wal_level = replica
# A ledger: commits must be durable.
fsync = on
synchronous_commit = on
full_page_writes = on
# Bursts: the ledger writes about 1 KB of WAL per event, so the default 1GB forced a
# checkpoint (and a wave of full-page writes) in the middle of a 300,000-event burst.
# Measured A/B in docs/benchmarks.md (2026-12-01 16:50 UTC).
max_wal_size = 4GB
checkpoint_timeout = 15min
wal_compression = lz4
# stderr goes to $PG_LOG (pg_ctl -l)
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
  if ! cmp -s "$tmp" "$PG_DATA/$PG_CONF_NAME"; then
    [ -f "$PG_DATA/$PG_CONF_NAME" ] && log "updating $PG_DATA/$PG_CONF_NAME"
    mv -f "$tmp" "$PG_DATA/$PG_CONF_NAME"
    chmod 600 "$PG_DATA/$PG_CONF_NAME"
    if is_root; then chown "$PG_OS_USER:$PG_OS_USER" "$PG_DATA/$PG_CONF_NAME"; fi
  else
    rm -f "$tmp"
  fi
  grep -q "^include = '$PG_CONF_NAME'" "$PG_DATA/postgresql.conf" ||
    printf "\n# MedLedger settings (deploy/postgres/pg.sh)\ninclude = '%s'\n" "$PG_CONF_NAME" >>"$PG_DATA/postgresql.conf"
}

init_cluster() {
  [ -f "$PG_DATA/PG_VERSION" ] && return 0
  if [ -e "$PG_DATA" ]; then
    die "$PG_DATA exists but is not a PostgreSQL data directory; move it away or run: $0 reset"
  fi
  # initdb into a scratch directory and rename it, so an interrupted initdb never leaves a half cluster.
  local tmp="$PG_DIR/data.initdb"
  rm -rf "$tmp"
  log "initialising a new cluster in $PG_DATA"
  if ! as_owner "$PG_BIN/initdb" --pgdata="$tmp" --auth=trust --username=postgres \
      --encoding=UTF8 --locale=C --data-checksums >"$PG_DIR/initdb.log" 2>&1; then
    sed 's/^/    /' "$PG_DIR/initdb.log" >&2
    rm -rf "$tmp"
    die "initdb failed (output above, also in $PG_DIR/initdb.log)"
  fi
  mv "$tmp" "$PG_DATA"
}

cmd_start() {
  if [ -n "$PG_SLOT" ]; then (umask 022 && mkdir -p "$PG_CLUSTERS_DIR") || die "cannot create $PG_CLUSTERS_DIR"; fi
  take_lock
  prepare_dirs
  claim_slot
  prune_slots
  select_bin
  local pid port
  if pid="$(postmaster_pid)"; then
    port="$(running_port)"
    if ! pg_ready "$port"; then
      log "postgres (pid $pid) is starting; waiting for it"
      PG_PORT="$port" wait_ready "$pid"
    fi
    log "already running on $PG_HOST:$port (pid $pid)"
    [ "$port" = "$PG_PORT" ] || log "warning: it listens on $port but MEDLEDGER_PG_PORT=$PG_PORT; run '$0 stop' then '$0 start' to move it"
    PG_PORT="$port" url '<db>'
    return 0
  fi
  init_cluster
  write_conf
  wait_stale_pid
  require_free_port "$PG_PORT" "postgres (MEDLEDGER_PG_PORT)"
  LOG_OFFSET="$(stat -c %s "$PG_LOG" 2>/dev/null || echo 0)"
  log "starting postgres on $PG_HOST:$PG_PORT (data $PG_DATA, log $PG_LOG)"
  local t0=$SECONDS
  # 9>&- : the server must not inherit our lock.
  if ! as_owner "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$START_TIMEOUT" -s 9>&- >&2; then
    show_log_tail
    die "pg_ctl start failed"
  fi
  pid="$(postmaster_pid || true)"
  wait_ready "$pid"
  log "running on $PG_HOST:$PG_PORT (pid ${pid:-?}), ready in $((SECONDS - t0))s; connect with:"
  url '<db>'
}

# -------------------------------------------------------------- stop/status

cmd_stop() {
  # Root's slot: do not create an empty one just to find nothing in it.
  if [ -n "$PG_SLOT" ] && [ ! -f "$PG_DATA/PG_VERSION" ]; then log "not initialised ($PG_DATA); nothing to stop"; return 0; fi
  take_lock
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then log "not initialised ($PG_DATA); nothing to stop"; return 0; fi
  local pid
  if ! pid="$(postmaster_pid)"; then log "not running"; return 0; fi
  select_bin
  log "stopping postgres (pid $pid)"
  as_owner "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$START_TIMEOUT" -s 9>&- >&2 ||
    die "pg_ctl stop failed; see $PG_LOG"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(postmaster_pid)"; then
    echo "postgres: running on $PG_HOST:$(running_port) (pid $pid)"
    return 0
  fi
  # The data directory is private to its owner: other users can only probe the port.
  if [ -d "$PG_DATA" ] && [ ! -r "$PG_DATA" ] && PG_BIN="$(find_bin)" && [ -n "$PG_BIN" ] && pg_ready; then
    pid="$(port_holder "$PG_PORT" | sed -n 's/.* pid //p')"
    echo "postgres: running on $PG_HOST:$PG_PORT (pid ${pid:-unknown})"
    return 0
  fi
  echo "postgres: stopped"
  return 3
}

# ------------------------------------------------------------------ psql

require_running() {
  postmaster_pid >/dev/null || die "postgres is not running; start it with: $0 start"
  PG_PORT="$(running_port)"
  [ -n "${PG_BIN:-}" ] || select_bin
}

run_psql() { PGCONNECT_TIMEOUT=10 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres "$@"; }

db_exists() { [ "$(run_psql -At -v name="$1" <<<"SELECT 1 FROM pg_database WHERE datname = :'name';")" = 1 ]; }

cmd_createdb() {
  [ $# -gt 0 ] || die "usage: $0 createdb NAME..."
  require_running
  local name
  for name in "$@"; do
    if db_exists "$name"; then log "database $name exists"; continue; fi
    if run_psql -v name="$name" <<<'CREATE DATABASE :"name";' || db_exists "$name"; then
      log "created database $name: $(url "$name")"
    else
      die "could not create database $name"
    fi
  done
}

cmd_dropdb() {
  local force=""
  if [ "${1:-}" = "--force" ]; then force=" WITH (FORCE)"; shift; fi
  [ $# -gt 0 ] || die "usage: $0 dropdb [--force] NAME..."
  require_running
  local name
  for name in "$@"; do
    if ! db_exists "$name"; then log "database $name does not exist"; continue; fi
    run_psql -v name="$name" <<<"DROP DATABASE IF EXISTS :\"name\"$force;" ||
      die "could not drop database $name (clients still connected? use: $0 dropdb --force $name)"
    log "dropped database $name"
  done
}

cmd_psql() {
  require_running
  exec "$PG_BIN/psql" -h "$PG_HOST" -p "$PG_PORT" -U postgres "$@"
}

# ------------------------------------------------------------------ misc

cmd_logs() {
  local follow="" n=100
  for a in "$@"; do
    case "$a" in -f|--follow) follow=1 ;; *[!0-9]*|"") die "usage: $0 logs [-f] [N]" ;; *) n="$a" ;; esac
  done
  [ -f "$PG_LOG" ] || die "no log yet at $PG_LOG"
  if [ -n "$follow" ]; then exec tail -n "$n" -F "$PG_LOG"; fi
  tail -n "$n" "$PG_LOG"
}

cmd_reset() {
  cmd_stop
  if [ -n "$PG_SLOT" ]; then
    rm -f "$PG_LINK_DIR/cluster" "$PG_LINK_DIR/postgres.log"
    if [ -d "$PG_DIR" ]; then rm -rf "$PG_DIR"; log "deleted $PG_DIR"; else log "no data directory at $PG_DATA"; fi
    return 0
  fi
  [ "${PG_SOCKET_DIR#"$PG_DIR"/}" != "$PG_SOCKET_DIR" ] || rm -rf "$PG_SOCKET_DIR"
  if [ -e "$PG_DATA" ] || [ -e "$PG_DIR/data.initdb" ]; then
    rm -rf "$PG_DATA" "$PG_DIR/data.initdb"
    log "deleted $PG_DATA"
  else
    log "no data directory at $PG_DATA"
  fi
}

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; }

main() {
  local cmd="${1:-}"; [ $# -eq 0 ] || shift
  case "$cmd" in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    createdb) cmd_createdb "$@" ;;
    dropdb) cmd_dropdb "$@" ;;
    psql) cmd_psql "$@" ;;
    url) url "${1:-<db>}" ;;
    logs) cmd_logs "$@" ;;
    reset) cmd_reset "$@" ;;
    where) printf '%s\n' "$PG_DIR" ;;
    -h|--help|help) usage ;;
    *) usage; [ -z "$cmd" ] || die "unknown command: $cmd"; exit 2 ;;
  esac
}

main "$@"
