-- 0016 and 0017 for the last hot table left at the default statistics target. Every checkout
-- writes an idempotency key (the gateway makes one up when the merchant sent none), so the table
-- grows as fast as payment_orders and is analysed every autovacuum round: in a 60 s bench run at
-- 500 payments/s its analyze was the largest item of each round, 0.05-0.10 s of CPU and growing.
-- On 65,000 keys (104 MB), ANALYZE idempotency_keys 143-157 -> 13-20 ms at target 10 with no
-- statistics on the stored reply (a blob read back whole, as in 0015); the plans of the lookup by
-- (merchant, key) and of the two purges by created_at were the same before and after. A column
-- added later gets the default: give it 10 too, or the sample grows back.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT a.attname
          FROM pg_attribute a
         WHERE a.attrelid = 'idempotency_keys'::regclass
           AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> 'response_body'
    LOOP
        EXECUTE format('ALTER TABLE idempotency_keys ALTER COLUMN %I SET STATISTICS 10', col.attname);
    END LOOP;
END
$$;
ALTER TABLE idempotency_keys ALTER COLUMN response_body SET STATISTICS 0;
