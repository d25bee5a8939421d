"""The records database (asyncpg): facts from the projection, data keys,
records and their versions, erasures and research artifacts. Queries only;
the rules are in domain.py and the orchestration in commands.py / reads.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import asyncpg

from medledger.identity.domain import Key
from medledger.records import domain
from medledger.records.domain import BreakGlassFact, ConsentFact, Party, PatientFacts, RecordHead
from medledger.runtime.outbox import Conn, QueuedEvent
from medledger.v1 import records_pb2

# ---- facts (projection) -------------------------------------------------------------


async def party(conn: Conn, identity_id: str) -> Party | None:
    row = await conn.fetchrow(
        "SELECT identity_id, kind, active, registered_by, organization_type FROM identities WHERE identity_id = $1",
        identity_id,
    )
    if row is None:
        return None
    return Party(row["identity_id"], row["kind"], row["active"], row["registered_by"], row["organization_type"],
                 await organizations(conn, identity_id))


async def organizations(conn: Conn, member_id: str) -> frozenset[str]:
    """Organizations where member_id has an active membership."""
    rows = await conn.fetch("SELECT organization_id FROM memberships WHERE member_id = $1 AND active", member_id)
    return frozenset(r["organization_id"] for r in rows)


async def representatives(conn: Conn, patient_id: str) -> frozenset[str]:
    rows = await conn.fetch(
        "SELECT representative_id FROM representatives WHERE patient_id = $1 AND active", patient_id
    )
    return frozenset(r["representative_id"] for r in rows)


async def consents(conn: Conn, patient_id: str) -> tuple[ConsentFact, ...]:
    rows = await conn.fetch(
        f"SELECT {_CONSENT_COLUMNS} FROM consents WHERE patient_id = $1",
        patient_id,
    )
    return tuple(_consent(r) for r in rows)


def _consent(r: tuple[object, ...] | asyncpg.Record) -> ConsentFact:
    consent_id, grantee_id, purposes, record_ids, valid_from, valid_until, revoked = tuple(r)
    return ConsentFact(consent_id, grantee_id, frozenset(int(p) for p in purposes), valid_from, valid_until,
                       revoked, frozenset(record_ids))


_CONSENT_COLUMNS = "consent_id, grantee_id, purposes, record_ids, valid_from, valid_until, revoked"
_PARTY = "SELECT row(identity_id, kind, active, registered_by, organization_type) FROM identities WHERE identity_id = {}"
_ORGANIZATIONS = "ARRAY(SELECT organization_id FROM memberships WHERE member_id = {} AND active)"
_REPRESENTATIVES = "ARRAY(SELECT representative_id FROM representatives WHERE patient_id = {} AND active)"
# asyncpg has no decoder for integer[] inside an anonymous record: purposes travel as text there.
_CONSENTS = ("ARRAY(SELECT row(consent_id, grantee_id, purposes::text[], record_ids, valid_from, valid_until, revoked)"
             " FROM consents WHERE patient_id = {})")


def _party_of(row: tuple[str, str, bool, str, str] | None, organizations: list[str]) -> Party | None:
    if row is None:
        return None
    identity_id, kind, active, registered_by, organization_type = row
    return Party(identity_id, kind, active, registered_by, organization_type, frozenset(organizations))


_FACTS = (
    f"SELECT ({_PARTY.format('$1')}) AS patient, {_ORGANIZATIONS.format('$1')} AS patient_organizations,"
    f" ({_PARTY.format('$2')}) AS other, {_ORGANIZATIONS.format('$2')} AS other_organizations,"
    f" {_REPRESENTATIVES.format('$1')} AS representatives, {_CONSENTS.format('$1')} AS consents,"
    " ARRAY(SELECT row(break_glass_id, practitioner_id, organization_id, valid_until) FROM break_glass"
    " WHERE patient_id = $1) AS break_glass,"
    " (SELECT row(erased_at, kek_id, wrapped_key) FROM patient_keys WHERE patient_id = $1) AS data_key,"
    " EXISTS(SELECT 1 FROM records WHERE record_id = $3) AS taken,"
    " ARRAY(SELECT row(key_id, public_key, valid_from, replaced_at, revoked_at) FROM signing_keys"
    " WHERE identity_id = $2 ORDER BY ordinal) AS keys"
)


@dataclass(frozen=True)
class CommandFacts:
    """Everything a command checks before its transaction, read in one round
    trip: the patient's facts, the acting party (author or signer) and its
    keys, oldest first (for domain.resolve_key), and whether a record id is
    taken."""

    patient: PatientFacts
    party: Party | None
    record_taken: bool
    keys: tuple[Key, ...] = ()
    data_key: WrappedKey | None = None  # the patient's, unless none was made yet or it was erased


@dataclass(frozen=True)
class WrappedKey:
    """A patient's data key as stored: wrapped by the key-encryption key kek_id."""

    kek_id: str
    wrapped_key: bytes


