"""`medledger audit ...`: check MedLedger from outside without trusting whoever
runs it, with nothing but the keys the auditor pinned (the ledger's verifier
key, the producers' event keys). What each command does is in commands.py;
the exit codes are in exits.py and in every --help. Each command imports its
implementation when it runs, so `medledger serve` loads no audit code."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from medledger.audit.exits import HELP as EXIT_CODES

app = typer.Typer(
    help="Audit tooling: verify the ledger, replay the events, account for disclosures, prove entries.",
    no_args_is_help=True, rich_markup_mode="markdown",
)

VerifierKey = Annotated[str, typer.Option(
    envvar="MEDLEDGER_AUDIT_VERIFIER_KEY",
    help="the ledger's note verifier key (required, or --verifier-key-file), obtained out of band: from the "
    "ledger's operator over a channel you already trust (they print it from the signing key with `medledger "
    "ledger verifier-key`; `make up` writes .run/keys/ledger-checkpoint.pub), or from a witness of this log; "
    "never from the ledger under audit, whose GetVerifierKey proves nothing",
)]
VerifierKeyFile = Annotated[Path | None, typer.Option(
    envvar="MEDLEDGER_AUDIT_VERIFIER_KEY_FILE", help="file holding the ledger's verifier key", dir_okay=False,
)]
ProducerKeys = Annotated[Path | None, typer.Option(
    envvar="MEDLEDGER_EVENT_PRODUCER_KEYS_FILE", dir_okay=False,
    help="the producers' pinned event verifier keys, one per line (as MEDLEDGER_EVENT_PRODUCER_KEYS_FILE)",
)]
Ledger = Annotated[str, typer.Option(envvar="MEDLEDGER_LEDGER_ADDRESS", help="LedgerService address")]
Token = Annotated[str, typer.Option(envvar="MEDLEDGER_TOKEN", help="AUDITOR bearer token (entries need one)")]
Bootstrap = Annotated[str, typer.Option(envvar="MEDLEDGER_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers")]
Prefix = Annotated[str, typer.Option(envvar="MEDLEDGER_TOPIC_PREFIX", help="topic name prefix")]


def _exit(code: int) -> None:
    raise typer.Exit(code)


@app.command(epilog=f"""
Examples:

    medledger audit verify --verifier-key-file ledger.pub --producer-keys-file event-producers.pub \\
        --token "$TOKEN" --state ~/.medledger-audit.json

    medledger audit verify --from-kafka --verifier-key-file ledger.pub --producer-keys-file event-producers.pub

    medledger audit verify --verifier-key-file ledger.pub --hashes-only --json

{EXIT_CODES}
""")
def verify(
    verifier_key: VerifierKey = "",
    verifier_key_file: VerifierKeyFile = None,
    producer_keys_file: ProducerKeys = None,
    ledger: Ledger = "127.0.0.1:50054",
    token: Token = "",
    from_kafka: Annotated[bool, typer.Option(help="read ledger.entries and ledger.checkpoints instead of gRPC")] = False,
    bootstrap: Bootstrap = "127.0.0.1:9092",
    topic_prefix: Prefix = "",
    state: Annotated[Path | None, typer.Option(
        dir_okay=False, help="remember the last verified checkpoint here; the next run demands consistency with it",
    )] = None,
    index: Annotated[Path | None, typer.Option(
        dir_okay=False, help="also write the per-patient disclosure index here (for `audit disclosures`)",
    )] = None,
    origin: Annotated[str, typer.Option(help="require checkpoints of this log origin")] = "",
    hashes_only: Annotated[bool, typer.Option(
        help="check hashes, tree and checkpoints only: no producer, consent or record signatures",
    )] = False,
    inclusion_samples: Annotated[int, typer.Option(help="served inclusion proofs to check at random")] = 100,
    threads: Annotated[int, typer.Option(help="signature-checking threads (default: one per core)")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    progress: Annotated[bool, typer.Option(help="progress on stderr (bars on a terminal)")] = True,
) -> None:
    """Verify the whole log from the ledger's data and pinned keys alone: every
    entry's leaf and chain hash, the tree, every stored checkpoint's signature
    and consistency with the one before (tampering is located to its
    checkpoint interval), every producer signature, and every consent
    signature against the signer's key as of the time, from the identity
    events in the log itself."""

    from medledger.audit import commands

    def run() -> int:
        key = commands.pinned_checkpoint_key(verifier_key, verifier_key_file)
        producers = None if hashes_only else commands.pinned_producer_keys(producer_keys_file)
        return commands.verify(commands.VerifyRequest(
            key, producers, ledger, token, from_kafka, bootstrap, topic_prefix, origin or None, state, index,
            json_output, inclusion_samples, threads, progress,
        ))

    _exit(commands.guarded(run))


def _when(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date or time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@app.command(epilog=f"""
Examples:

    medledger audit verify --verifier-key-file ledger.pub --producer-keys-file event-producers.pub --index audit.idx

    medledger audit disclosures --index audit.idx --patient 0190c1e2-... --since 2026-01-01

    medledger audit disclosures --index audit.idx --patient 0190c1e2-... --format fhir --out audit-events.json

