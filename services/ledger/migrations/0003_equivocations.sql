-- A validator that signed two different headers for one height: the second signed header, kept as
-- evidence next to the first (which is in block_signatures or divergences). Anyone holding both can
-- prove the equivocation with the validator's public key alone.
CREATE TABLE equivocations (
    chain_id      int NOT NULL,
    height        bigint NOT NULL,
    validator_id  text NOT NULL,
    header        bytea NOT NULL,
    header_hash   bytea NOT NULL,
    signature     bytea NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, height, validator_id, header_hash)
);
