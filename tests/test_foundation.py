"""The foundation against the real stack: readiness per part, auth, limits, OpenAPI, migrations."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from cluster.migrate import apply_migrations
from cluster.stack import LocalStack, StackInfo
from tests.bank import ledger, vault
from tests.conftest import Merchant


def test_healthz(base_url: str) -> None:
    response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["request-id"].startswith("req_")


def test_readyz_reports_every_part(base_url: str) -> None:
    response = httpx.get(f"{base_url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    parts = response.json()["parts"]
    assert set(parts) >= {"ledger_db", "vault_db", "kafka", "acquirer", "ray_actors"}
    assert all(part["status"] == "ok" for part in parts.values()), parts


def _wait_readyz(base_url: str, status: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{base_url}/readyz", timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return {**response.json(), "http_status": response.status_code}
        time.sleep(0.3)


def test_readyz_names_a_dead_broker(live_stack: LocalStack, base_url: str) -> None:
    assert live_stack.broker is not None
    live_stack.broker.process.kill()  # type: ignore[union-attr]
    try:
        body = _wait_readyz(base_url, 503)
        assert body["http_status"] == 503
        assert body["parts"]["kafka"]["status"] == "down"
        assert body["parts"]["ledger_db"]["status"] == "ok"
    finally:
        live_stack.start_broker_again()
    assert _wait_readyz(base_url, 200)["http_status"] == 200


def test_readyz_names_a_dead_ledger_db(live_stack: LocalStack, base_url: str) -> None:
    assert live_stack.ledger is not None
    live_stack.ledger.stop()
    try:
        body = _wait_readyz(base_url, 503)
        assert body["http_status"] == 503
        assert body["parts"]["ledger_db"]["status"] == "down"
        assert body["parts"]["kafka"]["status"] == "ok"
    finally:
        live_stack.ledger.start()
    assert _wait_readyz(base_url, 200)["http_status"] == 200


def test_missing_and_wrong_keys_are_stripe_shaped_401(base_url: str) -> None:
    missing = httpx.get(f"{base_url}/v1/payment_intents")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    wrong = httpx.get(f"{base_url}/v1/payment_intents", headers={"Authorization": "Bearer sk_test_nope123456789"})
    assert wrong.status_code == 401
    error = wrong.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "api_key_invalid"
    assert "sk_test_nope123456789" not in wrong.text


def test_basic_auth_with_key_as_user(base_url: str, merchant: Merchant) -> None:
    token = base64.b64encode(f"{merchant.key}:".encode()).decode()
    response = httpx.get(f"{base_url}/v1/payment_intents", headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 200, response.text


def test_merchant_key_cannot_reach_admin_endpoints(base_url: str, merchant: Merchant) -> None:
    response = httpx.post(f"{base_url}/v1/admin/merchants", data={"name": "x"},
                          headers={"Authorization": f"Bearer {merchant.key}"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_rate_limit_answers_429_with_retry_after(base_url: str, admin: httpx.Client, merchant: Merchant) -> None:
    set_limit = admin.post(f"/v1/admin/merchants/{merchant.id}/rate_limit", data={"rate": "2", "burst": "5"})
    assert set_limit.status_code == 200, set_limit.text
    with httpx.Client(base_url=base_url, auth=(merchant.key, "")) as client:
        statuses = [client.get("/v1/payment_intents") for _ in range(20)]
    limited = [r for r in statuses if r.status_code == 429]
    assert 10 <= len(limited) <= 16, [r.status_code for r in statuses]
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].json()["error"]["code"] == "rate_limit"


def test_body_over_the_cap_is_413(api: httpx.Client) -> None:
    response = api.post("/v1/payment_intents", content=b"a=" + b"x" * 2_000_000,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_url_is_stripe_shaped_404(api: httpx.Client) -> None:
    response = api.get("/v1/nothing_here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_openapi_describes_every_route(base_url: str) -> None:
    from cluster.config import load_config
    from gateway.app import create_app

    document = httpx.get(f"{base_url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    app = create_app(load_config({}))
    for route in app.routes:
        for method in route.methods - {"HEAD"}:  # type: ignore[attr-defined]
            assert method.lower() in document["paths"].get(route.path, {}), f"{method} {route.path} undocumented"  # type: ignore[attr-defined]


def test_migrations_are_idempotent_and_safe_concurrently(stack_info: StackInfo) -> None:
    async def run() -> None:
        results = await asyncio.gather(*[apply_migrations(stack_info.ledger_dsn, "ledger") for _ in range(4)])
        assert all(applied == [] for applied in results)
        conn = await asyncpg.connect(stack_info.ledger_dsn)
        try:
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in versions] == sorted({r["version"] for r in versions})
        finally:
            await conn.close()

    asyncio.run(run())


def test_api_keys_are_stored_hashed(stack_info: StackInfo, merchant: Merchant) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(stack_info.ledger_dsn)
        try:
            rows = await conn.fetch("SELECT * FROM api_keys WHERE merchant_id = $1", merchant.id)
        finally:
            await conn.close()
        assert rows
        assert all(merchant.key not in str(dict(row)) for row in rows)

    asyncio.run(run())


@pytest.mark.parametrize("name", ["PAYGATE_HTTP_PORT", "PAYGATE_LEDGER_DSN", "PAYGATE_ACQUIRER",
                                  "PAYGATE_SHARD_CONNECTIONS", "PAYGATE_KAFKA_COMPRESSION", "PAYGATE_WEBHOOK_SLOTS"])
def test_bad_config_names_the_variable(name: str) -> None:
    from cluster.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=name):
        load_config({name: "not a valid value"})


def test_webhook_slots_reach_each_dispatcher() -> None:
    from actors.events.dispatcher import WebhookDispatcherActor
    from actors.registry import system_actors
    from cluster.config import load_config

    assert load_config({}).webhook_slots == 1024
    config = load_config({"PAYGATE_WEBHOOK_SLOTS": "64", "PAYGATE_WEBHOOK_DISPATCHERS": "2",
                          "PAYGATE_ACQUIRER": "127.0.0.1:9"})
    dispatchers = [spec for spec in system_actors(config) if spec.actor_class is WebhookDispatcherActor]
    assert [spec.args[-1] for spec in dispatchers] == [64, 64]


def test_kafka_compression_is_zstd_unless_set() -> None:
    from cluster.config import load_config

    assert load_config({}).kafka_compression == "zstd"
    assert load_config({"PAYGATE_KAFKA_COMPRESSION": "LZ4"}).kafka_compression == "lz4"
    assert load_config({"PAYGATE_KAFKA_COMPRESSION": "none"}).kafka_compression is None


def test_a_dsn_may_name_a_unix_socket_directory() -> None:
    from cluster.config import load_config

    dsn = "postgresql://postgres@/paygate?host=/var/run/postgresql&port=5432"
    assert load_config({"PAYGATE_LEDGER_DSN": dsn}).ledger_dsn == dsn


@pytest.mark.parametrize(("method", "path", "params", "param"), [
    ("GET", "/v1/payment_intents/pi_a%00b", {}, "id"),
    ("GET", "/v1/refunds", {"ending_before": "re_\x00"}, "ending_before"),
    ("POST", "/v1/payment_intents", {"amount": "1000", "currency": "usd", "description": "a\x00b"}, "description"),
    ("POST", "/v1/payment_intents", {"amount": "1000", "currency": "usd", "metadata[k]": "\x00"}, "metadata[k]"),
])
def test_nul_characters_are_a_400_naming_the_parameter(api: httpx.Client, method: str, path: str,
                                                      params: dict[str, str], param: str) -> None:
    response = api.get(path, params=params) if method == "GET" else api.post(path, data=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b'{"amount": 1000, "currency": "usd", "description": "a\\u0000b"}'),
    ("application/x-www-form-urlencoded", b"amount=1000&currency=usd&description=a\x00b"),  # unescaped
])
def test_a_nul_in_a_json_or_raw_form_body_is_a_400(api: httpx.Client, content_type: str, body: bytes) -> None:
    response = api.post("/v1/payment_intents", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "description"


def test_a_key_of_unicode_digits_is_a_400_not_a_500(api: httpx.Client) -> None:
    response = api.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "x[1²]": "a"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "parameter_unknown"


def test_analyze_skips_the_json_blobs_nothing_filters_on(stack_info: StackInfo, api: httpx.Client) -> None:
    paid = api.post("/v1/payment_intents", data={"amount": 1500, "currency": "usd", "payment_method": "pm_card_visa",
                                                 "confirm": "true", "metadata[order]": "42"})
    assert paid.status_code == 200, paid.text

    async def run() -> set[tuple[str, str]]:
        conn = await asyncpg.connect(stack_info.ledger_dsn)
        try:
            await conn.execute("ANALYZE payment_orders, payment_events, refunds")
            rows = await conn.fetch("SELECT tablename, attname FROM pg_stats WHERE schemaname = 'public' "
                                    "AND tablename IN ('payment_orders', 'payment_events', 'refunds')")
        finally:
            await conn.close()
        return {(r["tablename"], r["attname"]) for r in rows}

    columns = asyncio.run(run())
    assert {("payment_orders", "status"), ("payment_orders", "merchant_id"), ("payment_events", "type")} <= columns
    blobs = {("payment_orders", "charge"), ("payment_orders", "metadata"), ("payment_orders", "last_payment_error"),
             ("payment_events", "data"), ("refunds", "metadata")}
    assert not columns & blobs


def test_busy_tables_are_analysed_from_a_small_sample(stack_info: StackInfo) -> None:
    tables = ["outbox_events", "payment_events", "webhook_attempts", "ledger_entries", "risk_attempts",  # 0016
              "payment_orders", "webhook_deliveries",  # 0017
              "idempotency_keys"]  # 0019
    rows = ledger(stack_info, "SELECT c.relname, a.attname, a.attstattarget "
                  "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                  "WHERE c.relname = ANY($1::text[]) AND c.relnamespace = 'public'::regnamespace "
                  "AND a.attnum > 0 AND NOT a.attisdropped", tables)
    targets = {(r["relname"], r["attname"]): r["attstattarget"] for r in rows}
    assert {table for table, _ in targets} == set(tables)
    no_statistics = [("payment_events", "data"), ("payment_orders", "charge"), ("payment_orders", "metadata"),
                     ("payment_orders", "last_payment_error"),  # 0015
                     ("idempotency_keys", "response_body")]  # 0019
    assert [targets.pop(column) for column in no_statistics] == [0] * len(no_statistics)
    assert set(targets.values()) == {10}, {k: v for k, v in targets.items() if v != 10}


def test_young_hot_tables_are_analysed_and_insert_vacuumed_only_after_a_floor_of_rows(stack_info: StackInfo) -> None:
    """Migration 0020 (ledger): a fixed floor of rows between two autovacuum runs of the hot tables."""
    def options(query: Callable[..., list[dict[str, Any]]]) -> dict[str, dict[str, str]]:
        rows = query(stack_info, "SELECT relname, reloptions FROM pg_class WHERE relkind = 'r' "
                     "AND relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL")
        return {row["relname"]: dict(option.split("=", 1) for option in row["reloptions"]) for row in rows}

    on_ledger = options(ledger)
    for table in ("payment_orders", "idempotency_keys", "risk_attempts"):
        assert on_ledger[table]["autovacuum_analyze_threshold"] == "50000", table
    for table in ("outbox_events", "payment_events", "ledger_entries", "webhook_attempts"):
        assert on_ledger[table]["autovacuum_analyze_threshold"] == "200000", table
        assert on_ledger[table]["autovacuum_vacuum_insert_threshold"] == "200000", table
    assert on_ledger["webhook_deliveries"]["autovacuum_analyze_threshold"] == "200000"
    # the dead-row vacuums of the queue tables stay as tight as 0007 and 0012 made them
    assert on_ledger["outbox_pending"]["autovacuum_vacuum_threshold"] == "2000"
    assert on_ledger["payment_orders"]["autovacuum_vacuum_threshold"] == "2000"
    # 0022: a key's row and the version with its reply share a page
    assert on_ledger["idempotency_keys"]["fillfactor"] == "10"

    # the vault's 0002 cost its PostgreSQL CPU instead of saving it; 0003 took it back
    on_vault = options(vault)
    assert "cards" not in on_vault and "vault_access_audit" not in on_vault
