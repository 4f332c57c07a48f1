-- Reconciliation against the bank's daily settlement files (actors/reconciler).

-- A capture is its own bank message with its own RRN: keep it (and when it was booked) on the
-- payment, so a settlement record can be matched to the payment by acquirer reference.
ALTER TABLE payment_orders ADD COLUMN capture_rrn text, ADD COLUMN captured_at timestamptz;

-- The capture's RRN is the payment's pending_rrn (its recovery point) until the capture is booked,
-- and the booking clears it. Keep it at that moment, whichever code path books the capture: the
-- trigger fires when amount_received goes from 0 to the captured amount. A value the writer sets
-- itself wins (the reconciler sets the bank's own transaction time).
CREATE FUNCTION payment_orders_keep_capture_rrn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.capture_rrn := coalesce(NEW.capture_rrn, OLD.pending_rrn);
    NEW.captured_at := coalesce(NEW.captured_at, now());
    RETURN NEW;
END
$$;
CREATE TRIGGER payment_orders_capture_rrn BEFORE UPDATE OF amount_received ON payment_orders
    FOR EACH ROW WHEN (OLD.amount_received = 0 AND NEW.amount_received > 0)
    EXECUTE FUNCTION payment_orders_keep_capture_rrn();

-- Payments captured before this migration: the capture's RRN is field 37 of the bank's answer,
-- kept in the `payment_intent.captured` event.
UPDATE payment_orders p
   SET capture_rrn = e.data->>'37', captured_at = e.created_at
  FROM (SELECT DISTINCT ON (payment_id) payment_id, data, created_at
          FROM payment_events WHERE type = 'payment_intent.captured'
         ORDER BY payment_id, id DESC) e
 WHERE e.payment_id = p.id AND p.amount_received > 0 AND p.capture_rrn IS NULL;

CREATE UNIQUE INDEX payment_orders_capture_rrn ON payment_orders (capture_rrn) WHERE capture_rrn IS NOT NULL;
CREATE INDEX payment_orders_captured_at ON payment_orders (captured_at) WHERE captured_at IS NOT NULL;
CREATE INDEX refunds_succeeded_at ON refunds (updated_at) WHERE status = 'succeeded';

-- One run per (business date, scope); a rerun replaces it in place (same id, attempts + 1).
-- scope is 'all' or 'merchants:<digest of the sorted merchant ids>' (then `merchants` lists them).
CREATE TABLE reconciliation_runs (
    id              text PRIMARY KEY,
    business_date   date NOT NULL,
    scope           text NOT NULL,
    merchants       text[],
    status          text NOT NULL CHECK (status IN ('balanced', 'discrepancies')),
    file_name       text NOT NULL,
    file_sha256     text NOT NULL,
    bank_id         text NOT NULL,
    file_cutoff     timestamptz NOT NULL,
    file_records    integer NOT NULL,       -- every record in the file
    records         integer NOT NULL,       -- the records in scope
    counts          jsonb NOT NULL,         -- classification -> count
    totals          jsonb NOT NULL,         -- currency -> settlement / ledger / difference
    discrepancies   integer NOT NULL,
    resolved        integer NOT NULL DEFAULT 0,  -- unknown outcomes settled from this file (all attempts)
    attempts        integer NOT NULL DEFAULT 1,
    duration_ms     integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (business_date, scope)
);
CREATE INDEX reconciliation_runs_listing ON reconciliation_runs (business_date DESC, id DESC);

-- Every line of the comparison: a file record, a ledger transaction, or both (matched).
CREATE TABLE reconciliation_items (
    run_id               text NOT NULL REFERENCES reconciliation_runs(id) ON DELETE CASCADE,
    seq                  integer NOT NULL,
    classification       text NOT NULL CHECK (classification IN ('matched', 'missing_in_ledger',
                             'missing_in_settlement', 'amount_mismatch', 'currency_mismatch', 'duplicate', 'timing')),
    kind                 text NOT NULL CHECK (kind IN ('capture', 'refund')),
    rrn                  text NOT NULL,
    line                 integer,           -- line in the settlement file; NULL: ledger only
    merchant_id          text,
    object_id            text,              -- pi_… (capture) or re_… (refund); NULL: not in the ledger
    settlement_amount    bigint,
    settlement_currency  text,
    ledger_amount        bigint,
    ledger_currency      text,
    transaction_at       timestamptz,       -- the bank's timestamp
    ledger_at            timestamptz,       -- when the ledger booked it
    note                 text,
    resolution           text,              -- e.g. settled_late: a later file carried it
    resolved_by_run      text,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX reconciliation_items_rrn ON reconciliation_items (rrn);
CREATE INDEX reconciliation_items_open ON reconciliation_items (run_id, seq) WHERE classification <> 'matched';

-- Unknown outcomes settled from a settlement file: append-only, kept across reruns.
CREATE TABLE reconciliation_resolutions (
    id             bigserial PRIMARY KEY,
    run_id         text NOT NULL REFERENCES reconciliation_runs(id) ON DELETE CASCADE,
    business_date  date NOT NULL,
    kind           text NOT NULL,
    rrn            text NOT NULL,
    object_id      text NOT NULL,
    action         text NOT NULL,
    detail         jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconciliation_resolutions_run ON reconciliation_resolutions (run_id, id);
