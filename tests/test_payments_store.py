"""actors/payments/store.py against the real ledger: a transition and everything that rides along
with it (earlier event, ledger group, the idempotency key's stored reply) are one statement — all
written together, or, when the row's version has moved on, none of it."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from actors.batching import RowBatcher
from actors.payments import store
from actors.payments.messages import Idempotency, Reply
from cluster.db import create_pool
from cluster.stack import StackInfo
from tests.bank import ledger
from tests.conftest import Merchant


def _new_payment(api: httpx.Client) -> str:
    response = api.post("/v1/payment_intents", data={"amount": "1500", "currency": "usd",
                                                      "payment_method": "pm_card_visa"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "requires_confirmation"
    return str(response.json()["id"])


async def _prepare_cancel(pool: asyncpg.Pool, merchant: Merchant, payment_id: str,
                          version_lag: int) -> tuple[str, dict[str, Any], store.Along]:
    """A key to finish and a row `version_lag` versions old, for `_cancel_with`."""
    key = f"probe-{uuid.uuid4().hex[:8]}"
    idem = Idempotency(key, "hash", "POST", f"/v1/payment_intents/{payment_id}/cancel")
    await pool.execute("INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, "
                       "request_hash, locked_at) VALUES ($1, $2, 'POST', 'probe', 'hash', now())", merchant.id, key)
    row = dict(await pool.fetchrow("SELECT * FROM payment_orders WHERE id = $1", payment_id))
    row["version"] -= version_lag
    along = store.Along(earlier=store.PaymentEvent("probe.earlier", row["status"], row["status"], {"n": 1}),
                        ledger=[("probe_a", 700), ("probe_b", -700)], ledger_description="probe",
                        finish=(idem, Reply(200, b'{"probe":true}')), recovery=replace(idem, key=f"{key}-recovery"))
    return key, row, along


async def _cancel_with(writer: store.Writer, row: dict[str, Any], along: store.Along) -> Any:
    """Cancel through `store.transition` with a ledger group, an earlier event, a key to finish
    and another's recovery point. Returns what the call returned or raised."""
    try:
        return await store.transition(writer, row, "cancel", {"cancellation_reason": "abandoned"},  # type: ignore[arg-type]
                                      events=["payment_intent.canceled"], along=along)
    except store.VersionConflict as conflict:
        return conflict


def _cancel(stack_info: StackInfo, merchant: Merchant, payment_id: str, version_lag: int) -> tuple[str, Any]:
    async def run() -> tuple[str, Any]:
        pool = await create_pool(stack_info.ledger_dsn, min_size=1, max_size=1)
        try:
            key, row, along = await _prepare_cancel(pool, merchant, payment_id, version_lag)
            return key, await _cancel_with(pool, row, along)
        finally:
            await pool.close()

    return asyncio.run(run())


def _written(stack_info: StackInfo, merchant: Merchant, payment_id: str, key: str) -> dict[str, Any]:
    [payment] = ledger(stack_info, "SELECT status, version FROM payment_orders WHERE id = $1", payment_id)
    [stored] = ledger(stack_info, "SELECT response_code, response_body FROM idempotency_keys "
                                  "WHERE merchant_id = $1 AND key = $2", merchant.id, key)
    return {
        "status": payment["status"],
        "history": [r["type"] for r in ledger(stack_info, "SELECT type FROM payment_events WHERE payment_id = $1 "
                                                          "ORDER BY id", payment_id)],
        "ledger": [(r["account"], r["amount"]) for r in ledger(
            stack_info, "SELECT account, amount FROM ledger_entries WHERE payment_id = $1 ORDER BY id", payment_id)],
        "outbox": [r["type"] for r in ledger(stack_info, "SELECT type FROM outbox_events WHERE object_id = $1 "
                                                         "ORDER BY seq", payment_id)],
        "reply": (stored["response_code"], stored["response_body"]),
        "recovery": [r["recovery_point"] for r in ledger(
            stack_info, "SELECT recovery_point FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
            merchant.id, f"{key}-recovery")],
    }


