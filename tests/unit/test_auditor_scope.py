"""An auditor's token says whether it audits the whole network or only its
organizations (issue 9, item 7), and nothing in a token can widen that."""

from __future__ import annotations

import asyncio

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.runtime.auth import (
    ISSUER, NETWORK_AUDITOR, ORGANIZATION_AUDITOR, Caller, TokenVerifier, mint_token,
)
from medledger.identity.keyfiles import raw_public_key

KEY = Ed25519PrivateKey.generate()


def verifier() -> TokenVerifier:
    v = TokenVerifier()
    v.add_key("k", raw_public_key(KEY))
    return v


def claims_of(caller: Caller) -> Caller:
    token = mint_token(KEY, "k", caller, 600)
    return asyncio.run(verifier().claims(token))


def test_the_scope_survives_a_token_and_names_the_role() -> None:
    network = claims_of(Caller("a1", "AUDITOR", (), audience=("ledger",), audit_scope="network"))
    local = claims_of(Caller("a2", "AUDITOR", ("org-a",), audience=("ledger",), audit_scope="organization"))
    assert (network.role, local.role) == (NETWORK_AUDITOR, ORGANIZATION_AUDITOR)
    assert network.audits({"any-org"}) and local.audits({"org-a", "x"}) and not local.audits({"org-b"})
    doctor = claims_of(Caller("d", "PRACTITIONER", ("org-a",), audience=("ledger",)))
    assert doctor.role == "PRACTITIONER" and not doctor.audits({"org-a"})


def test_an_auditor_token_without_a_known_scope_gets_the_narrower_remit() -> None:
    now = 1_900_000_000
    for scope in (None, "", "everything", "NETWORK"):
        claims = {"iss": ISSUER, "sub": "a", "kind": "AUDITOR", "orgs": ["org-a"], "aud": ["ledger"],
                  "iat": now, "nbf": now, "exp": now + 60, "jti": "j"}
        if scope is not None:
            claims["ascope"] = scope
        token = jwt.encode(claims, KEY, algorithm="EdDSA", headers={"kid": "k"})
        verifier_ = verifier()
        verifier_.leeway_s = 10**9  # the fixed times above are not now
        caller = asyncio.run(verifier_.claims(token))
        assert caller.role == ORGANIZATION_AUDITOR and not caller.audits({"org-b"}), scope
    # and a scope on a non-auditor's token means nothing
    doctor = claims_of(Caller("d", "PRACTITIONER", (), audience=("ledger",), audit_scope="network"))
    assert doctor.audit_scope == "" and not doctor.audits({"org-b"})
