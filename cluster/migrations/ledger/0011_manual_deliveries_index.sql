-- The delivery claim's second branch (deliveries re-sent by hand) walked webhook_deliveries_due, an
-- index over every pending delivery, and checked `manual` row by row: about 10,000 rows per claim,
-- most of a claim's time, under a few seconds of backlog. Re-sends get their own small index.
-- Nothing else read the old one, and with no index on next_attempt_at left, a lease (which moves
-- only next_attempt_at) can be a HOT update: no index entries written, if the page has room.
CREATE INDEX webhook_deliveries_manual_pending ON webhook_deliveries (event_seq)
    WHERE status = 'pending' AND manual;
DROP INDEX webhook_deliveries_due;
ALTER TABLE webhook_deliveries SET (fillfactor = 80);
