-- The identity projection (rebuildable from identity.events), the outbox that
-- publishes those events, and the data that never leaves this database:
-- single-use challenges, encrypted demographics and MRN hashes.

-- Events decided here are applied in the command's own transaction, before
-- they have a Kafka position; only events applied from the topic have one.
ALTER TABLE applied_events ALTER COLUMN partition DROP NOT NULL;
ALTER TABLE applied_events ALTER COLUMN "offset" DROP NOT NULL;

CREATE TABLE identities (
    identity_id        text PRIMARY KEY,
    kind               text NOT NULL,
    status             text NOT NULL,
    assurance_level    text NOT NULL,
    registered_by      text NOT NULL,
    organization_type  text NOT NULL,
    registered_at      timestamptz NOT NULL,
    revoked_at         timestamptz,
    revocation_reason  text NOT NULL DEFAULT ''
);

-- key_id is derived from the public key, so its uniqueness means one key
-- belongs to one identity, ever.
CREATE TABLE identity_keys (
    key_id           text PRIMARY KEY,
    identity_id      text NOT NULL REFERENCES identities,
    position         integer NOT NULL,
    public_key       bytea NOT NULL,
    valid_from       timestamptz NOT NULL,
    replaced_at      timestamptz,
    revoked_at       timestamptz,
    previous_key_id  text NOT NULL DEFAULT '',
    UNIQUE (identity_id, position)
);

CREATE TABLE memberships (
    membership_id    text PRIMARY KEY,
    member_id        text NOT NULL REFERENCES identities,
    organization_id  text NOT NULL,
    role             text NOT NULL,
    granted_at       timestamptz NOT NULL,
    ended_at         timestamptz
);
CREATE INDEX memberships_by_member ON memberships (member_id);
CREATE INDEX memberships_by_organization ON memberships (organization_id);

-- Envelopes committed with the state they produced; the relay publishes them
-- in seq order and records where each landed.
CREATE TABLE outbox (
    seq           bigserial PRIMARY KEY,
    event_id      text NOT NULL UNIQUE,
    aggregate_id  text NOT NULL,
    envelope      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    partition     integer,
    "offset"      bigint
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

CREATE TABLE challenges (
    nonce        bytea PRIMARY KEY,
    identity_id  text NOT NULL,
    key_id       text NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX challenges_by_expiry ON challenges (expires_at);

-- AES-256-GCM ciphertext of a serialized medledger.v1.Demographics under a
-- per-identity data key, wrapped by the key-encryption key kek_id names.
CREATE TABLE demographics (
    identity_id  text PRIMARY KEY REFERENCES identities,
    kek_id       text NOT NULL,
    wrapped_key  bytea NOT NULL,
    ciphertext   bytea NOT NULL
);

-- HMAC-SHA256(organization, MRN): a hospital finds its patient by its own
-- record number without the number being stored.
CREATE TABLE mrn_index (
    organization_id  text NOT NULL,
    mrn_hash         bytea NOT NULL,
    identity_id      text NOT NULL REFERENCES identities,
    PRIMARY KEY (organization_id, mrn_hash)
);

-- The check id of the data key that sealed this database's ciphertext.
CREATE TABLE data_key (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    kek_id     text NOT NULL
);
