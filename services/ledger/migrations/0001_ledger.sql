-- The sequenced log. One row per entry; idx is gap-free from 0.
CREATE TABLE entries (
    idx               bigint PRIMARY KEY,
    event_id          text NOT NULL UNIQUE,
    leaf_hash         bytea NOT NULL,
    chain_hash        bytea NOT NULL,
    event             bytea NOT NULL,
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    sequenced_at      timestamptz NOT NULL
);
-- GetInclusionProofByHash looks leaves up by hash; a hash index is smaller than a btree here.
CREATE INDEX entries_leaf_hash ON entries USING hash (leaf_hash);

-- Perfect-subtree hashes at level >= 1 (level 0 is entries.leaf_hash): node
-- (level, idx) covers leaves [idx * 2^level, (idx + 1) * 2^level).
CREATE TABLE tree_nodes (
    level  smallint NOT NULL,
    idx    bigint NOT NULL,
    hash   bytea NOT NULL,
    PRIMARY KEY (level, idx)
);

-- Next Kafka offset to consume per source partition; committed in the same
-- transaction as the entries it produced, so a restart resumes exactly there.
CREATE TABLE consumer_offsets (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Signed checkpoints, one per published tree size.
CREATE TABLE checkpoints (
    tree_size   bigint PRIMARY KEY,
    root_hash   bytea NOT NULL,
    chain_hash  bytea NOT NULL,
    note        bytea NOT NULL,
    signed_at   timestamptz NOT NULL
);

-- Records refused by the sequencer, kept for operators and published to ledger.rejected.
CREATE TABLE rejected (
    id                bigserial PRIMARY KEY,
    reason            text NOT NULL,
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    value_sha256      bytea NOT NULL,
    value_size        bigint NOT NULL,
    rejected_at       timestamptz NOT NULL,
    UNIQUE (source_topic, source_partition, source_offset)
);
