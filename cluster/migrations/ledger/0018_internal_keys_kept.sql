-- Keys the gateway makes up (the merchant sent none) now keep their stored reply for a few
-- minutes, for the gateway's own retry of a call whose answer it lost: deleting them at finish let
-- that retry make a second payment. They are marked, since a merchant's own key may look like one,
-- and this index finds the expired ones for the purge without walking the merchants' keys (kept
-- for 24 hours).
ALTER TABLE idempotency_keys ADD COLUMN internal boolean NOT NULL DEFAULT false;
CREATE INDEX idempotency_keys_internal_created ON idempotency_keys (created_at) WHERE internal;
