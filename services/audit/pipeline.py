"""One verification run: the checks of checks.py, envelopes.py, signers.py
and state.py driven over a ledger source, with signature checks spread over
every core.

The main thread reads pages from the source and replays the tree (hashing
holds the GIL but is cheap); each page's envelopes go to a thread pool at the
same time, where the batch verifier and OpenSSL release the GIL, so producer and
consent signatures run on the other cores (as the ledger's sequencer does,
docs/architecture.md, Event signing). Sources (gRPC, Kafka) are adapters
handed in; nothing here does network I/O itself.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Protocol, Sequence

from medledger.audit.checks import (
    CONSISTENCY_PROOF, INCLUSION_PROOF, STATE, EntryLike, Finding, Findings, ListedCheckpoint, LogVerification,
    VerifiedCheckpoint, check_consistency_proof, check_inclusion_proof,
)
from medledger.audit.envelopes import EnvelopeResults, KeyEvent, PatientEvent, SignedStatement, check_envelopes
from medledger.audit.signers import KeyHistory, check_statements
from medledger.audit.state import AuditorState, check_state
from medledger.ledger import merkle, note
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.errors import DependencyUnavailable, MedLedgerError, PermissionDenied, Unauthenticated

IN_FLIGHT_PAGES = 8
STATEMENT_CHUNK = 2000


class LedgerSource(Protocol):
    """Where a run reads the log from (the ledger's gRPC, or ledger.entries)."""

    name: str
    serves_proofs: bool

    def checkpoints(self) -> list[ListedCheckpoint]:
        """Every stored checkpoint, smallest size first."""
        ...

    def pages(self, start: int, end: int) -> Iterator[Sequence[EntryLike]]:
        """Entries [start, end) in index order, a page at a time."""
        ...

    def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        """The served proof, or None if this source serves no proofs."""
        ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes] | None:
        """The served proof, or None if this source serves no proofs."""
        ...


class Progress(Protocol):
    def stage(self, name: str, total: int) -> None: ...
    def advance(self, amount: int) -> None: ...
    def done(self) -> None: ...


class NoProgress:
    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def done(self) -> None:
        pass


@dataclass(frozen=True)
class Options:
    verifier: note.NoteVerifier
    origin: str | None = None
    producers: EnvelopeVerifier | None = None  # None: hashes and checkpoints only
    state: AuditorState | None = None
    served_proofs: bool = True
    inclusion_samples: int = 100
    threads: int = max(2, os.cpu_count() or 2)
    patient_sink: Callable[[list[PatientEvent]], None] | None = None


@dataclass
class Stats:
    entries: int = 0
    checkpoints: int = 0
    checkpoints_verified: int = 0
    producer_signatures: int = 0
    # consent, record and erasure signatures checked, by check name
    signed_statements: dict[str, int] = field(default_factory=dict)
    served_proofs: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds else 0.0


@dataclass
class Outcome:
    findings: Findings
    stats: Stats
    latest: VerifiedCheckpoint | None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings and self.latest is not None


