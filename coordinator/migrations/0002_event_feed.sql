-- The event feed's positions (CONTRACT §1.6): a dense `global_sequence` stamped AFTER commit.
--
-- A number taken at insert time is not a safe cursor: transaction A takes 10, B takes 11, B commits
-- first, and a reader that delivered 11 and moved its cursor past 10 never sees A's event. So the
-- insertion id (`id`, still the primary key and still assigned at insert from its sequence) is kept
-- apart from the position a reader resumes from: `global_sequence` is NULL at insert and stamped by
-- the feed's sequencer (`coordinator/src/feed/sequencer.rs`), one leader across all replicas, on
-- committed rows only, densely (1, 2, 3 ...) in insertion order. Readers read
-- `global_sequence > cursor` only, so a late commit is never skipped: it is simply stamped later.

ALTER TABLE events RENAME COLUMN global_sequence TO id;
ALTER SEQUENCE events_global_sequence_seq RENAME TO events_id_seq;

ALTER TABLE events ADD COLUMN global_sequence bigint CHECK (global_sequence > 0);

-- The safety net under the sequencer's advisory lock: no position is ever given twice.
CREATE UNIQUE INDEX events_global_sequence ON events (global_sequence);

-- What the sequencer scans: the unstamped rows, in insertion order.
CREATE INDEX events_unstamped ON events (id) WHERE global_sequence IS NULL;

-- Events written before this migration get dense positions in insertion order now (the feed was not
-- served before, so no consumer holds a cursor in the old numbering).
UPDATE events e SET global_sequence = n.position
FROM (SELECT id, row_number() OVER (ORDER BY id) AS position FROM events) n
WHERE e.id = n.id;
