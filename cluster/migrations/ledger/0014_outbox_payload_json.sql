-- Event payloads are written once and only ever read back whole (by the relay, the delivery claim
-- and the events API, as text or decoded by the client): nothing queries inside them. `jsonb`
-- made PostgreSQL parse each payload into its binary form on insert and print it back on every
-- read; `json` keeps the text as written, checked once on insert. It also keeps the key order
-- paygate renders (`id`, `object` first, as Stripe's events have it) and the compact form.
ALTER TABLE outbox_events ALTER COLUMN payload TYPE json USING payload::json;
