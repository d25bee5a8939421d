"""`medledger ledger ...`: operator commands for the ledger."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from medledger.ledger.note import NoteSigner

app = typer.Typer(help="The ledger: checkpoint keys.", no_args_is_help=True)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="file to write the signer key to (mode 0600)")],
    name: Annotated[str, typer.Option(help="key name; by convention the log's origin")] = "medledger.local/ledger",
) -> None:
    """Create an Ed25519 checkpoint signing key; print its verifier key."""
    if out.exists():
        typer.echo(f"{out} exists; refusing to overwrite a signing key", err=True)
        raise typer.Exit(1)
    signer = NoteSigner.generate(name)
    write_secret(out, signer.signer_key)
    typer.echo(signer.verifier_key)


def write_secret(out: Path, text: str) -> None:
    """Write a new key file readable by its owner only; never overwrite one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
