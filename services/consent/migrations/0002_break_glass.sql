-- Break-glass accesses. The justification is free text a practitioner wrote
-- under pressure and may contain PHI, so it is kept here, shown only to the
-- patient, their representatives and auditors; the BreakGlassInvoked event
-- carries its SHA-256. Every row starts flagged for review.
CREATE TABLE break_glass (
    break_glass_id        text PRIMARY KEY,
    patient_id            text NOT NULL,
    practitioner_id       text NOT NULL,
    organization_id       text NOT NULL,
    justification         text NOT NULL,
    justification_sha256  bytea NOT NULL,
    invoked_at            timestamptz NOT NULL,
    valid_until           timestamptz NOT NULL,
    event_id              text NOT NULL UNIQUE,
    review_status         text NOT NULL DEFAULT 'PENDING_REVIEW'
);
CREATE INDEX break_glass_by_patient ON break_glass (patient_id, invoked_at);
