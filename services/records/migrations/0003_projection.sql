-- The records service's view of identity.events and consent.events: who is
-- who, memberships, representatives, TREATMENT consents and break-glass for
-- write authorization and custodian reads. Every applied event has a tracking
-- row in applied_events (same transaction); projection_positions holds the
-- next offset per partition so a restart resumes where it stopped.

CREATE TABLE projection_positions (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

CREATE TABLE identities (
    identity_id        text PRIMARY KEY,
    kind               text NOT NULL,
    active             boolean NOT NULL,
    registered_by      text NOT NULL,
    organization_type  text NOT NULL
);

CREATE TABLE memberships (
    membership_id    text PRIMARY KEY,
    member_id        text NOT NULL,
    organization_id  text NOT NULL,
    active           boolean NOT NULL
);
CREATE INDEX memberships_by_member ON memberships (member_id) WHERE active;

CREATE TABLE consents (
    consent_id   text PRIMARY KEY,
    patient_id   text NOT NULL,
    grantee_id   text NOT NULL,
    purposes     integer[] NOT NULL,
    record_ids   text[] NOT NULL,
    valid_from   timestamptz NOT NULL,
    valid_until  timestamptz NOT NULL,
    revoked      boolean NOT NULL DEFAULT false
);
CREATE INDEX consents_by_patient ON consents (patient_id);

CREATE TABLE break_glass (
    break_glass_id   text PRIMARY KEY,
    patient_id       text NOT NULL,
    practitioner_id  text NOT NULL,
    organization_id  text NOT NULL,
    valid_until      timestamptz NOT NULL
);
CREATE INDEX break_glass_by_patient ON break_glass (patient_id);

CREATE TABLE representatives (
    patient_id         text NOT NULL,
    representative_id  text NOT NULL,
    active             boolean NOT NULL,
    PRIMARY KEY (patient_id, representative_id)
);
