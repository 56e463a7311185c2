-- The number of chains (partitions of ledger.tx.v1) this validator's chains were built with. Each
-- invoice belongs to one chain, derived from its id and this number, so it never changes: a validator
-- refuses to start against a transaction topic with another partition count.
CREATE TABLE ledger_settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);
