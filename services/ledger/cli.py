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


@app.command("verifier-key")
def verifier_key(
    signing_key_file: Annotated[Path, typer.Option(
        envvar="MEDLEDGER_LEDGER_SIGNING_KEY_FILE", dir_okay=False, help="the ledger's checkpoint signing key file",
    )],
) -> None:
    """Print the verifier key of the checkpoint signing key, read from the key
    file, not from a running ledger: this is the text an operator hands to
    auditors out of band (`medledger audit verify --verifier-key-file`)."""
    try:
        signer = NoteSigner.from_signer_key(signing_key_file.read_text().strip())
    except OSError as exc:
        typer.echo(f"cannot read {signing_key_file}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.echo(f"{signing_key_file} is not a checkpoint signing key: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(signer.verifier_key)


def write_secret(out: Path, text: str) -> None:
    """Write a new key file readable by its owner only; never overwrite one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
