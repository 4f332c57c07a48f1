-- Fraud and risk: merchants' rules, the scored attempts the velocity windows are rebuilt from,
-- and the reviews opened by `manual_review` outcomes.

-- One row per merchant that changed its rules (the others use the defaults).
CREATE TABLE risk_rules (
    merchant_id  text PRIMARY KEY REFERENCES merchants(id),
    rules        jsonb NOT NULL,
    updated      bigint NOT NULL
);

-- Every scored confirmation attempt, written behind the FraudScorer in batches (at most about
-- 100 ms late). A restarted scorer replays the last 24 hours into its windows. Rows older than
-- 25 hours are purged. No card number: the vault's keyed fingerprint only.
CREATE TABLE risk_attempts (
    attempt_id   text PRIMARY KEY,                 -- payment id + ':' + authorization RRN
    merchant_id  text NOT NULL,
    payment_id   text NOT NULL,
    at           timestamptz NOT NULL,
    fingerprint  text,
    card_exempt  boolean NOT NULL DEFAULT false,   -- a Stripe test card: no per-card velocity
    ip_address   text,
    email        text,
    device_id    text,
    ip_country   text,
    card_country text,
    amount       bigint NOT NULL,
    currency     text NOT NULL,
    risk_score   smallint NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('authorized', 'manual_review', 'blocked')),
    result       text NOT NULL CHECK (result IN ('pending', 'blocked', 'approved', 'declined', 'failed')),
    rules        text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX risk_attempts_at ON risk_attempts (at);
CREATE INDEX risk_attempts_payment ON risk_attempts (payment_id);

-- Reviews (Stripe's `prv_…`): opened in the same transaction as the approval they flag.
CREATE TABLE risk_reviews (
    id              text PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants(id),
    payment_id      text NOT NULL REFERENCES payment_orders(id),
    charge_id       text,
    open            boolean NOT NULL DEFAULT true,
    opened_reason   text NOT NULL,
    reason          text NOT NULL,
    risk_score      smallint NOT NULL,
    rules           jsonb NOT NULL DEFAULT '[]',
    created         bigint NOT NULL
);
CREATE INDEX risk_reviews_merchant ON risk_reviews (merchant_id, created DESC, id DESC);
CREATE INDEX risk_reviews_payment ON risk_reviews (payment_id);
