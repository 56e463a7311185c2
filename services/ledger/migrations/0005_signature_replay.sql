-- Per partition of the signature topic, the offset a restarted validator reads it again from: every
-- earlier record's effect (votes with the finality they completed, signatures that came after
-- finality, our own signature of a stored block) is stored. Written in the statement that stores them.
CREATE TABLE signature_replay (
    topic_partition  int PRIMARY KEY,
    next_offset      bigint NOT NULL CHECK (next_offset >= 0)
);