{EXIT_CODES}
""")
def disclosures(
    patient: Annotated[str, typer.Option(help="the patient's identity id")],
    index: Annotated[Path, typer.Option(dir_okay=False, help="the disclosure index `audit verify --index` wrote")],
    since: Annotated[str, typer.Option(help="from this date or time (ISO 8601, UTC unless stated)")] = "",
    until: Annotated[str, typer.Option(help="before this date or time (ISO 8601)")] = "",
    format: Annotated[str, typer.Option(help="table, json, csv or fhir (a Bundle of AuditEvents)")] = "table",
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="write here instead of stdout")] = None,
) -> None:
    """A patient's accounting of disclosures (HIPAA §164.528: date, recipient,
    what, purpose) and full access report (every access decision, allowed or
    denied, every break-glass with its review), each line with its ledger
    index, from the index of a verified log."""
    from medledger.audit import commands

    _exit(commands.guarded(lambda: commands.disclosures(index, patient, _when(since), _when(until), format, out)))


@app.command(epilog=f"""
Example:

    medledger audit prove --event-id 0190c1e2-... --out proof.json --verifier-key-file ledger.pub --token "$TOKEN"

{EXIT_CODES}
""")
def prove(
    event_id: Annotated[str, typer.Option(help="the event to prove")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="where to write the proof bundle (JSON)")],
    verifier_key: VerifierKey = "",
    verifier_key_file: VerifierKeyFile = None,
    ledger: Ledger = "127.0.0.1:50054",
    token: Token = "",
) -> None:
    """Write an offline proof bundle (the entry, its inclusion proof, the signed
    checkpoint and the verifier key's name) as protobuf JSON of
    medledger.v1.ProofBundle, after checking it with the pinned key."""

    from medledger.audit import commands

    def run() -> int:
        key = commands.pinned_checkpoint_key(verifier_key, verifier_key_file)
        return commands.prove(ledger, token, event_id, out, key)

    _exit(commands.guarded(run))


@app.command("verify-proof", epilog=f"""
Example:

    medledger audit verify-proof proof.json --verifier-key-file ledger.pub --producer-keys-file event-producers.pub

{EXIT_CODES}
""")
def verify_proof(
    bundle: Annotated[Path, typer.Argument(dir_okay=False, help="a proof bundle from `audit prove` or GetRecord")],
    verifier_key: VerifierKey = "",
    verifier_key_file: VerifierKeyFile = None,
    producer_keys_file: Annotated[Path | None, typer.Option(
        dir_okay=False, help="also check the event's producer signature against these pinned keys",
    )] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Check a proof bundle with no service and no network: the checkpoint's
    signature by the pinned key, the leaf hash of the entry's bytes and its
    inclusion proof up to the signed root."""

    from medledger.audit import commands

    def run() -> int:
        key = commands.pinned_checkpoint_key(verifier_key, verifier_key_file)
        producers = commands.pinned_producer_keys(producer_keys_file) if producer_keys_file else None
        return commands.verify_proof(bundle, key, producers, json_output)

    _exit(commands.guarded(run))


@app.command(epilog=f"""
Example:

    medledger audit replay --producer-keys-file event-producers.pub \\
        --identity-database-url postgresql://auditor@db/medledger_identity \\
        --consent-database-url postgresql://auditor@db/medledger_consent \\
        --records-database-url postgresql://auditor@db/medledger_records \\
        --scratch-server postgresql://auditor@scratch-db/postgres

{EXIT_CODES}
""")
def replay(
    producer_keys_file: ProducerKeys = None,
    bootstrap: Bootstrap = "127.0.0.1:9092",
    topic_prefix: Prefix = "",
    identity_database_url: Annotated[str, typer.Option(help="live identity database, read only")] = "",
    consent_database_url: Annotated[str, typer.Option(help="live consent database, read only")] = "",
    records_database_url: Annotated[str, typer.Option(help="live records database, read only")] = "",
    scratch_server: Annotated[str, typer.Option(
        help="PostgreSQL server URL for the scratch databases (default: the first live database's server)",
    )] = "",
    keep_scratch: Annotated[bool, typer.Option(help="keep the rebuilt scratch databases")] = False,
    settle_s: Annotated[float, typer.Option(help="seconds to let the live services publish and catch up")] = 10.0,
    json_output: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    progress: Annotated[bool, typer.Option(help="progress on stderr (bars on a terminal)")] = True,
) -> None:
    """Consume every event topic from offset 0, rebuild each service's
    projection into scratch databases with the services' own code, and report
    every difference from the live databases (exit 1 when any)."""
    from medledger.audit import commands

    _exit(commands.guarded(lambda: commands.replay(
        bootstrap, topic_prefix, producer_keys_file, identity_database_url, consent_database_url, scratch_server,
        keep_scratch, settle_s, json_output, progress, records_database_url,
    )))


@app.command(epilog=f"""
Examples:

    medledger audit alerts --producer-keys-file event-producers.pub --token "$TOKEN" --since 2026-01-01

    medledger audit alerts --producer-keys-file event-producers.pub --rule breadth --json

{EXIT_CODES}
""")
def alerts(
    producer_keys_file: ProducerKeys = None,
    ledger: Ledger = "127.0.0.1:50054",
    token: Token = "",
    since: Annotated[str, typer.Option(help="alerts whose window ends at or after this (ISO 8601, UTC unless stated)")] = "",
    rule: Annotated[str, typer.Option(help="only this rule: breadth, probing, break-glass or unusual-hours")] = "",
    json_output: Annotated[bool, typer.Option("--json", help="one JSON object per alert")] = False,
) -> None:
    """The access monitor's alerts (snooping, probing, break-glass overuse, unusual
    hours) as sequenced on the ledger, each with its ledger index and the events that
    raised it; each alert's producer signature is checked with the pinned keys."""
    from medledger.audit import commands
    from medledger.audit import alerts as alert_listing

    _exit(commands.guarded(lambda: alert_listing.list_alerts(
        ledger, token, commands.pinned_producer_keys(producer_keys_file), _when(since), rule, json_output,
    )))
