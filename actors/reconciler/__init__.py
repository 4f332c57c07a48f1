"""Reconciliation against the acquirer's daily settlement files.

- `fileformat`: read and verify a settlement file (format in `banksim/settlement.py`).
- `classify`: match records to ledger transactions by (type, RRN) and classify; run totals.
- `ledger`: what the ledger booked, other days' runs, and unknown outcomes settled from the file.
- `store`: runs and their items (migration `0006_reconciliation.sql`).
- `engine`: one reconciliation in one transaction; `report`: CSV/JSON/rich reports.
- `actor`: the `Reconciler` Ray actor with its daily schedule (`schedule`); `cli`: `paygate reconcile`.
"""