async def command_facts(conn: Conn, patient_id: str, party_id: str, record_id: str = "") -> CommandFacts:
    row = await conn.fetchrow(_FACTS, patient_id, party_id, record_id)
    assert row is not None
    erased_at, kek_id, wrapped = row["data_key"] or (None, None, None)
    facts = PatientFacts(
        patient=_party_of(row["patient"], row["patient_organizations"]),
        representatives=frozenset(row["representatives"]),
        consents=tuple(_consent(c) for c in row["consents"]),
        break_glass=tuple(BreakGlassFact(*b) for b in row["break_glass"]),
        erased_at=erased_at,
    )
    keys = tuple(Key(*k) for k in row["keys"])
    data_key = WrappedKey(kek_id, wrapped) if kek_id is not None and wrapped is not None else None
    return CommandFacts(facts, _party_of(row["other"], row["other_organizations"]), bool(row["taken"]), keys, data_key)


@dataclass(frozen=True)
class ReadFacts:
    """What a single-record read checks before asking anyone, in one round
    trip: the reader's organizations, the record's head, and its patient's
    representatives and consents."""

    organizations: frozenset[str]
    head: RecordHead | None
    representatives: frozenset[str]
    consents: tuple[ConsentFact, ...]


async def read_facts(conn: Conn, reader_id: str, record_id: str) -> ReadFacts:
    row = await conn.fetchrow(
        f"WITH h AS ({_HEAD} WHERE r.record_id = $2)"
        f" SELECT {_ORGANIZATIONS.format('$1')} AS organizations, (SELECT row(h.*) FROM h) AS head,"
        f" {_REPRESENTATIVES.format('(SELECT patient_id FROM h)')} AS representatives,"
        f" {_CONSENTS.format('(SELECT patient_id FROM h)')} AS consents",
        reader_id, record_id,
    )
    assert row is not None
    head_row = row["head"]
    return ReadFacts(
        frozenset(row["organizations"]),
        RecordHead(head_row[0], head_row[1], head_row[2], head_row[3], head_row[4], head_row[6], head_row[5])
        if head_row is not None else None,
        frozenset(row["representatives"]),
        tuple(_consent(c) for c in row["consents"]),
    )


# ---- data keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class PatientKey:
    kek_id: str
    wrapped_key: bytes | None
    erased_at: datetime | None
    erasure_id: str | None
    erasure_event_id: str | None
    versions_erased: int | None


async def patient_key(conn: Conn, patient_id: str, lock: str = "") -> PatientKey | None:
    """lock: "" (none), "SHARE" (writers: many at once, no erasure meanwhile)
    or "UPDATE" (erasure: waits for the writers, excludes everyone)."""
    assert lock in ("", "SHARE", "UPDATE")
    row = await conn.fetchrow(
        "SELECT kek_id, wrapped_key, erased_at, erasure_id, erasure_event_id, versions_erased FROM patient_keys"
        " WHERE patient_id = $1" + (f" FOR {lock}" if lock else ""),
        patient_id,
    )
    return _patient_key(row) if row is not None else None


