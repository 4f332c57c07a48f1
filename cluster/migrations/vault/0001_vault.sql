-- The card vault. The PAN is stored only as AES-256-GCM ciphertext under a per-card data key, which
-- is itself stored wrapped by a versioned key-encrypting key (kept outside the database). The CVC is
-- never stored: it lives only in the CardVault actor's memory until the first authorization.

CREATE TABLE cards (
    token                     text PRIMARY KEY CHECK (token LIKE 'pm\_%'),
    merchant_id               text NOT NULL,
    brand                     text NOT NULL CHECK (brand IN ('visa', 'mastercard', 'amex', 'discover')),
    last4                     char(4) NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month                 smallint NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year                  smallint NOT NULL CHECK (exp_year BETWEEN 2000 AND 2200),
    funding                   text NOT NULL DEFAULT 'unknown'
                              CHECK (funding IN ('credit', 'debit', 'prepaid', 'unknown')),
    country                   char(2),
    fingerprint               text NOT NULL,
    ciphertext                bytea NOT NULL,
    nonce                     bytea NOT NULL CHECK (octet_length(nonce) = 12),
    wrapped_key               bytea NOT NULL,
    wrap_nonce                bytea NOT NULL CHECK (octet_length(wrap_nonce) = 12),
    kek_version               integer NOT NULL CHECK (kek_version > 0),
    -- Results of verification checks, Stripe's values: NULL (not provided), unchecked, pass, fail, unavailable.
    cvc_check                 text CHECK (cvc_check IN ('unchecked', 'pass', 'fail', 'unavailable')),
    address_line1_check       text CHECK (address_line1_check IN ('unchecked', 'pass', 'fail', 'unavailable')),
    address_postal_code_check text CHECK (address_postal_code_check IN ('unchecked', 'pass', 'fail', 'unavailable')),
    billing_details           jsonb NOT NULL DEFAULT '{}'::jsonb,
    metadata                  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created                   timestamptz NOT NULL DEFAULT now()
);

-- "Has this merchant seen this card before?" (dedupe, velocity checks) without decrypting anything.
CREATE INDEX cards_merchant_fingerprint ON cards (merchant_id, fingerprint);
-- The re-wrap after a KEK rotation scans the rows still under an old version.
CREATE INDEX cards_kek_version ON cards (kek_version);

-- Stripe's test PaymentMethod ids (pm_card_visa, ...) resolve to one real card per merchant, made on
-- first use, so every merchant's objects stay its own and the same alias always gives the same pm_.
CREATE TABLE test_payment_methods (
    merchant_id text NOT NULL,
    alias       text NOT NULL,
    token       text NOT NULL REFERENCES cards (token),
    PRIMARY KEY (merchant_id, alias)
);

-- Every detokenization (who, which token, why, when), including attempts on unknown tokens.
-- No foreign key: a probe for a token that does not exist must be recorded too.
CREATE TABLE vault_access_audit (
    id      bigserial PRIMARY KEY,
    token   text NOT NULL,
    caller  text NOT NULL,
    purpose text NOT NULL,
    outcome text NOT NULL DEFAULT 'ok' CHECK (outcome IN ('ok', 'not_found')),
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vault_access_audit_token_at ON vault_access_audit (token, at);
