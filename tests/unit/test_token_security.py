"""Token rules shared by every service (issue 9, items 10 and 11), without a
broker: audiences, revocation since issue, where verification keys may come
from, and the token buckets that limit Challenge."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.identity import keyfiles
from medledger.identity.domain import key_id_for
from medledger.runtime.auth import Caller, TokenVerifier, mint_token
from medledger.runtime.consumer import PositionedConsumer
from medledger.runtime.envelope import envelope
from medledger.runtime.errors import DependencyUnavailable, PermissionDenied, SettingsError, Unauthenticated
from medledger.runtime.identity_client import check_key_fetch, make_verifier, parse_pinned_keys, token_verifier
from medledger.runtime.positions import Delivery
from medledger.runtime.rate_limit import TokenBuckets, peer_host
from medledger.runtime.revocation_feed import RevocationFeed
from medledger.runtime.revocations import RevocationList
from medledger.runtime.transport import GrpcTls
from medledger.testing.producers import TestProducers
from medledger.v1 import identity_pb2

ISSUE = datetime(2025, 5, 1, 12, 0, 0)  # naive UTC, as event times are read
TOPIC = "identity.events"
PRODUCERS = TestProducers()


def caller(iat: datetime = ISSUE, orgs: tuple[str, ...] = ("org-a",), key_id: str = "k1", subject: str = "doc") -> Caller:
    return Caller(subject, "PRACTITIONER", orgs, audience=("consent",), issued_at=int(iat.replace(tzinfo=timezone.utc).timestamp()), key_id=key_id)


def event(payload: identity_pb2.IdentityRevoked | identity_pb2.KeyRevoked | identity_pb2.MembershipGranted
          | identity_pb2.MembershipEnded, at: datetime) -> bytes:
    env = envelope(payload, aggregate_id="doc", producer="identity", occurred_at=at.replace(tzinfo=timezone.utc))
    return PRODUCERS.seal(env)


def folded(*values: bytes) -> RevocationList:
    revocations = RevocationList(timedelta(minutes=20))
    verifier = PRODUCERS.verifier()
    for value in values:
        revocations.apply(verifier.open(TOPIC, value))
    return revocations


# ---- revocation since issue ----------------------------------------------------------


def test_a_revoked_identity_s_tokens_are_refused_as_permission_denied() -> None:
    revocations = folded(event(identity_pb2.IdentityRevoked(identity_id="doc", reason=identity_pb2.KEY_COMPROMISE),
                               ISSUE + timedelta(minutes=1)))
    assert isinstance(revocations.refusal(caller()), PermissionDenied)
    assert revocations.refusal(caller(subject="someone-else")) is None


def test_a_token_obtained_with_a_revoked_key_is_refused_and_other_keys_are_not() -> None:
    revocations = folded(event(identity_pb2.KeyRevoked(identity_id="doc", key_id="k1"), ISSUE + timedelta(minutes=1)))
    assert isinstance(revocations.refusal(caller(key_id="k1")), Unauthenticated)
    assert revocations.refusal(caller(key_id="k2")) is None


def test_a_token_listing_a_membership_ended_since_issue_is_refused() -> None:
    ended = ISSUE + timedelta(minutes=2)
    revocations = folded(event(identity_pb2.MembershipEnded(membership_id="m", member_id="doc", organization_id="org-a"), ended))
    error = revocations.refusal(caller())
    assert isinstance(error, Unauthenticated) and "org-a" in str(error)
    assert revocations.refusal(caller(orgs=("org-b",))) is None  # lists only organizations still held
    assert revocations.refusal(caller(iat=ended + timedelta(seconds=1))) is None  # issued after: cannot list it unless re-granted
    regranted = folded(
        event(identity_pb2.MembershipEnded(membership_id="m", member_id="doc", organization_id="org-a"), ended),
        event(identity_pb2.MembershipGranted(membership_id="m2", member_id="doc", organization_id="org-a", role="x"),
              ended + timedelta(minutes=1)),
    )
    assert regranted.refusal(caller()) is None


def test_old_revocations_are_forgotten_once_no_token_can_outlive_them() -> None:
    revocations = folded(event(identity_pb2.IdentityRevoked(identity_id="doc"), ISSUE))
    revocations.prune(ISSUE + timedelta(minutes=19))
    assert len(revocations) == 1
    revocations.prune(ISSUE + timedelta(minutes=21))
    assert len(revocations) == 0


class _Offline(PositionedConsumer):
    """The real consumer's envelope verification, without a broker."""

    async def positions(self) -> dict[tuple[str, int], int]:
        return {}


