-- Authors' and erasure signers' keys, folded from identity.events so a write
-- checks the signer's key in the query that reads its other facts instead of
-- asking identity's ResolveKey (records/projection.py; docs/architecture.md,
-- Decisions, "Records: authors' keys come from the projection").
--
-- One row per key of an identity: the first one from IdentityRegistered, the
-- others from KeyRotated. ordinal is the key's place in the identity's history
-- (0 = the registered key), the order identity's own fold keeps; valid_from is
-- the envelope's occurred_at; replaced_at is set by the next rotation and
-- revoked_at by KeyRevoked (IdentityRevoked leaves keys alone, as ResolveKey
-- does). Every statement that writes here is idempotent, so the key part of an
-- identity event is applied whether or not applied_events already tracks it.
CREATE TABLE signing_keys (
    identity_id  text NOT NULL,
    key_id       text NOT NULL,
    ordinal      integer NOT NULL,
    public_key   bytea NOT NULL,
    valid_from   timestamptz NOT NULL,
    replaced_at  timestamptz,
    revoked_at   timestamptz,
    PRIMARY KEY (identity_id, key_id)
);

-- The projection's next offsets from now on. projection_positions (0003) is
-- left behind: replicas from before this migration keep writing it during a
-- rolling upgrade, past key events they do not fold. Starting over in a table
-- only this version writes means identity.events is folded again from offset 0
-- (its partitions have no row here) while consent.events resumes where it was.
-- The re-fold re-applies only the key part: the other identity handlers stay
-- behind their applied_events rows (and are idempotent as well).
CREATE TABLE projection_offsets (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

INSERT INTO projection_offsets (topic, partition, next_offset)
SELECT topic, partition, next_offset FROM projection_positions WHERE topic NOT LIKE '%identity.events';
