"""`medledger events ...`: operator commands for event-signing keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medledger.ledger.cli import write_secret
from medledger.runtime.envelope import PRODUCER_POLICY, EventSigner

app = typer.Typer(help="Event-signing keys of the producing services.", no_args_is_help=True)

PRODUCERS = sorted({service for types in PRODUCER_POLICY.values() for allowed in types.values() for service in allowed})


@app.command()
def keygen(
    service: Annotated[str, typer.Option(help=f"the producing service: {', '.join(PRODUCERS)}")],
    out: Annotated[Path, typer.Option(help="file to write the private key to (mode 0600)")],
    producers_file: Annotated[
        Path | None, typer.Option(help="append the public verifier key to this pinned producer-keys file")
    ] = None,
) -> None:
    """Create a service's Ed25519 event-signing key; print its verifier key.

    Every consumer pins the verifier keys in MEDLEDGER_EVENT_PRODUCER_KEYS_FILE.
    To rotate, generate a new key, append its line, restart the consumers, then
    the producer with the new key; keep the old line so history still verifies.
    """
    if service not in PRODUCERS:
        typer.echo(f"unknown producing service {service!r}; one of {', '.join(PRODUCERS)}", err=True)
        raise typer.Exit(2)
    if out.exists():
        typer.echo(f"{out} exists; refusing to overwrite a signing key", err=True)
        raise typer.Exit(1)
    signer = EventSigner.generate(service)
    write_secret(out, signer.signer_key)
    if producers_file is not None:
        producers_file.parent.mkdir(parents=True, exist_ok=True)
        with producers_file.open("a") as f:
            f.write(signer.verifier_key + "\n")
    typer.echo(signer.verifier_key)
