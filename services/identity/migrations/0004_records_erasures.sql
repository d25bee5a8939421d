-- Where the identity service's reader of records.events stands: the next
-- offset per partition, committed with the erasures it applied (erasure.py).
-- PatientDataErased events it applied have tracking rows in applied_events.
CREATE TABLE consumer_positions (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);