def test_a_forged_revocation_on_identity_events_revokes_nobody() -> None:
    genuine = envelope(identity_pb2.IdentityRevoked(identity_id="doc", reason=identity_pb2.KEY_COMPROMISE),
                       aggregate_id="doc", producer="identity")
    forgeries = PRODUCERS.forgeries(genuine, "consent")
    feed = RevocationFeed(PRODUCERS.verifier(), max_staleness_s=5)
    deliveries = [Delivery(TOPIC, 0, i, value) for i, value in enumerate(forgeries.values())]
    asyncio.run(feed._apply(_Offline("unused:9092", [TOPIC]), deliveries))
    assert feed.revocations.refusal(caller()) is None
    asyncio.run(feed._apply(_Offline("unused:9092", [TOPIC]), [Delivery(TOPIC, 0, 99, PRODUCERS.seal(genuine))]))
    assert isinstance(feed.revocations.refusal(caller()), PermissionDenied)


def test_the_feed_fails_closed_until_loaded_and_when_stale() -> None:
    now = [100.0]
    feed = RevocationFeed(PRODUCERS.verifier(), max_staleness_s=0.05, clock=lambda: now[0])
    with pytest.raises(DependencyUnavailable, match="not loaded"):
        asyncio.run(feed.check(caller()))
    feed.fresh_as_of, now[0] = 100.0, 100.01
    feed.caught_up.set()
    asyncio.run(feed.check(caller()))
    now[0] = 101.0
    assert not feed.fresh()
    with pytest.raises(DependencyUnavailable, match="failing closed"):
        asyncio.run(feed.check(caller()))


# ---- audience ----------------------------------------------------------------------


