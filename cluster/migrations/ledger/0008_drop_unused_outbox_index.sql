-- Replaced by outbox_events_seq_unpublished (the relay claims in seq order); every insert and
-- every publish was still maintaining it.
DROP INDEX outbox_events_unpublished;
