-- 0002 undone. With its floors the vault's PostgreSQL took more CPU per payment, not less: in four
-- alternating 60 s pairs at rate 500, 0.26/0.39, 0.26/0.44, 0.25/0.41 and 0.26/0.32 ms, and at rate
-- 1,000 0.045/0.076 (the ledger's 0020, measured in the same runs, stays). Back to the defaults.
ALTER TABLE cards RESET (autovacuum_analyze_threshold, autovacuum_vacuum_insert_threshold);
ALTER TABLE vault_access_audit RESET (autovacuum_analyze_threshold, autovacuum_vacuum_insert_threshold);
