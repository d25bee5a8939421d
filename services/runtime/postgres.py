"""PostgreSQL adapters shared by the services: pools, database creation and a
versioned SQL migration runner.

Migrations are files ``NNNN_description.sql`` in a service's ``migrations``
directory, applied in order at service start, each in its own transaction and
recorded in ``schema_migrations``. An advisory lock serialises concurrent
starters so two replicas never apply the same migration twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from medledger.runtime.errors import DependencyUnavailable, SettingsError

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MIGRATION_LOCK = 0x6D65646C  # "medl": one advisory lock id for migrations
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path) -> list[Migration]:
    """Read and order the migration files; reject gaps and duplicate versions."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise SettingsError(f"migration file {path} must be named NNNN_description.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SettingsError(f"migrations in {directory} must be numbered 0001.. without gaps, got {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection, directory: Path) -> list[int]:
    """Apply the migrations not applied yet; return their versions."""
    migrations = load_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for m in migrations:
            if m.version in done:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
            log.info("applied migration", extra={"version": m.version, "migration": m.name})
            applied.append(m.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def ensure_database(url: str) -> bool:
    """Create the URL's database when it does not exist; True if created.
    Lets a service (or a test with a random database) start on an empty cluster."""
    name = database_name(url)
    if not _DB_NAME.match(name):
        raise SettingsError(f"database name {name!r} in the database URL is not a plain identifier")
    conn = await connect(with_database(url, "postgres"))
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            return False  # another replica created it at the same moment
        return True
    finally:
        await conn.close()


async def drop_database(url: str) -> None:
    name = database_name(url)
    if not _DB_NAME.match(name):
        raise SettingsError(f"database name {name!r} is not a plain identifier")
    conn = await connect(with_database(url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, TimeoutError) as exc:
        raise DependencyUnavailable(f"PostgreSQL unavailable: {exc}") from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection's release: nothing beyond asyncpg's own (which rolls
    back an open transaction and drops Python-side listeners). Pooled
    connections carry no session state: advisory locks and LISTEN live on
    dedicated connections (runtime/leadership.py, migrations), transaction
    locks end with their transaction, and nothing runs SET. asyncpg's default
    reset query (UNLISTEN *, RESET ALL, pg_advisory_unlock_all, CLOSE ALL) would
    cost a round trip on every release (docs/architecture.md, Decisions)."""


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, timeout=5, reset=_keep_session)
    except (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, TimeoutError) as exc:
        raise DependencyUnavailable(f"PostgreSQL unavailable: {exc}") from exc
    assert pool is not None
    return pool


async def prepare_database(url: str, migrations: Path) -> None:
    """Create the database if needed and bring its schema up to date."""
    await ensure_database(url)
    conn = await connect(url)
    try:
        await apply_migrations(conn, migrations)
    finally:
        await conn.close()


async def postgres_reachable(pool: asyncpg.Pool, timeout: float = 2.0) -> bool:
    """True when the pool can run a trivial query in time. Never raises."""
    try:
        async with pool.acquire(timeout=timeout) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable now"
        return False
