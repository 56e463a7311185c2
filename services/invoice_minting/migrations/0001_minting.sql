-- Issuer profiles, learned from MerchantRegistered on merchants.v1.
CREATE TABLE merchants (
    merchant_id     text PRIMARY KEY,
    legal_name      text NOT NULL,
    tax_id          text NOT NULL,
    region_code     text NOT NULL CHECK (region_code ~ '^[0-9]{2}$'),
    default_tax_classification_code text NOT NULL,
    default_item_name text NOT NULL,
    default_tax_rate_bp int NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Ed25519 issuer keys per merchant. Private keys sealed with AES-GCM (associated data = key id).
-- Retired keys stay so that old invoices still verify; one active key per merchant.
CREATE TABLE issuer_keys (
    key_id          text PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants (merchant_id),
    public_key      bytea NOT NULL CHECK (length(public_key) = 32),
    private_key_sealed bytea NOT NULL,
    subject_tax_id  text NOT NULL,
    active          boolean NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz
);
CREATE UNIQUE INDEX issuer_keys_one_active ON issuer_keys (merchant_id) WHERE active;
CREATE INDEX issuer_keys_by_merchant ON issuer_keys (merchant_id, created_at);

-- Claim offers: one per payment. Only the SHA-256 of the claim token is searchable; the token itself
-- is sealed (associated data = offer id) so the merchant's channel can show the QR code again.
CREATE TABLE claim_offers (
    offer_id        uuid PRIMARY KEY,
    payment_id      text NOT NULL UNIQUE,
    merchant_id     text NOT NULL,
    token_hash      bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    token_sealed    bytea NOT NULL,
    amount_fen      bigint NOT NULL CHECK (amount_fen > 0),
    payment         bytea NOT NULL,
    paid_at         timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    refunded_fen    bigint NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0),
    invoice_id      uuid,
    claim_idempotency_key text,
    claim_request_hash bytea,
    claimed_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Gapless invoice sequences per issuing region and year: incremented inside the claim's transaction,
-- so a rolled-back claim rolls its number back too.
CREATE TABLE invoice_counters (
    region_code     text NOT NULL,
    year            int NOT NULL,
    last_sequence   bigint NOT NULL CHECK (last_sequence >= 0),
    PRIMARY KEY (region_code, year)
);

-- Invoices (blue and red-letter). `signed` holds the exact SignedInvoice bytes that were submitted.
-- status: 1 PENDING, 2 ISSUED, 3 REJECTED, 4 CANCELLED, 5 PARTIALLY_RED_LETTERED (InvoiceStatus).
CREATE TABLE invoices (
    seq             bigserial UNIQUE,
    invoice_id      uuid PRIMARY KEY,
    invoice_number  text NOT NULL UNIQUE CHECK (invoice_number ~ '^[0-9]{20}$'),
    kind            smallint NOT NULL,
    merchant_id     text NOT NULL,
    buyer_tax_id    text NOT NULL,
    payment_id      text NOT NULL,
    original_invoice_id uuid REFERENCES invoices (invoice_id),
    status          smallint NOT NULL,
    rejection_reason text NOT NULL DEFAULT '',
    total_fen       bigint NOT NULL,
    reimbursable_fen bigint NOT NULL,
    signed          bytea NOT NULL,
    ledger_chain_id int NOT NULL DEFAULT 0,
    ledger_height   bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_by_merchant ON invoices (merchant_id, seq);
CREATE INDEX invoices_by_buyer ON invoices (buyer_tax_id, seq) WHERE buyer_tax_id <> '';
CREATE INDEX invoices_by_original ON invoices (original_invoice_id) WHERE original_invoice_id IS NOT NULL;

-- Ledger transactions we submitted (through the outbox), and their outcome once the ledger reports it.
-- status: 0 pending, 1 accepted, 2 rejected. type: ledger TransactionType.
CREATE TABLE ledger_transactions (
    transaction_id  uuid PRIMARY KEY,
    invoice_id      uuid NOT NULL REFERENCES invoices (invoice_id),
    type            smallint NOT NULL,
    red_letter_invoice_id uuid REFERENCES invoices (invoice_id),
    amount_fen      bigint NOT NULL DEFAULT 0,
    status          smallint NOT NULL DEFAULT 0,
    rejection_reason text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Red-letter requests by idempotency key (merchant RPC: the client's key; refunds: "refund:<refund id>").
CREATE TABLE red_letter_requests (
    merchant_id     text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash    bytea NOT NULL,
    red_letter_invoice_id uuid NOT NULL REFERENCES invoices (invoice_id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, idempotency_key)
);