def run(source: LedgerSource, options: Options, progress: Progress | None = None) -> Outcome:
    """Verify everything the source holds up to its newest stored checkpoint."""
    progress = progress or NoProgress()
    started = time.perf_counter()
    stats = Stats()
    notes: list[str] = []
    checkpoints = source.checkpoints()
    stats.checkpoints = len(checkpoints)
    remember = [options.state.tree_size] if options.state else []
    log = LogVerification(options.verifier, options.origin, checkpoints, remember)
    target = max((c.tree_size for c in checkpoints), default=0)
    sampled = _Samples(options.inclusion_samples if source.serves_proofs and options.served_proofs else 0, target)
    keys: list[KeyEvent] = []
    statements: list[SignedStatement] = []
    proofs = _ServedProofs(source, options.served_proofs)
    with proofs_closed(proofs), ThreadPoolExecutor(options.threads, thread_name_prefix="audit") as pool:
        pending: deque[Future[EnvelopeResults]] = deque()

        def merge(results: EnvelopeResults) -> None:
            log.findings.extend(results.findings)
            keys.extend(results.keys)
            statements.extend(results.statements)
            stats.producer_signatures += results.checked
            if options.patient_sink is not None and results.patient_events:
                options.patient_sink(results.patient_events)

        progress.stage("entries", target)
        if target:
            for page in source.pages(0, target):
                if options.producers is not None:
                    batch = [(e.index, e.event, getattr(e, "event_id", "")) for e in page]
                    pending.append(pool.submit(check_envelopes, batch, options.producers,
                                               index_patients=options.patient_sink is not None))
                    while len(pending) > IN_FLIGHT_PAGES:
                        merge(pending.popleft().result())
                log.add(page)
                proofs.follow(log.verified)
                sampled.take(page)
                stats.entries += len(page)
                progress.advance(len(page))
            while pending:
                merge(pending.popleft().result())
        log.finish()
        if statements:
            progress.stage("signed statements", len(statements))
            history = KeyHistory.from_events(keys)
            chunks = [statements[i : i + STATEMENT_CHUNK] for i in range(0, len(statements), STATEMENT_CHUNK)]
            for chunk, found in zip(chunks, pool.map(lambda c: check_statements(history, c), chunks)):
                log.findings.extend(found)
                for statement in chunk:
                    stats.signed_statements[statement.check] = stats.signed_statements.get(statement.check, 0) + 1
                progress.advance(len(chunk))
    stats.checkpoints_verified = len(log.verified)
    proofs.check(log, sampled.leaves, stats, progress)
    if options.state is not None:
        _check_state(source, log, options.state, notes)
    if options.producers is None:
        notes.append("producer, consent, record and erasure signatures were not checked (--hashes-only)")
    stats.seconds = time.perf_counter() - started
    progress.done()
    return Outcome(_located(log), stats, log.latest, notes)


@contextmanager
def proofs_closed(proofs: _ServedProofs) -> Iterator[None]:
    """Whatever stops a run, the proof requests in flight are dropped."""
    try:
        yield
    except BaseException:
        proofs.close()
        raise


class _Samples:
    """Random entries whose served inclusion proofs get checked: their leaf
    hashes are recomputed while the replay passes them (it keeps no others)."""

    def __init__(self, count: int, size: int) -> None:
        self.wanted = set(random.Random().sample(range(size), min(count, size))) if size else set()
        self.leaves: dict[int, bytes] = {}

    def take(self, page: Sequence[EntryLike]) -> None:
        if self.wanted and page and any(page[0].index <= i <= page[-1].index for i in self.wanted):
            for entry in page:
                if entry.index in self.wanted:
                    self.leaves[entry.index] = merkle.leaf_hash(entry.event)