def _patient_key(row: asyncpg.Record) -> PatientKey:
    return PatientKey(row["kek_id"], row["wrapped_key"], row["erased_at"], row["erasure_id"], row["erasure_event_id"],
                      row["versions_erased"])


async def add_patient_key(conn: Conn, patient_id: str, kek_id: str, wrapped_key: bytes | None) -> None:
    """Insert unless the patient has a key row already (a concurrent first write won)."""
    await conn.execute(
        "INSERT INTO patient_keys (patient_id, kek_id, wrapped_key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        patient_id, kek_id, wrapped_key,
    )


async def erase_patient(conn: Conn, patient_id: str, erasure_id: str, event_id: str, at: datetime) -> int:
    """Destroy the wrapped data key and the ciphertexts; how many versions were erased."""
    erased = await conn.fetchval(
        "WITH gone AS (UPDATE record_versions v SET sealed = NULL FROM records r"
        " WHERE r.record_id = v.record_id AND r.patient_id = $1 RETURNING 1) SELECT count(*) FROM gone",
        patient_id,
    )
    await conn.execute(
        "UPDATE patient_keys SET wrapped_key = NULL, erased_at = $2, erasure_id = $3, erasure_event_id = $4,"
        " versions_erased = $5 WHERE patient_id = $1",
        patient_id, at, erasure_id, event_id, erased,
    )
    return int(erased)


# ---- records ---------------------------------------------------------------------------


def _head(row: asyncpg.Record) -> RecordHead:
    return RecordHead(row["record_id"], row["patient_id"], row["category"], row["custodian_id"],
                      row["latest_version"], row["commitment"], row["created_at"])


_HEAD = (
    "SELECT r.record_id, r.patient_id, r.category, r.custodian_id, r.latest_version, r.created_at, v.commitment"
    " FROM records r JOIN record_versions v ON v.record_id = r.record_id AND v.version = r.latest_version"
)


async def head(conn: Conn, record_id: str, lock: bool = False) -> RecordHead | None:
    row = await conn.fetchrow(_HEAD + " WHERE r.record_id = $1" + (" FOR UPDATE OF r" if lock else ""), record_id)
    return _head(row) if row else None


async def heads(
    conn: Conn, patient_id: str, categories: Sequence[str], created_from: datetime | None,
    created_until: datetime | None, after: domain.ListCursor | None,
) -> list[RecordHead]:
    """The patient's records matching the filters, newest first, after the cursor."""
    sql = _HEAD + " WHERE r.patient_id = $1"
    args: list[object] = [patient_id]
    if categories:
        args.append(list(categories))
        sql += f" AND r.category = ANY(${len(args)}::text[])"
    if created_from is not None:
        args.append(created_from)
        sql += f" AND r.created_at >= ${len(args)}"
    if created_until is not None:
        args.append(created_until)
        sql += f" AND r.created_at < ${len(args)}"
    if after is not None:
        args += [after.created_at, after.record_id]
        sql += f" AND (r.created_at, r.record_id) < (${len(args) - 1}, ${len(args)})"
    rows = await conn.fetch(sql + " ORDER BY r.created_at DESC, r.record_id DESC", *args)
    return [_head(r) for r in rows]


@dataclass(frozen=True)
class StoredVersion:
    record_id: str
    version: int
    author_id: str
    attestation: bytes
    author_signature: bytes
    commitment: bytes
    sealed: bytes | None
    recorded_at: datetime
    event_id: str
    ledger_index: int | None


_VERSION_COLUMNS = (
    "record_id", "version", "author_id", "attestation", "author_signature", "commitment", "sealed", "recorded_at",
    "event_id", "ledger_index",
)
_VERSION = f"SELECT {', '.join(_VERSION_COLUMNS)} FROM record_versions"


