-- 0016 for the two hot tables it left at the default, payment_orders and webhook_deliveries. After
-- 0016, autoanalyze took 9.7 s of wall time in a 60 s bench run at 400 payments/s (5 s warm-up),
-- 7.5 s of it on these two (webhook_deliveries 4.3 s, payment_orders 3.2 s, seven rounds each).
-- On 21,000 payments and 84,000 deliveries, ANALYZE webhook_deliveries 127 -> 20 ms and
-- payment_orders 140 -> 33 ms at target 10. The plans of the delivery claim, the dispatcher's
-- earlier-delivery check, its release and success updates, the payment lookups (by id, auth RRN,
-- capture RRN), the stuck-payment sweep, the reconciliation queries and the list by merchant (and
-- created) were the same before and after, on that database and on a copy with a third of the
-- deliveries pending and a fifth of the payments processing. Columns without statistics (0015)
-- stay so; a column added later gets the default: give it 10 too, or the sample grows back.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.relname, a.attname
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = 'public'::regnamespace
           AND c.relname IN ('payment_orders', 'webhook_deliveries')
           AND a.attnum > 0 AND NOT a.attisdropped AND a.attstattarget IS DISTINCT FROM 0
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I SET STATISTICS 10', col.relname, col.attname);
    END LOOP;
END
$$;
