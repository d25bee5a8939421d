"""`medledger identity ...`: operator commands for identities.

Bootstrapping a deployment, step by step (see settings.py for why this way):

    medledger identity keygen --out keys/operator.key        # prints the bootstrap id
    export MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY_FILE=keys/operator.key.pub
    medledger serve identity                                  # registers the OPERATOR org once
    medledger identity keygen --out keys/consent.key
    medledger identity register --as-id <bootstrap id> --as-key keys/operator.key \\
        --kind SERVICE --public-key-file keys/consent.key.pub
    medledger identity token --id <id> --key keys/consent.key --audience ledger
    medledger identity token-keys --key-file .run/keys/identity-token.key   # to pin token keys
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Sequence

import grpc
import typer

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.identity import keyfiles
from medledger.identity.domain import key_id_for
from medledger.identity.settings import bootstrap_identity_id
from medledger.runtime.auth import AUDIENCES
from medledger.runtime.errors import SettingsError
from medledger.runtime.identity_client import load_private_key
from medledger.runtime.transport import GrpcTls
from medledger.v1 import identity_pb2, identity_pb2_grpc

app = typer.Typer(help="Identities: keys, registration, tokens.", no_args_is_help=True)

Address = Annotated[str, typer.Option(envvar="MEDLEDGER_IDENTITY_ADDRESS", help="identity service host:port")]
DEFAULT_ADDRESS = "127.0.0.1:50051"


def login(
    stub: identity_pb2_grpc.IdentityServiceStub, identity_id: str, key: Ed25519PrivateKey, audience: Sequence[str]
) -> identity_pb2.IssueTokenResponse:
    """Challenge → sign the challenge message → IssueToken for ``audience``
    (the services the token is for) (blocking)."""
    challenge = stub.Challenge(identity_pb2.ChallengeRequest(identity_id=identity_id), timeout=10)
    request = identity_pb2.IssueTokenRequest(
        identity_id=identity_id, nonce=challenge.nonce, signature=key.sign(challenge.message), audience=audience
    )
    reply: identity_pb2.IssueTokenResponse = stub.IssueToken(request, timeout=10)
    return reply


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


def _key(path: Path) -> Ed25519PrivateKey:
    try:
        return load_private_key(path)
    except SettingsError as exc:
        raise _fail(str(exc)) from None


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="private key file to create (mode 0600); the public key goes to OUT.pub")],
    data_key: Annotated[bool, typer.Option("--data-key", help="make the service's data key instead")] = False,
) -> None:
    """Create an Ed25519 key (for an identity or the token signer) or a data key."""
    if out.exists():
        raise _fail(f"{out} exists; refusing to overwrite a key")
    if data_key:
        keyfiles.write_secret(out, keyfiles.new_data_key())
        typer.echo(f"data key written to {out}")
        return
    key = Ed25519PrivateKey.generate()
    public = keyfiles.raw_public_key(key)
    keyfiles.write_secret(out, keyfiles.private_key_pem(key))
    pub = out.with_name(out.name + ".pub")
    pub.write_text(keyfiles.public_key_text(public) + "\n")
    typer.echo(f"public_key     {keyfiles.public_key_text(public)}  ({pub})")
    typer.echo(f"key_id         {key_id_for(public)}")
    typer.echo(f"bootstrap_id   {bootstrap_identity_id(public)}  (the identity id if this key bootstraps the operator)")


@app.command()
def token(
    identity_id: Annotated[str, typer.Option("--id", help="the identity to log in as")],
    key: Annotated[Path, typer.Option(help="its private key file")],
    audience: Annotated[list[str], typer.Option(
        help=f"a service the token is for ({' | '.join(AUDIENCES)}); repeat for several, ask for the fewest"
    )],
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """Print a bearer token for the identity and the services named (for
    grpcurl: -H 'authorization: Bearer …'). Each service accepts only tokens
    naming it."""
    unknown = [a for a in audience if a not in AUDIENCES]
    if unknown:
        raise _fail(f"unknown audience {unknown[0]!r}; one of {', '.join(AUDIENCES)}")
    with GrpcTls.from_env().channel(address) as channel:
        try:
            reply = login(identity_pb2_grpc.IdentityServiceStub(channel), identity_id, _key(key), audience)
        except grpc.RpcError as exc:
            raise _fail(f"{exc.code().name}: {exc.details()}") from None
    typer.echo(reply.token)


@app.command()
def register(
    as_id: Annotated[str, typer.Option(help="registering identity (an organization)")],
    as_key: Annotated[Path, typer.Option(help="its private key file")],
    kind: Annotated[str, typer.Option(help="PATIENT | PRACTITIONER | ORGANIZATION | AUDITOR | SERVICE")],
    public_key_file: Annotated[Path, typer.Option(help="the new identity's .pub file (from keygen)")],
    assurance_level: Annotated[str, typer.Option(help="IAL1 | IAL2 | IAL3")] = "",
    organization_type: Annotated[str, typer.Option(help="for ORGANIZATION: HOSPITAL, CLINIC, ...")] = "",
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """Register an identity, authenticating as an organization; print its id."""
    if kind not in identity_pb2.IdentityKind.keys():
        raise _fail(f"unknown kind {kind!r}")
    try:
        public = keyfiles.parse_public_key(public_key_file.read_text(), str(public_key_file))
    except (OSError, SettingsError) as exc:
        raise _fail(str(exc)) from None
    request = identity_pb2.RegisterIdentityRequest(
        kind=identity_pb2.IdentityKind.Value(kind), public_key=public, assurance_level=assurance_level,
        organization_type=organization_type,
    )
    with GrpcTls.from_env().channel(address) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        try:
            bearer = login(stub, as_id, _key(as_key), ["identity"]).token
            reply = stub.RegisterIdentity(request, metadata=(("authorization", f"Bearer {bearer}"),), timeout=15)
        except grpc.RpcError as exc:
            raise _fail(f"{exc.code().name}: {exc.details()}") from None
    typer.echo(reply.identity.identity_id)


@app.command("token-keys")
def token_keys(
    key_file: Annotated[list[Path], typer.Option(help="the identity service's token key file(s): current and previous")],
) -> None:
    """Print the public token verification keys of these token key files, one
    per line: the contents for MEDLEDGER_TOKEN_VERIFICATION_KEYS_FILE, which
    services off loopback without TLS to identity need (they refuse to fetch
    the keys in plaintext)."""
    for path in key_file:
        typer.echo(keyfiles.public_key_text(keyfiles.raw_public_key(_key(path))))