def _version(row: asyncpg.Record) -> StoredVersion:
    return StoredVersion(**dict(row))


async def version_and_key(conn: Conn, record_id: str, number: int, patient_id: str) -> tuple[StoredVersion | None, PatientKey | None]:
    """A version and its patient's data key row, in one round trip."""
    columns = ", ".join(f"v.{c}" for c in _VERSION_COLUMNS)
    row = await conn.fetchrow(
        f"SELECT {columns}, k.kek_id, k.wrapped_key, k.erased_at, k.erasure_id, k.erasure_event_id, k.versions_erased"
        " FROM record_versions v LEFT JOIN patient_keys k ON k.patient_id = $3"
        " WHERE v.record_id = $1 AND v.version = $2",
        record_id, number, patient_id,
    )
    if row is None:
        return None, None
    found = StoredVersion(**{c: row[c] for c in _VERSION_COLUMNS})
    return found, _patient_key(row) if row["kek_id"] is not None else None


async def versions(conn: Conn, record_id: str, first: int, limit: int) -> list[StoredVersion]:
    rows = await conn.fetch(
        _VERSION + " WHERE record_id = $1 AND version >= $2 ORDER BY version LIMIT $3", record_id, first, limit
    )
    return [_version(r) for r in rows]


async def latest_versions(conn: Conn, record_ids: Sequence[str]) -> dict[str, StoredVersion]:
    columns = ", ".join(f"v.{c}" for c in _VERSION_COLUMNS)
    rows = await conn.fetch(
        f"SELECT {columns} FROM record_versions v JOIN records r"
        " ON r.record_id = v.record_id AND v.version = r.latest_version WHERE v.record_id = ANY($1::text[])",
        list(record_ids),
    )
    return {r["record_id"]: _version(r) for r in rows}


_VERSION_INTO = (
    "INSERT INTO record_versions (record_id, version, author_id, attestation, author_signature, commitment, sealed,"
    " recorded_at, event_id)"
)


def _version_args(v: StoredVersion) -> tuple[object, ...]:
    return (v.record_id, v.version, v.author_id, v.attestation, v.author_signature, v.commitment, v.sealed,
            v.recorded_at, v.event_id)


async def insert_record(conn: Conn, head: RecordHead, first: StoredVersion) -> bool:
    """The record with its first version, in one statement; False (nothing
    inserted) when the record id is taken."""
    inserted = await conn.fetchval(
        "WITH r AS (INSERT INTO records (record_id, patient_id, category, custodian_id, latest_version, created_at)"
        " VALUES ($1, $10, $11, $12, $2, $13) ON CONFLICT (record_id) DO NOTHING RETURNING record_id) "
        + _VERSION_INTO + " SELECT r.record_id, $2, $3, $4, $5, $6, $7, $8, $9 FROM r RETURNING true",
        *_version_args(first), head.patient_id, head.category, head.custodian_id, head.created_at,
    )
    return bool(inserted)


async def insert_version(conn: Conn, v: StoredVersion) -> None:
    """A later version, and the record's latest_version moved to it, in one statement."""
    await conn.execute(
        f"WITH v AS ({_VERSION_INTO} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING record_id, version)"
        " UPDATE records r SET latest_version = v.version FROM v"
        " WHERE r.record_id = v.record_id AND r.latest_version < v.version",
        *_version_args(v),
    )


