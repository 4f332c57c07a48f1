-- Refunds: each goes to the bank as its own 0200 (processing code 20) pointing at the capture.
CREATE TABLE refunds (
    id              text PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants(id),
    payment_id      text NOT NULL REFERENCES payment_orders(id),
    charge_id       text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason          text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    failure_reason  text,
    stan            text NOT NULL,
    rrn             text NOT NULL UNIQUE,
    created         bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_merchant_created ON refunds (merchant_id, created DESC, id DESC);
CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE INDEX refunds_pending ON refunds (updated_at) WHERE status = 'pending';
