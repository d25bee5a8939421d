-- A durable, queryable copy of every consent, for operators and reports.
-- consent.events is the source of truth; the housekeeping replica folds it in
-- here with the tracking-row pattern (an event's changes and its row in
-- applied_events commit together, so each is applied exactly once).
CREATE TABLE consents (
    consent_id        text PRIMARY KEY,
    patient_id        text NOT NULL,
    grantee_id        text NOT NULL,
    grantee_kind      text NOT NULL,
    purposes          text[] NOT NULL,
    all_records       boolean NOT NULL,
    categories        text[] NOT NULL,
    record_ids        text[] NOT NULL,
    valid_from        timestamptz NOT NULL,
    valid_until       timestamptz NOT NULL,
    signer_id         text NOT NULL,
    signer_role       text NOT NULL,
    terms             bytea NOT NULL,
    signature         bytea NOT NULL,
    granted_event_id  text NOT NULL,
    granted_at        timestamptz NOT NULL,
    revoked_at        timestamptz,
    revoked_by        text,
    expired_at        timestamptz
);
CREATE INDEX consents_by_patient ON consents (patient_id);
CREATE INDEX consents_by_grantee ON consents (grantee_id);
CREATE INDEX applied_events_position ON applied_events (topic, partition, "offset");
