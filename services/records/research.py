"""Clinical research integrity reads: every registration of a document hash
with its ledger proof, and a trial's timeline with results or analysis plans
registered before the protocol flagged (domain.before_protocol). Only hashes,
trial ids and organizations are involved: no patient data."""

from __future__ import annotations

import asyncio
from typing import Callable

import asyncpg

from medledger.records import domain, store, views
from medledger.records.peers import Prover
from medledger.v1 import records_pb2 as pb

MAX_REGISTRATIONS_PER_HASH = 100


def _timeline_flags(artifacts: list[store.StoredArtifact]) -> dict[str, bool]:
    entries = [domain.ArtifactEntry(a.kind, a.registered_at, a.artifact_id) for a in artifacts]
    return {e.artifact_id: flag for e, flag in zip(entries, domain.before_protocol(entries))}


class ResearchReads:
    def __init__(self, pool: Callable[[], asyncpg.Pool], prover: Callable[[], Prover]) -> None:
        self.pool = pool
        self.prover = prover

    async def verify(self, sha256: bytes) -> pb.VerifyResearchArtifactResponse:
        domain.require_sha256(sha256)
        async with self.pool().acquire() as conn:
            found = await store.artifacts_by_hash(conn, sha256, MAX_REGISTRATIONS_PER_HASH)
            flags: dict[str, bool] = {}
            for trial_id in {a.trial_id for a in found}:
                flags.update(_timeline_flags(await store.trial_artifacts(conn, trial_id)))
        prover = self.prover() if found else None
        proofs = await asyncio.gather(*(prover.prove(a.event_id) for a in found)) if prover else []
        response = pb.VerifyResearchArtifactResponse()
        for artifact, proof in zip(found, proofs):
            entry = response.registrations.add(
                artifact=views.artifact_message(artifact, flags.get(artifact.artifact_id, False),
                                                proof.entry.index if proof else None),
                proof_status=pb.PROOF_INCLUDED if proof else pb.PROOF_PENDING,
            )
            if proof is not None:
                entry.proof.CopyFrom(proof)
        return response

    async def timeline(self, trial_id: str) -> pb.ListTrialArtifactsResponse:
        if not trial_id or not domain.TRIAL_ID_PATTERN.match(trial_id):
            raise domain.InvalidArgument("trial_id must be 1-64 letters, digits, '.', '_', ':', '/' or '-'")
        async with self.pool().acquire() as conn:
            artifacts = await store.trial_artifacts(conn, trial_id)
        flags = _timeline_flags(artifacts)
        return pb.ListTrialArtifactsResponse(
            artifacts=[views.artifact_message(a, flags[a.artifact_id]) for a in artifacts],
            registered_out_of_order=any(flags.values()),
        )
