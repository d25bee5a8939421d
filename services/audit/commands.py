"""What each ``medledger audit`` command does, apart from option parsing
(cli.py): load the pinned keys, read the ledger or the topics, run the pure
checks, print the report and choose the exit code (exits.py)."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

from rich.console import Console
from rich.table import Table

from medledger.audit import disclosures as report_formats
from medledger.audit import index as disclosure_index
from medledger.audit import pipeline, prove as proofs
from medledger.audit.envelopes import pinned_verifier
from medledger.audit.exits import Exit, exit_for
from medledger.audit.progress import for_stderr
from medledger.audit.state import AuditorState, StateError
from medledger.ledger import note
from medledger.runtime.envelope import EnvelopeVerifier, parse_producer_keys, topic_kinds
from medledger.runtime.errors import MedLedgerError, SettingsError
from medledger.runtime.settings import Topics

T = TypeVar("T")
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(code: Exit, message: str) -> int:
    err.print(f"[bold red]{code.name}[/bold red]: {message}", markup=True)
    return int(code)


def guarded(run: Callable[[], int]) -> int:
    """Run a command; an error that stopped it becomes its message and exit code."""
    try:
        return run()
    except SettingsError as exc:
        return fail(Exit.USAGE, str(exc))
    except MedLedgerError as exc:
        return fail(exit_for(exc), str(exc))


# ---- keys ------------------------------------------------------------------------


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read {what} {path}: {exc.strerror}") from None


def pinned_checkpoint_key(text: str, path: Path | None) -> note.NoteVerifier:
    """The ledger's verifier key the auditor was given out of band."""
    if path is not None:
        text = _read(path, "the verifier key file")
    if not text.strip():
        raise SettingsError(
            "a pinned verifier key is required: --verifier-key KEY or --verifier-key-file FILE "
            "(obtain it out of band; a key served by the ledger under audit proves nothing)"
        )
    try:
        return note.NoteVerifier.from_verifier_key(text)
    except note.NoteError as exc:
        raise SettingsError(f"the verifier key is not a note verifier key: {exc}") from None


def pinned_producer_keys(path: Path | None, prefix: str | None = None) -> EnvelopeVerifier:
    """The producers' event-signing keys (same format as
    MEDLEDGER_EVENT_PRODUCER_KEYS_FILE). With a prefix, the verifier names
    real topics (a replay); without, the logical ones (ledger entries)."""
    if path is None:
        raise SettingsError(
            "--producer-keys-file is required to check every producer signature "
            "(the pinned event keys, as in MEDLEDGER_EVENT_PRODUCER_KEYS_FILE); --hashes-only skips them"
        )
    try:
        keys = parse_producer_keys(_read(path, "the producer keys file"))
    except ValueError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    if not keys:
        raise SettingsError(f"{path} lists no producer key")
    return EnvelopeVerifier(keys, topic_kinds(prefix)) if prefix is not None else pinned_verifier(keys)


# ---- verify ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyRequest:
    verifier: note.NoteVerifier
    producers: EnvelopeVerifier | None
    ledger: str = "127.0.0.1:50054"
    token: str = ""
    from_kafka: bool = False
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    origin: str | None = None
    state: Path | None = None
    index: Path | None = None
    json: bool = False
    inclusion_samples: int = 100
    threads: int = 0
    progress: bool = True


def _source(request: VerifyRequest) -> pipeline.LedgerSource:
    from medledger.audit.sources import GrpcLedger, KafkaLedger

    if request.from_kafka:
        topics = Topics(request.topic_prefix)
        return KafkaLedger(request.bootstrap, topics.ledger_entries, topics.ledger_checkpoints)
    return GrpcLedger(request.ledger, request.token)


def _load_state(path: Path | None) -> AuditorState | None:
    if path is None or not path.exists():
        return None
    try:
        return AuditorState.from_json(_read(path, "the state file"))
    except StateError as exc:
        raise SettingsError(f"{path}: {exc}") from None


