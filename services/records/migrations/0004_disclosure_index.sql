-- The per-patient disclosure index behind ListDisclosures (records/disclosure_index.py):
-- every RecordsDisclosed and AccessDecided on access.events and every
-- BreakGlassInvoked and BreakGlassReviewed on consent.events, by patient, as
-- the signed envelope bytes (ids, codes and times only: no PHI). Fed by its own
-- PositionedConsumer; rows are keyed by event id, so a redelivery is a no-op.

CREATE TABLE disclosure_index (
    event_id        text PRIMARY KEY,
    patient_id      text NOT NULL,
    event_type      text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    break_glass_id  text NOT NULL DEFAULT '',
    envelope        bytea NOT NULL
);
CREATE INDEX disclosure_index_by_patient ON disclosure_index (patient_id, occurred_at, event_id);
CREATE INDEX disclosure_index_reviews ON disclosure_index (break_glass_id)
    WHERE event_type = 'medledger.v1.BreakGlassReviewed';

-- Ledger indices of the indexed events' types, from ledger.entries. Kept apart
-- (joined when listing) because an entry may be read before its event is.
CREATE TABLE disclosure_ledger_indices (
    event_id      text PRIMARY KEY,
    ledger_index  bigint NOT NULL
);

-- The index consumer's next offset per partition (access.events,
-- consent.events, ledger.entries), committed with the rows it applied.
CREATE TABLE disclosure_index_positions (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);
