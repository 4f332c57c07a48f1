-- The queue-like tables are updated two or three times per row within seconds of the insert
-- (outbox: published, dispatched; deliveries: leased, delivered; payments: confirm, capture), and
-- their hot queries walk partial indexes over "not done yet" rows. Left to the default (vacuum at
-- 20% dead rows), those indexes fill with dead entries under load and every claim scans them.
ALTER TABLE outbox_events SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 2000);
ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 2000);
ALTER TABLE payment_orders SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 2000);
ALTER TABLE idempotency_keys SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 2000);