def verify(request: VerifyRequest) -> int:
    state = _load_state(request.state)
    source = _source(request)
    writer = disclosure_index.IndexWriter(request.index) if request.index else None
    options = pipeline.Options(
        request.verifier, request.origin, request.producers, state,
        inclusion_samples=request.inclusion_samples, patient_sink=writer.add if writer else None,
        threads=request.threads or pipeline.Options.threads,
    )
    try:
        outcome = pipeline.run(source, options, for_stderr(request.progress and not request.json))
    except BaseException:
        if writer:
            writer.discard()
        raise
    finally:
        close = getattr(source, "close", None)
        if close:
            close()
    latest = outcome.latest
    if outcome.ok and latest is not None:
        if request.state is not None:
            request.state.write_text(AuditorState.after(latest, request.verifier.verifier_key,
                                                        request.origin or "").to_json())
        if writer:
            writer.commit(disclosure_index.IndexInfo(
                latest.size, latest.root.hex(), request.verifier.verifier_key,
                datetime.now(timezone.utc).isoformat(timespec="seconds"), source.name,
            ))
    elif writer:
        writer.discard()
    _print_verify(request, outcome, source.name, state)
    if outcome.findings:
        return int(Exit.FAILED)
    if latest is None:
        return fail(Exit.UNREACHABLE, "the ledger holds no signed checkpoint yet: nothing to verify")
    return int(Exit.OK)


def _print_verify(request: VerifyRequest, outcome: pipeline.Outcome, source: str, state: AuditorState | None) -> None:
    if request.json:
        print(json.dumps(pipeline.as_dict(outcome, source), indent=2))
        return
    s = outcome.stats
    for line in outcome.notes:
        print(f"note: {line}")
    if outcome.findings:
        print(f"FAILED: {outcome.findings.total} findings in {s.entries:,} entries and {s.checkpoints:,} checkpoints "
              f"from {source}")
        for line in pipeline.report_lines(outcome):
            print(line)
        return
    latest = outcome.latest
    if latest is None:
        return
    checked = [f"{s.entries:,} entries", f"{s.checkpoints_verified:,} checkpoints"]
    if request.producers is not None:
        checked.append(f"{s.producer_signatures:,} producer signatures")
        checked += [f"{n:,} {check}s" for check, n in sorted(s.signed_statements.items())]
    if s.served_proofs:
        checked.append(f"{s.served_proofs:,} served proofs")
    if state is not None:
        checked.append(f"consistent with the checkpoint of size {state.tree_size} verified {state.verified_at:%Y-%m-%d %H:%M}")
    print(f"OK: {', '.join(checked)} verified against the checkpoint signed by {request.verifier.name}")
    if request.index:
        print(f"disclosure index written to {request.index}")
    print(f"root {latest.root.hex()} at size {latest.size}  ({s.seconds:.2f}s, {s.rate:,.0f} entries/s)")


# ---- disclosures -----------------------------------------------------------------


def disclosures(
    index_path: Path, patient_id: str, since: datetime | None, until: datetime | None, fmt: str, out: Path | None
) -> int:
    if fmt not in report_formats.FORMATS:
        raise SettingsError(f"--format must be one of {', '.join(report_formats.FORMATS)}")
    try:
        info, entries = disclosure_index.read(index_path, patient_id)
    except disclosure_index.BadIndexFile as exc:
        raise SettingsError(str(exc)) from None
    report = report_formats.report(patient_id, entries, since, until, as_of=info.describe())
    if fmt == "table":
        _print_tables(report, out)
        return int(Exit.OK)
    text = report_formats.render(report, fmt)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
    return int(Exit.OK)


def _print_tables(report: report_formats.Report, out: Path | None) -> None:
    console = Console(file=out.open("w") if out else None, highlight=False, width=200 if out else None)
    console.print(f"Patient {report.patient_id}: ledger as of {report.as_of}")
    sections = (
        ("Accounting of disclosures (HIPAA §164.528)", report.disclosures,
         ("index", "at", "recipient", "organization", "purpose", "what", "basis")),
        ("Access report: every decision, break-glass and review", report.accesses,
         ("index", "at", "kind", "recipient", "purpose", "what", "decision", "reason", "basis", "review")),
    )
    for title, lines, columns in sections:
        table = Table(title=f"{title}: {len(lines)}", title_justify="left")
        for column in columns:
            table.add_column(column)
        for line in lines:
            values = line.as_dict()
            table.add_row(*(str(values[c]) if c != "at" else line.at.strftime("%Y-%m-%d %H:%M:%S") for c in columns))
        console.print(table)


