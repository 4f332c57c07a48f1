-- Webhook endpoints, and one delivery per (event, endpoint) with every attempt recorded.

-- An outbox row is the durable record of its event until every matching delivery is recorded
-- (dispatched_at); until then the relay publishes it again, so a broker that loses data loses nothing.
ALTER TABLE outbox_events ADD COLUMN dispatched_at timestamptz;
ALTER TABLE outbox_events ADD COLUMN publish_count integer NOT NULL DEFAULT 0;
CREATE INDEX outbox_events_undispatched ON outbox_events (published_at) WHERE dispatched_at IS NULL;
CREATE INDEX outbox_events_type ON outbox_events (merchant_id, type, created DESC);

CREATE TABLE webhook_endpoints (
    id              text PRIMARY KEY,
    merchant_id     text NOT NULL REFERENCES merchants(id),
    url             text NOT NULL,
    enabled_events  text[] NOT NULL,
    description     text,
    secret          text NOT NULL,
    status          text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    metadata        jsonb NOT NULL DEFAULT '{}',
    created         bigint NOT NULL,
    deleted_at      timestamptz,
    failing_since   timestamptz
);
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints (merchant_id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    event_id         text NOT NULL,
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints(id),
    merchant_id      text NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    first_failed_at  timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    manual           boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (event_id, endpoint_id) WHERE NOT manual;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      bigint NOT NULL REFERENCES webhook_deliveries(id),
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    status_code      integer,
    latency_ms       integer NOT NULL,
    error            text,
    response_prefix  text
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);

-- Creation order of events, for publishing and delivering one payment's events in order.
ALTER TABLE outbox_events ADD COLUMN seq bigserial;
CREATE INDEX outbox_events_seq_unpublished ON outbox_events (seq) WHERE published_at IS NULL;
ALTER TABLE webhook_deliveries ADD COLUMN ordering_key text NOT NULL DEFAULT '';
ALTER TABLE webhook_deliveries ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, ordering_key, event_seq)
    WHERE status = 'pending';
