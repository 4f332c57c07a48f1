-- The dispatcher delivers new events straight from the batch it consumed, unless an earlier
-- delivery of the same payment to the same endpoint is still pending (then the claim's queue-head
-- order decides). This index answers that check for the payments in one consumed batch.
CREATE INDEX webhook_deliveries_key_pending ON webhook_deliveries (ordering_key)
    WHERE status = 'pending' AND NOT manual;