# ---- prove / verify-proof ----------------------------------------------------------


def prove(ledger: str, token: str, event_id: str, out: Path, verifier: note.NoteVerifier) -> int:
    from medledger.audit.sources import GrpcLedger

    source = GrpcLedger(ledger, token)
    try:
        bundle = source.proof_bundle(event_id)
    finally:
        source.close()
    entry = bundle.entry
    result = proofs.verify_bundle(bundle, verifier)
    if not result.valid:
        for finding in result.findings:
            err.print(f"- {finding.describe()}")
        return fail(Exit.FAILED, f"the ledger served a proof for {event_id} that does not verify; nothing written")
    out.write_text(proofs.to_json(bundle))
    print(f"wrote {out}: entry {entry.index} ({result.event_type}) in the checkpoint of size {result.checkpoint_size}")
    return int(Exit.OK)


def verify_proof(path: Path, verifier: note.NoteVerifier, producers: EnvelopeVerifier | None, as_json: bool) -> int:
    try:
        bundle = proofs.from_json(_read(path, "the proof bundle"))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    result = proofs.verify_bundle(bundle, verifier, producers)
    if as_json:
        print(json.dumps({"valid": result.valid, "index": bundle.entry.index, "event_id": result.event_id,
                          "event_type": result.event_type, "checkpoint_size": result.checkpoint_size,
                          "findings": [f.as_dict() for f in result.findings]}, indent=2))
    elif result.valid:
        signed = " and its producer signature" if producers is not None else ""
        print(f"OK: entry {bundle.entry.index} ({result.event_type} {result.event_id}){signed} is in the log "
              f"of {result.checkpoint_size} entries signed by {verifier.name}")
    else:
        print(f"FAILED: {path} does not verify")
        for finding in result.findings:
            print(f"- {finding.describe()}")
    return int(Exit.OK if result.valid else Exit.FAILED)


# ---- replay ------------------------------------------------------------------------


def replay(
    bootstrap: str, prefix: str, producers_file: Path | None, identity_url: str, consent_url: str,
    scratch_server: str, keep_scratch: bool, settle_s: float, as_json: bool, progress: bool, records_url: str = "",
) -> int:
    from medledger.audit.replay import ReplayOptions
    from medledger.audit.replay import replay as run_replay

    options = ReplayOptions(
        bootstrap, Topics(prefix), pinned_producer_keys(producers_file, prefix), identity_url or None,
        consent_url or None, scratch_server or None, keep_scratch, settle_s, records_url or None,
    )
    outcome = asyncio.run(run_replay(options, for_stderr(progress and not as_json)))
    if as_json:
        print(json.dumps(outcome.as_dict(), indent=2))
    else:
        for line in outcome.notes:
            print(f"note: {line}")
        counts = ", ".join(f"{n:,} {topic}" for topic, n in sorted(outcome.events.items()))
        print(f"replayed {outcome.total:,} verified events ({counts or 'none'}) in {outcome.seconds:.2f}s, "
              f"{outcome.rate:,.0f} events/s; {outcome.unauthenticated} unauthenticated records skipped")
        if outcome.scratch:
            print("scratch databases kept: " + ", ".join(f"{k} {v}" for k, v in outcome.scratch.items()))
        if not (identity_url or consent_url or records_url):
            print("no live database given (--identity-database-url, --consent-database-url, "
                  "--records-database-url): nothing compared")
            if not outcome.scratch and not scratch_server:
                print("no scratch server given (--scratch-server): the events were verified, no projection rebuilt")
        elif outcome.divergences:
            print(f"DIVERGED: {len(outcome.divergences)} differences between the events and the live databases")
            for d in outcome.divergences:
                print(f"- {d.describe()}")
        else:
            print("OK: the live projections are exactly what the events rebuild")
    return int(Exit.FAILED if outcome.divergences else Exit.OK)
