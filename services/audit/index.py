"""The auditor's per-patient disclosure index: a SQLite file written while
``verify --index FILE`` checks the log, read by ``disclosures --index FILE``.

It holds, for every AccessDecided, RecordsDisclosed, BreakGlassInvoked (and
break-glass review) entry, the patient, the ledger index and the envelope
bytes exactly as verified, plus the checkpoint they were verified against.
A patient's lines are then one indexed range read, however long the log
(docs/architecture.md, Decisions: "Disclosure reports from the auditor's
own index"). The file is written beside its final name and moved there only
when the log verified, so an index never describes a log that failed.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from medledger.audit.envelopes import PatientEvent

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE patient_events (
    patient_id   TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    event_type   TEXT NOT NULL,
    occurred_at  TEXT NOT NULL,
    event        BLOB NOT NULL
);
"""
FORMAT = "medledger-audit-index/v1"


class BadIndexFile(ValueError):
    """A file that is not an index this tool wrote."""


@dataclass(frozen=True)
class IndexInfo:
    tree_size: int
    root_hash: str
    verifier_key: str
    verified_at: str
    source: str

    def describe(self) -> str:
        return f"checkpoint {self.tree_size} (root {self.root_hash[:16]}…), verified {self.verified_at}"


class IndexWriter:
    """Append patient events while verifying; ``commit`` only after success."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.partial.unlink(missing_ok=True)
        self.db = sqlite3.connect(self.partial, check_same_thread=False)
        self.db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + SCHEMA)
        self.db.execute("BEGIN")
        self.rows = 0

    def add(self, events: Sequence[PatientEvent]) -> None:
        self.db.executemany(
            "INSERT INTO patient_events VALUES (?, ?, ?, ?, ?)",
            [(e.patient_id, e.index, e.event_type, e.occurred_at.isoformat(), e.event) for e in events],
        )
        self.rows += len(events)

    def commit(self, info: IndexInfo) -> None:
        self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("format", FORMAT), ("tree_size", str(info.tree_size)), ("root_hash", info.root_hash),
            ("verifier_key", info.verifier_key), ("verified_at", info.verified_at), ("source", info.source),
        ])
        self.db.execute("CREATE INDEX by_patient ON patient_events (patient_id, idx)")
        self.db.commit()
        self.db.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.db.close()
        self.partial.unlink(missing_ok=True)


def read(path: Path, patient_id: str) -> tuple[IndexInfo, list[tuple[int, bytes]]]:
    """The index's checkpoint and one patient's (ledger index, envelope) pairs."""
    if not path.is_file():
        raise BadIndexFile(f"{path} does not exist; build it with `medledger audit verify --index {path}`")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") != FORMAT:
                raise BadIndexFile(f"{path} is not a {FORMAT} file")
            rows = db.execute(
                "SELECT idx, event FROM patient_events WHERE patient_id = ? ORDER BY idx", (patient_id,)
            ).fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise BadIndexFile(f"{path} is not a readable index: {exc}") from None
    info = IndexInfo(int(meta["tree_size"]), meta["root_hash"], meta["verifier_key"], meta["verified_at"],
                     meta["source"])
    return info, [(int(i), bytes(e)) for i, e in rows]