def _verifier_and_key() -> tuple[TokenVerifier, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    verifier = TokenVerifier()
    verifier.add_key("t1", keyfiles.raw_public_key(key))
    return verifier, key


def test_a_service_accepts_only_tokens_naming_it() -> None:
    verifier, key = _verifier_and_key()
    token = mint_token(key, "t1", Caller("doc", "PRACTITIONER", audience=("records", "consent"), key_id="k1"), 600)
    assert asyncio.run(verifier.verify(token, "consent")).audience == ("records", "consent")
    with pytest.raises(Unauthenticated, match="not for the ledger"):
        asyncio.run(verifier.verify(token, "ledger"))
    no_audience = mint_token(key, "t1", Caller("doc", "PRACTITIONER"), 600)
    with pytest.raises(Unauthenticated):
        asyncio.run(verifier.verify(no_audience, "consent"))


# ---- where verification keys come from -------------------------------------------------


def test_token_keys_are_never_fetched_in_plaintext_off_loopback() -> None:
    plaintext = GrpcTls()
    check_key_fetch("127.0.0.1:50051", plaintext)
    check_key_fetch("localhost:50051", plaintext)
    check_key_fetch("[::1]:50051", plaintext)
    for address in ("identity:50051", "10.0.0.5:50051", "[2001:db8::1]:50051"):
        with pytest.raises(SettingsError, match="MEDLEDGER_TOKEN_VERIFICATION_KEYS_FILE"):
            check_key_fetch(address, plaintext)
    check_key_fetch("identity:50051", GrpcTls(allow_plaintext=True))  # a mesh provides mutual TLS, as the operator says


def test_pinned_token_keys_are_used_and_nothing_is_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = keyfiles.raw_public_key(Ed25519PrivateKey.generate())
    pinned = tmp_path / "token-keys.pub"
    pinned.write_text(f"# the identity service's token key\n{keyfiles.public_key_text(raw)}\n")
    env = {"MEDLEDGER_TOKEN_VERIFICATION_KEYS_FILE": str(pinned)}
    verifier = token_verifier("identity.example:50051", TokenVerifier, env)
    assert verifier.refresh is None and set(verifier.keys) == {key_id_for(raw)}
    with pytest.raises(SettingsError):
        parse_pinned_keys("not a key\n", "pinned")
    with pytest.raises(SettingsError, match="no token verification key"):
        parse_pinned_keys("# empty\n", "pinned")
    monkeypatch.delenv("MEDLEDGER_TOKEN_VERIFICATION_KEYS_FILE", raising=False)
    monkeypatch.delenv("MEDLEDGER_GRPC_TLS_CA_FILE", raising=False)
    monkeypatch.delenv("MEDLEDGER_GRPC_ALLOW_PLAINTEXT", raising=False)
    with pytest.raises(SettingsError, match="plaintext"):
        make_verifier("identity.example:50051")


async def test_a_caller_cancelled_during_a_key_fetch_does_not_spoil_it_for_the_next() -> None:
    """The first token with a new key id starts a fetch of identity's keys. If
    that caller's RPC is cancelled meanwhile (records cancels its proof lookup
    when consent refuses the read), the fetch still completes, and a caller
    right behind it is served: once, the fetch died with the cancelled RPC
    and every call for the next second answered 'unknown key'."""
    key = Ed25519PrivateKey.generate()
    raw = keyfiles.raw_public_key(key)
    fetches: list[int] = []
    identity_answers = asyncio.Event()

    async def fetch() -> dict[str, bytes]:
        fetches.append(1)
        await identity_answers.wait()
        return {key_id_for(raw): raw}

    verifier = TokenVerifier(refresh=fetch)
    token = mint_token(key, key_id_for(raw), Caller("doc", "PRACTITIONER", audience=("ledger",), key_id="k1"), 600)
    cancelled = asyncio.ensure_future(verifier.verify(token, "ledger"))
    await asyncio.sleep(0)
    cancelled.cancel()
    behind = asyncio.ensure_future(verifier.verify(token, "ledger"))
    await asyncio.sleep(0)
    identity_answers.set()
    assert (await behind).subject == "doc"
    assert cancelled.cancelled() and len(fetches) == 1


async def test_made_up_key_ids_fetch_identity_s_keys_at_most_once_per_interval() -> None:
    fetches: list[int] = []

    async def fetch() -> dict[str, bytes]:
        fetches.append(1)
        return {}

    verifier = TokenVerifier(refresh=fetch, min_refresh_interval_s=60)
    forger = Ed25519PrivateKey.generate()
    for n in range(20):
        token = mint_token(forger, f"made-up-{n}", Caller("doc", "PRACTITIONER", audience=("ledger",)), 600)
        with pytest.raises(Unauthenticated, match="unknown key"):
            await verifier.verify(token, "ledger")
    assert len(fetches) == 1


# ---- Challenge rate limits -------------------------------------------------------------


def test_token_buckets_allow_a_burst_then_the_refill_rate() -> None:
    buckets = TokenBuckets(burst=3, per_minute=60)
    assert [buckets.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b", 0.0)  # every key has its own bucket
    assert buckets.retry_after("a") == pytest.approx(1.0)
    assert not buckets.take("a", 0.5) and buckets.take("a", 1.6)
    assert [buckets.take("a", 100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_token_buckets_keep_a_bounded_number_of_keys() -> None:
    buckets = TokenBuckets(burst=1, per_minute=1, max_keys=2)
    for key in ("a", "b", "c"):
        assert buckets.take(key, 0.0)
    assert buckets.take("a", 0.0)  # forgotten: starts again full
    assert not buckets.take("c", 0.0)


@pytest.mark.parametrize("peer, host", [
    ("ipv4:10.0.0.7:51234", "ipv4:10.0.0.7"),
    ("ipv6:[::1]:51234", "ipv6:[::1]"),
    ("unix:/tmp/sock", "unix:/tmp/sock"),
    ("", ""),
])
def test_a_peer_is_its_address_without_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_pruning_forgets_only_what_expired_and_keeps_a_renewed_revocation() -> None:
    later = ISSUE + timedelta(minutes=10)
    revocations = folded(
        event(identity_pb2.IdentityRevoked(identity_id="doc"), ISSUE),
        event(identity_pb2.IdentityRevoked(identity_id="nurse"), ISSUE),
        event(identity_pb2.IdentityRevoked(identity_id="doc"), later),  # noted again, later
    )
    revocations.prune(ISSUE + timedelta(minutes=21))
    assert set(revocations.revoked_identities) == {"doc"}
    revocations.prune(later + timedelta(minutes=21))
    assert len(revocations) == 0
