-- The dispatcher looks for queue heads among each endpoint's oldest pending deliveries.
CREATE INDEX webhook_deliveries_endpoint_pending ON webhook_deliveries (endpoint_id, event_seq)
    WHERE status = 'pending' AND NOT manual;
