-- Free text stays sealed at rest (runtime/sealing.py, like identity's
-- demographics): a break-glass justification and a reviewer's note are each
-- encrypted under their own data key, wrapped by the key-encryption key from
-- MEDLEDGER_CONSENT_DATA_KEY_FILE. Rows written before this migration hold
-- plaintext in `justification` until the service seals them at start.
ALTER TABLE break_glass
    ALTER COLUMN justification DROP NOT NULL,
    ADD COLUMN kek_id text,
    ADD COLUMN wrapped_key bytea,
    ADD COLUMN justification_sealed bytea,
    ADD COLUMN reason text,
    ADD COLUMN reviewed_by text,
    ADD COLUMN reviewed_at timestamptz;

-- The per-practitioner daily limit counts a practitioner's recent break-glasses.
CREATE INDEX break_glass_by_practitioner ON break_glass (practitioner_id, invoked_at);

-- One review per break-glass or representative appointment; the note sealed.
-- The outcome and reviewer are on the ledger too (BreakGlassReviewed,
-- RepresentationReviewed), which carry the note's SHA-256.
CREATE TABLE review_notes (
    subject_kind  text NOT NULL CHECK (subject_kind IN ('break_glass', 'representation')),
    subject_id    text NOT NULL,
    patient_id    text NOT NULL,
    outcome       text NOT NULL,
    reviewer_id   text NOT NULL,
    reviewed_at   timestamptz NOT NULL,
    kek_id        text NOT NULL,
    wrapped_key   bytea NOT NULL,
    note_sealed   bytea NOT NULL,
    PRIMARY KEY (subject_kind, subject_id)
);

-- The check id of the data key that sealed this database's texts.
CREATE TABLE data_key (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    kek_id     text NOT NULL
);
