-- The transactional outbox (runtime/outbox.py): a command's signed events
-- commit here with its state change; the relay publishes them in order and
-- records where each landed.
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
