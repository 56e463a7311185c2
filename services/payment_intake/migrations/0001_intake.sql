-- payment_intake: merchant registry, payments and refunds recorded exactly once, webhook nonces.

-- merchant_id is the payment platform's merchant number (WeChat Pay "mchid").
CREATE TABLE merchants (
    merchant_id                     text PRIMARY KEY,
    legal_name                      text NOT NULL,
    tax_id                          text NOT NULL CHECK (length(tax_id) = 18),
    region_code                     text NOT NULL CHECK (region_code ~ '^[0-9]{2}$'),
    -- AES-256-GCM(FAPIAO_SECRETS_KEY, apiv3 key, aad = merchant id): 12-byte nonce || ciphertext || tag.
    apiv3_key_sealed                bytea NOT NULL,
    default_tax_classification_code text NOT NULL,
    default_item_name               text NOT NULL,
    default_tax_rate_bp             int NOT NULL CHECK (default_tax_rate_bp BETWEEN 0 AND 10000),
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now()
);

-- The payment platform's signing keys this merchant trusts, by certificate serial (several during rotation).
CREATE TABLE platform_keys (
    merchant_id    text NOT NULL REFERENCES merchants (merchant_id),
    serial         text NOT NULL,
    public_key_pem text NOT NULL,
    added_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, serial)
);
CREATE INDEX platform_keys_by_serial ON platform_keys (serial);

CREATE TABLE payments (
    payment_id      uuid PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants (merchant_id),
    transaction_id  text NOT NULL,
    out_trade_no    text NOT NULL,
    amount_fen      bigint NOT NULL CHECK (amount_fen > 0 AND amount_fen <= 10000000000),
    payer_total_fen bigint NOT NULL CHECK (payer_total_fen >= 0 AND payer_total_fen <= amount_fen),
    currency        text NOT NULL,
    success_time    timestamptz NOT NULL,
    payer_ref       text NOT NULL,
    appid           text NOT NULL,
    trade_type      text NOT NULL,
    -- Serialized fapiao.payments.v1.Payment holding only `items`.
    items           bytea NOT NULL,
    source          smallint NOT NULL,
    -- SHA-256 of the notification's business content: a retry must match it exactly.
    fingerprint     bytea NOT NULL,
    refunded_fen    bigint NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0 AND refunded_fen <= amount_fen),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- Idempotency is decided by these constraints (INSERT .. ON CONFLICT), never by read-then-write.
    CONSTRAINT payments_transaction_once UNIQUE (merchant_id, transaction_id),
    CONSTRAINT payments_order_once UNIQUE (merchant_id, out_trade_no)
);

CREATE TABLE refunds (
    merchant_id    text NOT NULL,
    refund_id      text NOT NULL,
    payment_id     uuid NOT NULL REFERENCES payments (payment_id),
    transaction_id text NOT NULL,
    refund_fen     bigint NOT NULL CHECK (refund_fen > 0),
    refund_time    timestamptz NOT NULL,
    reason         text NOT NULL,
    fingerprint    bytea NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, refund_id)
);
CREATE INDEX refunds_by_payment ON refunds (payment_id);

-- Webhook nonces seen within the replay window; inserted in the same transaction as the payment,
-- so a replay is refused across replicas and a rejected request leaves no nonce behind.
CREATE TABLE webhook_nonces (
    merchant_id text NOT NULL,
    nonce       text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, nonce)
);
CREATE INDEX webhook_nonces_by_age ON webhook_nonces (seen_at);
