-- Organisations allowed to call the reimbursement API, identified by their unified social credit code
-- (taken from the verified client certificate). A revoked organisation is refused at once.
CREATE TABLE organisations (
    tax_id      text PRIMARY KEY CHECK (tax_id ~ '^[0-9A-HJ-NPQRTUWXY]{18}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status      text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'REVOKED')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- One row per client request (idempotency key), written BEFORE anything is submitted to the ledger,
-- together with the transaction ids it will use: a retry finds the row and reuses those ids.
CREATE TABLE reimbursement_requests (
    id                  bigserial PRIMARY KEY,
    organisation_tax_id text NOT NULL REFERENCES organisations (tax_id),
    idempotency_key     text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    operation           text NOT NULL CHECK (operation IN ('LOCK', 'UNLOCK', 'CLOSE', 'BATCH_LOCK', 'BATCH_CLOSE')),
    -- SHA-256 of the operation and its invoice numbers: same key + different content is a conflict.
    request_digest      bytea NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation_tax_id, idempotency_key)
);

-- Ledger transactions submitted for a request (one per invoice; batches may add compensating UNLOCKs).
CREATE TABLE reimbursement_transactions (
    transaction_id      uuid PRIMARY KEY,
    request_id          bigint NOT NULL REFERENCES reimbursement_requests (id),
    position            int NOT NULL CHECK (position >= 0),
    purpose             text NOT NULL DEFAULT 'REQUESTED' CHECK (purpose IN ('REQUESTED', 'COMPENSATION')),
    action              text NOT NULL CHECK (action IN ('LOCK', 'UNLOCK', 'CLOSE')),
    organisation_tax_id text NOT NULL,
    invoice_number      text NOT NULL,
    invoice_id          text NOT NULL,
    state               text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'ACCEPTED', 'REJECTED')),
    rejection_reason    text NOT NULL DEFAULT '',
    ledger_status       int NOT NULL DEFAULT 0,
    reimbursable_fen    bigint NOT NULL DEFAULT 0,
    chain_id            int NOT NULL DEFAULT 0,
    height              bigint NOT NULL DEFAULT 0,
    submitted_at        timestamptz NOT NULL DEFAULT now(),
    decided_at          timestamptz,
    UNIQUE (request_id, position, purpose)
);
CREATE INDEX reimbursement_transactions_by_org ON reimbursement_transactions (organisation_tax_id, request_id, position);
CREATE INDEX reimbursement_transactions_pending ON reimbursement_transactions (submitted_at) WHERE state = 'PENDING';

-- VerifyInvoice checks per organisation, invoice number and day (China's 查验 rule: 5 per invoice per day).
CREATE TABLE verification_checks (
    organisation_tax_id text NOT NULL,
    invoice_number      text NOT NULL,
    check_day           date NOT NULL,
    checks              int NOT NULL,
    PRIMARY KEY (organisation_tax_id, invoice_number, check_day)
);

-- Issuer (seller) signing keys, learned from authority-signed key registrations on the ledger log.
CREATE TABLE issuer_keys (
    key_id          text PRIMARY KEY,
    public_key      bytea NOT NULL CHECK (length(public_key) = 32),
    seller_tax_id   text NOT NULL,
    revoked         boolean NOT NULL DEFAULT false,
    registration_id text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
