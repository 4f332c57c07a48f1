-- As the ledger's 0020: a young vault grows by more than 10-20% of its tables between two
-- autovacuum looks (10 s), so each look analysed and vacuumed both; a fixed floor of rows spaces
-- that out and leaves a mature vault as it was.
ALTER TABLE cards SET (autovacuum_analyze_threshold = 50000, autovacuum_vacuum_insert_threshold = 100000);
ALTER TABLE vault_access_audit SET (autovacuum_analyze_threshold = 100000, autovacuum_vacuum_insert_threshold = 100000);
