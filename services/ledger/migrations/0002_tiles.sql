-- The tree as C2SP tlog-tiles hash tiles instead of one row per node (issue 13).
-- Tile (level, idx) holds the hashes at tree level 8 * level with indices
-- [256 * idx, 256 * idx + width), concatenated (32 bytes each, width = length / 32):
-- exactly the body of /tile/<level>/<idx>. Level 0 holds the entries' leaf hashes.
-- A full tile (256 hashes) is written once and never changes; the right-edge
-- partial tile of each level is rewritten as it grows, only ever extended.
-- Every other perfect node is recomputed from one tile (services/ledger/tile_tree.py).
CREATE TABLE tree_tiles (
    level   smallint NOT NULL,
    idx     bigint NOT NULL,
    hashes  bytea NOT NULL CHECK (length(hashes) BETWEEN 32 AND 8192 AND length(hashes) % 32 = 0),
    PRIMARY KEY (level, idx)
);
-- Hashes do not compress: store them out of line without trying.
ALTER TABLE tree_tiles ALTER COLUMN hashes SET STORAGE EXTERNAL;

-- Existing ledgers: level-0 tiles from the entries' leaf hashes, higher tiles
-- from the stored nodes at levels 8, 16, ... (the nodes between are recomputed).
INSERT INTO tree_tiles (level, idx, hashes)
SELECT 0, idx / 256, string_agg(leaf_hash, ''::bytea ORDER BY idx) FROM entries GROUP BY idx / 256;
INSERT INTO tree_tiles (level, idx, hashes)
SELECT level / 8, idx / 256, string_agg(hash, ''::bytea ORDER BY idx)
FROM tree_nodes WHERE level % 8 = 0 AND level > 0 GROUP BY level, idx / 256;

DROP TABLE tree_nodes;