class _ServedProofs:
    """Proofs the ledger serves (built from its stored tree nodes, which the
    replay never reads) against the checkpoints the replay verified: each
    stored checkpoint's consistency with the one before, and inclusion proofs
    of random entries in the newest. They are requested while the replay goes
    on (they wait on the network, the replay on the CPU) and checked at the end."""

    def __init__(self, source: LedgerSource, enabled: bool) -> None:
        self.source = source
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="proofs") if enabled and source.serves_proofs else None
        self.consistency: list[tuple[VerifiedCheckpoint, VerifiedCheckpoint, Future[list[bytes] | None]]] = []
        self._followed = 0

    def follow(self, verified: Sequence[VerifiedCheckpoint]) -> None:
        """Ask for the proofs between checkpoints verified since the last call."""
        if self.pool is None:
            return
        for position in range(max(1, self._followed), len(verified)):
            first, second = verified[position - 1], verified[position]
            if 0 < first.size < second.size:
                call = self.pool.submit(self.source.consistency_proof, first.size, second.size)
                self.consistency.append((first, second, call))
        self._followed = len(verified)

    def check(self, log: LogVerification, leaves: dict[int, bytes], stats: Stats, progress: Progress) -> None:
        if self.pool is None:
            return
        self.follow(log.verified)
        latest = log.latest
        samples = sorted(i for i in leaves if latest is not None and i < latest.size)
        inclusion = [(i, self.pool.submit(self.source.inclusion_proof, i, latest.size)) for i in samples if latest]
        progress.stage("served proofs", len(self.consistency) + len(inclusion))
        try:
            for first, second, call in self.consistency:
                progress.advance(1)
                proof = _served(call, log.findings, CONSISTENCY_PROOF, second.size)
                if proof is not None:
                    stats.served_proofs += 1
                    log.findings.add_if(check_consistency_proof(first, second, proof))
            for index, call in inclusion:
                progress.advance(1)
                proof = _served(call, log.findings, INCLUSION_PROOF, latest.size if latest else None)
                if proof is not None and latest is not None:
                    stats.served_proofs += 1
                    log.findings.add_if(check_inclusion_proof(index, leaves[index], latest, proof))
        finally:
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _served(call: Future[list[bytes] | None], findings: Findings, check: str, size: int | None) -> list[bytes] | None:
    """A served proof, or None with a finding when the ledger could not serve
    it (a missing tree node fails the call); unreachable still aborts the run."""
    try:
        return call.result()
    except (DependencyUnavailable, Unauthenticated, PermissionDenied):
        raise
    except MedLedgerError as exc:
        findings.add(Finding(check, checkpoint=size, expected="a served proof", found=str(exc)))
        return None


def _check_state(source: LedgerSource, log: LogVerification, state: AuditorState, notes: list[str]) -> None:
    latest = log.latest
    if state.verifier_key.strip() != log.verifier.verifier_key:
        notes.append(f"the verifier key differs from the one the remembered checkpoint was verified with "
                     f"({state.verifier_key.split('+')[0]}+{state.verifier_key.split('+')[1][:8]})")
    proof = None
    if latest is not None and 0 < state.tree_size < latest.size and source.serves_proofs:
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(source.consistency_proof, state.tree_size, latest.size)
            proof = _served(call, log.findings, STATE, latest.size)
    elif latest is not None and state.tree_size == latest.size:
        proof = []
    log.findings.extend(check_state(state, log.roots.get(state.tree_size), latest, proof))


def _located(log: LogVerification) -> Findings:
    """Entry findings get the checkpoint interval they lie in."""
    located = Findings(total=log.findings.total)
    for finding in log.findings.items:
        if finding.index is not None and finding.entries is None:
            finding = replace(finding, entries=log.interval_of(finding.index))
        located.items.append(finding)
    return located


def report_lines(outcome: Outcome) -> list[str]:
    """The human report, one finding per line, in log order."""
    lines = [f"- {f.describe()}" for f in outcome.findings.sorted()]
    hidden = outcome.findings.total - len(outcome.findings.items)
    if hidden > 0:
        lines.append(f"- … and {hidden} more findings")
    return lines


def as_dict(outcome: Outcome, source: str) -> dict[str, object]:
    s = outcome.stats
    latest = outcome.latest
    return {
        "ok": outcome.ok,
        "source": source,
        "checkpoint": None if latest is None else {"tree_size": latest.size, "root_hash": latest.root.hex()},
        "stats": {
            "entries": s.entries, "checkpoints": s.checkpoints, "checkpoints_verified": s.checkpoints_verified,
            "producer_signatures": s.producer_signatures, "signed_statements": s.signed_statements,
            "served_proofs": s.served_proofs, "seconds": round(s.seconds, 3), "entries_per_second": round(s.rate),
        },
        "findings_total": outcome.findings.total,
        "findings": [f.as_dict() for f in outcome.findings.sorted()],
        "notes": outcome.notes,
    }


def first_finding(outcome: Outcome) -> Finding | None:
    items = outcome.findings.sorted()
    return items[0] if items else None
