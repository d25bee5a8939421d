-- Tracking rows for idempotent consumers: an event's effects and its row here
-- commit in one transaction, so a redelivered event is recognised and skipped.
CREATE TABLE applied_events (
    event_id    text PRIMARY KEY,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