async def write_at_once(conn: Conn, patient_id: str, created: RecordHead | None, v: StoredVersion,
                        sealed_under: bytes, event: QueuedEvent) -> bool:
    """A version and its event (outbox) in one statement, one round trip and
    no explicit transaction, guarded by the wrapped data key the payload was
    sealed under: the key row is share-locked by the statement (an erasure,
    which locks it for update, waits or has already nulled it, and then the
    guard fails). created: the record's head for a first version; None for an
    amendment, which lands only on the version it follows (compare and set on
    latest_version). False when nothing was written: key erased or changed,
    record id taken, or another amendment came first."""
    if created is not None:
        head = (
            "INSERT INTO records (record_id, patient_id, category, custodian_id, latest_version, created_at)"
            " SELECT $1, $10, $11, $12, $2, $13 FROM k ON CONFLICT (record_id) DO NOTHING RETURNING record_id"
        )
        head_args: tuple[object, ...] = (created.category, created.custodian_id, created.created_at)
    else:
        head = "UPDATE records r SET latest_version = $2 FROM k WHERE r.record_id = $1 AND r.latest_version = $2 - 1" \
               " RETURNING r.record_id"
        head_args = ()
    guard = 11 + len(head_args)
    written = await conn.fetchval(
        f"WITH k AS (SELECT 1 FROM patient_keys WHERE patient_id = $10 AND wrapped_key = ${guard} FOR SHARE),"
        f" h AS ({head}),"
        f" v AS ({_VERSION_INTO} SELECT h.record_id, $2, $3, $4, $5, $6, $7, $8, $9 FROM h RETURNING 1),"
        f" {event.queue_clause('v', guard + 1)} SELECT count(*) FROM queued",
        *_version_args(v), patient_id, *head_args, sealed_under, *event.args(),
    )
    return bool(written)


async def remember_ledger_indices(conn: Conn, indices: Sequence[tuple[str, int]]) -> None:
    """Versions' ledger indices learned from ledger.entries (disclosures.py's
    consumer), so lists and histories show them without asking the ledger.
    A pointer only: anyone checks it with an inclusion proof."""
    if indices:
        await conn.execute(
            "UPDATE record_versions v SET ledger_index = u.idx"
            " FROM unnest($1::text[], $2::bigint[]) AS u(event_id, idx)"
            " WHERE v.event_id = u.event_id AND v.ledger_index IS NULL",
            [e for e, _ in indices], [i for _, i in indices],
        )


# ---- research artifacts -------------------------------------------------------------------


@dataclass(frozen=True)
class StoredArtifact:
    artifact_id: str
    trial_id: str
    kind: records_pb2.ResearchArtifactKind.ValueType
    sha256: bytes
    organization_id: str
    registered_by: str
    registered_at: datetime
    event_id: str


_ARTIFACT = (
    "SELECT artifact_id, trial_id, kind, sha256, organization_id, registered_by, registered_at, event_id"
    " FROM research_artifacts"
)


async def insert_artifact(conn: Conn, a: StoredArtifact) -> None:
    await conn.execute(
        "INSERT INTO research_artifacts (artifact_id, trial_id, kind, sha256, organization_id, registered_by,"
        " registered_at, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        a.artifact_id, a.trial_id, a.kind, a.sha256, a.organization_id, a.registered_by, a.registered_at, a.event_id,
    )


async def trial_artifacts(conn: Conn, trial_id: str) -> list[StoredArtifact]:
    rows = await conn.fetch(_ARTIFACT + " WHERE trial_id = $1 ORDER BY registered_at, artifact_id", trial_id)
    return [StoredArtifact(**dict(r)) for r in rows]


async def artifacts_by_hash(conn: Conn, sha256: bytes, limit: int) -> list[StoredArtifact]:
    rows = await conn.fetch(_ARTIFACT + " WHERE sha256 = $1 ORDER BY registered_at, artifact_id LIMIT $2", sha256, limit)
    return [StoredArtifact(**dict(r)) for r in rows]


async def lock_trial(conn: Conn, trial_id: str) -> int:
    """Serialise registrations of one trial (the 1000 cap); how many it holds."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('medledger.records.trial:' || $1))", trial_id)
    return int(await conn.fetchval("SELECT count(*) FROM research_artifacts WHERE trial_id = $1", trial_id))