def test_everything_along_is_written_with_the_transition(api: httpx.Client, merchant: Merchant,
                                                         stack_info: StackInfo) -> None:
    payment_id = _new_payment(api)
    key, result = _cancel(stack_info, merchant, payment_id, version_lag=0)
    assert isinstance(result, asyncpg.Record) and result["status"] == "canceled"
    written = _written(stack_info, merchant, payment_id, key)
    assert written["status"] == "canceled"
    # The earlier event lands before the transition's own, in one statement.
    assert written["history"] == ["payment_intent.created", "probe.earlier", "payment_intent.cancel"]
    assert written["ledger"] == [("probe_a", 700), ("probe_b", -700)]
    assert written["outbox"] == ["payment_intent.created", "payment_intent.canceled"]
    assert written["reply"] == (200, b'{"probe":true}')
    assert written["recovery"] == [payment_id]  # another key's recovery point, upserted with it


def test_a_stale_row_writes_nothing_at_all(api: httpx.Client, merchant: Merchant, stack_info: StackInfo) -> None:
    payment_id = _new_payment(api)
    before = ledger(stack_info, "SELECT version FROM payment_orders WHERE id = $1", payment_id)
    key, result = _cancel(stack_info, merchant, payment_id, version_lag=1)
    assert isinstance(result, store.VersionConflict)
    written = _written(stack_info, merchant, payment_id, key)
    assert written["status"] == "requires_confirmation"
    assert ledger(stack_info, "SELECT version FROM payment_orders WHERE id = $1", payment_id) == before
    assert written["history"] == ["payment_intent.created"]
    assert written["ledger"] == [] and written["outbox"] == ["payment_intent.created"]
    assert written["reply"] == (None, None)  # the key is not finished with a reply that never happened
    assert written["recovery"] == []  # nor does a recovery point name a move that never happened


def test_transitions_merged_in_one_batch_each_write_their_own_and_a_stale_one_nothing(
        api: httpx.Client, merchant: Merchant, stack_info: StackInfo) -> None:
    """The shard's RowBatcher merges transitions of one shape into one statement: each payment
    gets exactly what it would have got alone, in its own order, and a stale row in the batch
    writes nothing while the others go through."""
    payment_ids = [_new_payment(api) for _ in range(5)]
    stale = payment_ids[2]

    async def run() -> list[tuple[str, Any]]:
        pool = await create_pool(stack_info.ledger_dsn, min_size=2, max_size=4)
        try:
            prepared = [await _prepare_cancel(pool, merchant, p, version_lag=int(p == stale)) for p in payment_ids]
            rows = RowBatcher(pool)
            results = await asyncio.gather(*[_cancel_with(rows, row, along) for _, row, along in prepared])
            return [(key, result) for (key, _, _), result in zip(prepared, results, strict=True)]
        finally:
            await pool.close()

    outcomes = dict(zip(payment_ids, asyncio.run(run()), strict=True))
    assert isinstance(outcomes[stale][1], store.VersionConflict)
    for payment_id, (key, result) in outcomes.items():
        written = _written(stack_info, merchant, payment_id, key)
        if payment_id == stale:
            assert written["status"] == "requires_confirmation" and written["ledger"] == []
            assert written["reply"] == (None, None) and written["recovery"] == []
            continue
        assert isinstance(result, asyncpg.Record) and result["id"] == payment_id
        assert written["history"] == ["payment_intent.created", "probe.earlier", "payment_intent.cancel"]
        assert written["ledger"] == [("probe_a", 700), ("probe_b", -700)]
        assert written["outbox"] == ["payment_intent.created", "payment_intent.canceled"]
        assert written["reply"] == (200, b'{"probe":true}') and written["recovery"] == [payment_id]
    moved = ledger(stack_info, "SELECT DISTINCT xmin::text AS xid FROM payment_events "
                               "WHERE payment_id = ANY($1) AND type = 'payment_intent.cancel'", payment_ids)
    assert len(moved) == 1  # the four went together


def test_the_column_types_are_the_ledgers(stack_info: StackInfo) -> None:
    """A column of many rows is passed as an array of the column's type: the map must be the schema's."""
    columns = ledger(stack_info, "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
                                 "WHERE attrelid = 'payment_orders'::regclass AND attnum > 0 AND NOT attisdropped")
    assert {c["attname"]: c["type"] for c in columns} == store.COLUMN_TYPES


def test_an_unbalanced_ledger_group_is_refused_before_anything_is_sent() -> None:
    row = {"id": "pi_probe", "status": "requires_confirmation", "version": 1, "merchant_id": "m", "currency": "usd"}
    with pytest.raises(ValueError, match="unbalanced"):
        asyncio.run(store.transition(None, row, "cancel", {},  # type: ignore[arg-type]
                                     along=store.Along(ledger=[("a", 5), ("b", -4)])))
