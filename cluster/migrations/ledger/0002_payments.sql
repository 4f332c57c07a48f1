-- PaymentIntents and everything that must commit with their state changes.

-- One sequence numbers every message sent to the acquirer: STAN = last 6 digits, RRN = 12 digits.
CREATE SEQUENCE acquirer_message_seq;

CREATE TABLE payment_orders (
    id                    text PRIMARY KEY,
    merchant_id           text NOT NULL REFERENCES merchants(id),
    amount                bigint NOT NULL CHECK (amount > 0),
    currency              text NOT NULL,
    status                text NOT NULL,
    capture_method        text NOT NULL,
    payment_method        text,
    description           text,
    statement_descriptor  text,
    metadata              jsonb NOT NULL DEFAULT '{}',
    amount_capturable     bigint NOT NULL DEFAULT 0,
    amount_received       bigint NOT NULL DEFAULT 0,
    amount_refunded       bigint NOT NULL DEFAULT 0,
    last_payment_error    jsonb,
    latest_charge         text,
    charge                jsonb,            -- the Charge's card details and outcome (no PAN)
    canceled_at           bigint,
    cancellation_reason   text,
    client_secret         text NOT NULL,
    created               bigint NOT NULL,
    -- the acquirer call in flight or done: the recovery point for `processing`
    bank_phase            text,             -- authorizing | capturing | reversing, while processing
    auth_stan             text,
    auth_rrn              text,
    auth_transmitted_at   text,
    auth_code             text,
    pending_stan          text,
    pending_rrn           text,
    pending_amount        bigint,
    processing_since      timestamptz,
    version               integer NOT NULL DEFAULT 0,
    CHECK (amount_refunded <= amount_received),
    CHECK (amount_received <= amount)
);
CREATE INDEX payment_orders_merchant_created ON payment_orders (merchant_id, created DESC, id DESC);
CREATE INDEX payment_orders_processing ON payment_orders (processing_since) WHERE status = 'processing';
CREATE UNIQUE INDEX payment_orders_auth_rrn ON payment_orders (auth_rrn) WHERE auth_rrn IS NOT NULL;

-- Append-only audit of every transition, with the bank's raw answer (PAN masked).
CREATE TABLE payment_events (
    id           bigserial PRIMARY KEY,
    payment_id   text NOT NULL,
    merchant_id  text NOT NULL,
    type         text NOT NULL,
    from_status  text,
    to_status    text NOT NULL,
    data         jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_events_payment ON payment_events (payment_id, id);
CREATE RULE payment_events_no_update AS ON UPDATE TO payment_events DO INSTEAD NOTHING;
CREATE RULE payment_events_no_delete AS ON DELETE TO payment_events DO INSTEAD NOTHING;

-- Double-entry: every movement is a group of rows that sums to zero per currency.
CREATE TABLE ledger_entries (
    id           bigserial PRIMARY KEY,
    entry_group  text NOT NULL,
    merchant_id  text NOT NULL,
    payment_id   text NOT NULL,
    account      text NOT NULL,
    amount       bigint NOT NULL,
    currency     text NOT NULL,
    description  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_payment ON ledger_entries (payment_id);

-- The first response to each (merchant, Idempotency-Key), replayed byte-identical.
CREATE TABLE idempotency_keys (
    merchant_id     text NOT NULL,
    key             text NOT NULL,
    request_method  text NOT NULL,
    request_path    text NOT NULL,
    request_hash    text NOT NULL,
    recovery_point  text,            -- the object the first attempt created, to resume from
    locked_at       timestamptz,
    response_code   integer,
    response_body   bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Events for merchants, written in the same transaction as the change they describe.
CREATE TABLE outbox_events (
    id            text PRIMARY KEY,
    merchant_id   text NOT NULL,
    type          text NOT NULL,
    object_id     text NOT NULL,
    payload       jsonb NOT NULL,
    created       bigint NOT NULL,
    published_at  timestamptz
);
CREATE INDEX outbox_events_unpublished ON outbox_events (created, id) WHERE published_at IS NULL;
CREATE INDEX outbox_events_merchant ON outbox_events (merchant_id, created DESC, id DESC);
