-- Queue heads are now found in each endpoint's window (webhook_deliveries_endpoint_pending, 0009);
-- nothing reads this index any more, and every delivery insert and update was maintaining it.
DROP INDEX webhook_deliveries_order;
