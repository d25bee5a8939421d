-- The records service's own data: per-patient data keys (wrapped), records and
-- their versions (payloads encrypted), research artifacts, and the two
-- outboxes its events leave through (records.events, access.events).

-- One data key per patient, wrapped by the key-encryption key kek_id names.
-- Erasure sets wrapped_key to NULL (crypto-shredding) and records when.
CREATE TABLE patient_keys (
    patient_id        text PRIMARY KEY,
    kek_id            text NOT NULL,
    wrapped_key       bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    erased_at         timestamptz,
    erasure_id        text UNIQUE,
    erasure_event_id  text,
    versions_erased   integer
);

CREATE TABLE records (
    record_id       text PRIMARY KEY,
    patient_id      text NOT NULL,
    category        text NOT NULL,
    custodian_id    text NOT NULL,
    latest_version  integer NOT NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX records_by_patient ON records (patient_id, created_at DESC, record_id DESC);

-- sealed: nonce || AES-256-GCM(salt || canonical JSON) under the patient's
-- data key, bound to (patient, record, version); NULL once erased.
CREATE TABLE record_versions (
    record_id         text NOT NULL REFERENCES records,
    version           integer NOT NULL,
    author_id         text NOT NULL,
    attestation       bytea NOT NULL,
    author_signature  bytea NOT NULL,
    commitment        bytea NOT NULL,
    sealed            bytea,
    recorded_at       timestamptz NOT NULL,
    event_id          text NOT NULL UNIQUE,
    ledger_index      bigint,
    PRIMARY KEY (record_id, version)
);

CREATE TABLE research_artifacts (
    artifact_id      text PRIMARY KEY,
    trial_id         text NOT NULL,
    kind             smallint NOT NULL,
    sha256           bytea NOT NULL,
    organization_id  text NOT NULL,
    registered_by    text NOT NULL,
    registered_at    timestamptz NOT NULL,
    event_id         text NOT NULL UNIQUE
);
CREATE INDEX research_artifacts_by_trial ON research_artifacts (trial_id, registered_at);
CREATE INDEX research_artifacts_by_hash ON research_artifacts (sha256, registered_at);

-- RecordCreated, RecordAmended, PatientDataErased, ResearchArtifactRegistered
-- for records.events (runtime/outbox.py).
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

-- RecordsDisclosed for access.events: every served read commits one here
-- before it answers.
CREATE TABLE disclosure_outbox (
    seq           bigserial PRIMARY KEY,
    event_id      text NOT NULL UNIQUE,
    aggregate_id  text NOT NULL,
    envelope      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    partition     integer,
    "offset"      bigint
);
CREATE INDEX disclosure_outbox_unpublished ON disclosure_outbox (seq) WHERE published_at IS NULL;
