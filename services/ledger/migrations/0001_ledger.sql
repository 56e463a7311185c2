-- One validator's copy of the chains. Everything of a block is written in ONE transaction, together
-- with the chain's Kafka position (blocks.next_offset), so recovery restarts from the last block.

CREATE TABLE blocks (
    chain_id          int NOT NULL,
    height            bigint NOT NULL,
    header            bytea NOT NULL,
    header_hash       bytea NOT NULL,
    transaction_count int NOT NULL,
    next_offset       bigint NOT NULL,
    final             boolean NOT NULL DEFAULT false,
    results_published boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, height)
);
CREATE INDEX blocks_unpublished ON blocks (chain_id, height) WHERE NOT results_published;

CREATE TABLE transactions (
    chain_id        int NOT NULL,
    height          bigint NOT NULL,
    idx             int NOT NULL,
    transaction_id  text NOT NULL,
    invoice_id      text NOT NULL,
    kafka_offset    bigint NOT NULL,
    accepted        boolean NOT NULL,
    -- false when rejected before the signature was verified: such a record does not claim its id.
    claims_id       boolean NOT NULL,
    duplicate       boolean NOT NULL,
    tx_bytes        bytea NOT NULL,
    result_bytes    bytea NOT NULL,
    PRIMARY KEY (chain_id, height, idx)
);
CREATE INDEX transactions_by_id ON transactions (transaction_id);

CREATE TABLE invoice_states (
    invoice_id      text PRIMARY KEY,
    chain_id        int NOT NULL,
    invoice_number  text NOT NULL,
    issue_transaction_id text NOT NULL,
    last_transaction_id  text NOT NULL,
    state           bytea NOT NULL,
    height          bigint NOT NULL
);
CREATE INDEX invoice_states_by_number ON invoice_states (invoice_number);

CREATE TABLE submitter_keys (
    chain_id        int NOT NULL,
    key_id          text NOT NULL,
    public_key      bytea NOT NULL,
    role            int NOT NULL,
    subject         text NOT NULL,
    revoked         boolean NOT NULL,
    registration_id text NOT NULL,
    PRIMARY KEY (chain_id, key_id)
);

CREATE TABLE key_registrations (
    chain_id        int NOT NULL,
    registration_id text NOT NULL,
    kafka_offset    bigint NOT NULL,
    height          bigint NOT NULL,
    signed_bytes    bytea NOT NULL,
    PRIMARY KEY (chain_id, registration_id)
);

-- Verified signatures of every validator (own included), for finality and receipts.
CREATE TABLE block_signatures (
    chain_id      int NOT NULL,
    height        bigint NOT NULL,
    validator_id  text NOT NULL,
    header_hash   bytea NOT NULL,
    signature     bytea NOT NULL,
    PRIMARY KEY (chain_id, height, validator_id)
);

-- A validator whose signed header differs from ours for the same height.
CREATE TABLE divergences (
    id            bigserial PRIMARY KEY,
    chain_id      int NOT NULL,
    height        bigint NOT NULL,
    validator_id  text NOT NULL,
    their_header_hash bytea NOT NULL,
    our_header_hash   bytea NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chain_id, height, validator_id)
);
