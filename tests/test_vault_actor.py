"""The CardVault class against a real embedded PostgreSQL (no Ray: the plain class, in asyncio)."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from actors.vault.actor import CardVault, UnknownTokenError
from actors.vault.cards import TEST_PAYMENT_METHODS, CardError
from cluster.logs import luhn_complete
from cluster.migrate import apply_migrations
from cluster.postgres import EmbeddedPostgres, pg_bin
from cluster.procs import free_port

T = TypeVar("T")
VISA, MASTERCARD, AMEX, DISCOVER = "4242424242424242", "5555555555554444", "378282246310005", "6011111111111117"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass(frozen=True)
class VaultDb:
    server: EmbeddedPostgres
    secrets: Path

    @property
    def dsn(self) -> str:
        return self.server.dsn

    def vault(self, **options: Any) -> CardVault:
        return CardVault(self.dsn, str(self.secrets / "kek.json"), str(self.secrets / "fingerprint_key"),
                         **options)


def _let_group_traverse(path: Path) -> None:
    """Workaround: as root, cluster.postgres runs initdb with `user=` only, so the child keeps gid 0
    and the group bits (not the o+x it grants) decide whether it may enter root-owned dirs."""
    if os.geteuid() != 0:
        return
    for folder in [path, *path.parents]:
        info = folder.stat()
        if info.st_gid == 0 and not info.st_mode & 0o010:
            folder.chmod(stat.S_IMODE(info.st_mode) | 0o011)  # traverse only, no listing


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultDb]:
    root = tmp_path_factory.mktemp("vault")
    _let_group_traverse(root)
    server = EmbeddedPostgres("vault-test", root / "pg", free_port(), root / "pg.log").start()
    try:
        run(apply_migrations(server.dsn, "vault"))
        yield VaultDb(server, root / "secrets")
    finally:
        server.stop()


def with_vault(db: VaultDb, body: Callable[[CardVault], Awaitable[T]], **options: Any) -> T:
    """Run `body` against a started vault in a fresh event loop, closing the vault afterwards."""
    async def session() -> T:
        vault = db.vault(**options)
        await vault.start()
        try:
            return await body(vault)
        finally:
            await vault.close()
    return run(session())


def merchant() -> str:
    return f"acct_{uuid.uuid4().hex[:16]}"


def card(number: str = VISA, cvc: str | None = "123", exp_month: int = 12, exp_year: int = 2034) -> dict[str, Any]:
    return {"number": number, "exp_month": exp_month, "exp_year": exp_year, "cvc": cvc}


def random_pan(index: int) -> str:
    return luhn_complete(f"4{index:014d}")


async def fetch(db: VaultDb, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db.dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- tokenize / get -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("number", "cvc", "brand", "funding"),
    [(VISA, "123", "visa", "credit"), ("4000056655665556", "123", "visa", "debit"),
     (MASTERCARD, "456", "mastercard", "credit"), (AMEX, "7890", "amex", "credit"),
     (DISCOVER, "321", "discover", "credit")],
)
def test_tokenize_returns_a_stripe_payment_method(db: VaultDb, number: str, cvc: str, brand: str,
                                                  funding: str) -> None:
    account = merchant()
    billing = {"name": "Jenny Rosen", "address": {"line1": "1 Main St", "postal_code": "94107"}}

    async def body(vault: CardVault) -> tuple[dict[str, Any], dict[str, Any] | None]:
        pm = await vault.tokenize(account, card(number, cvc), billing, {"order": "42"})
        return pm, await vault.get(account, pm["id"])

    pm, fetched = with_vault(db, body)
    assert re.fullmatch(r"pm_[0-9A-Za-z]{22}", pm["id"])
    assert (pm["object"], pm["type"], pm["livemode"], pm["customer"]) == ("payment_method", "card", False, None)
    assert abs(pm["created"] - time.time()) < 60
    assert pm["metadata"] == {"order": "42"}
    assert pm["billing_details"] == {
        "address": {"city": None, "country": None, "line1": "1 Main St", "line2": None,
                    "postal_code": "94107", "state": None},
        "email": None, "name": "Jenny Rosen", "phone": None,
    }
    details = pm["card"]
    assert (details["brand"], details["last4"], details["funding"], details["country"]) == (
        brand, number[-4:], funding, "US")
    assert (details["exp_month"], details["exp_year"], details["wallet"]) == (12, 2034, None)
    assert details["checks"] == {"cvc_check": "unchecked", "address_line1_check": "unchecked",
                                 "address_postal_code_check": "unchecked"}
    assert details["networks"] == {"available": [brand], "preferred": None}
    assert re.fullmatch(r"[0-9A-Za-z]{16}", details["fingerprint"])
    assert fetched == pm  # what get() reads back from the row is what tokenize() answered
    assert number not in str(pm) and cvc not in str(details)


def test_same_card_same_fingerprint_different_tokens(db: VaultDb) -> None:
    account = merchant()

    async def body(vault: CardVault) -> list[dict[str, Any]]:
        return [await vault.tokenize(account, card(VISA, cvc)) for cvc in ("123", "999")] + [
            await vault.tokenize(account, card(MASTERCARD)), await vault.tokenize(merchant(), card(VISA))]

    first, second, other_card, other_merchant = with_vault(db, body)
    assert first["id"] != second["id"]
    assert first["card"]["fingerprint"] == second["card"]["fingerprint"] == other_merchant["card"]["fingerprint"]
    assert other_card["card"]["fingerprint"] != first["card"]["fingerprint"]


def test_tokens_sort_by_creation_time(db: VaultDb) -> None:
    async def body(vault: CardVault) -> list[str]:
        ids = []
        for _ in range(5):
            ids.append((await vault.tokenize(merchant(), card()))["id"])
            await asyncio.sleep(0.002)
        return ids

    ids = with_vault(db, body)
    assert ids == sorted(ids)


def test_another_merchants_token_or_an_unknown_one_is_none(db: VaultDb) -> None:
    owner = merchant()

    async def body(vault: CardVault) -> list[Any]:
        pm = await vault.tokenize(owner, card())
        return [await vault.get(owner, pm["id"]), await vault.get(merchant(), pm["id"]),
                await vault.get(owner, "pm_0000000000000000000000"), await vault.get(owner, "pm_card_bogus")]

    mine, theirs, unknown, bogus_alias = with_vault(db, body)
    assert mine is not None and theirs is None and unknown is None and bogus_alias is None


def test_invalid_card_raises_card_error_and_stores_nothing(db: VaultDb) -> None:
    account = merchant()

    async def body(vault: CardVault) -> list[str]:
        codes = []
        for bad in (card("4242424242424241"), card(exp_month=13), card(exp_year=2001), card(cvc="12"),
                    card(AMEX, cvc="123"), card("1234567890123452")):
            with pytest.raises(CardError) as caught:
                await vault.tokenize(account, bad)
            codes.append(caught.value.code)
        return codes

    assert with_vault(db, body) == ["incorrect_number", "invalid_expiry_month", "invalid_expiry_year",
                                    "invalid_cvc", "invalid_cvc", "invalid_number"]
    assert run(fetch(db, "SELECT 1 FROM cards WHERE merchant_id = $1", account)) == []


# --- detokenize, audit, CVC -------------------------------------------------------------------

def test_detokenize_round_trip_writes_an_audit_row(db: VaultDb) -> None:
    async def body(vault: CardVault) -> tuple[str, Any]:
        pm = await vault.tokenize(merchant(), card(AMEX, "4321", 3, 2031))
        return pm["id"], await vault.detokenize(pm["id"], "acquirer-link-0", "authorize pi_123")

    token, data = with_vault(db, body)
    assert dict(data) == {"pan": AMEX, "exp_month": 3, "exp_year": 2031, "cvc": "4321"}
    assert AMEX not in repr(data) and "4321" not in repr(data)
    rows = run(fetch(db, "SELECT caller, purpose, outcome, at FROM vault_access_audit WHERE token = $1", token))
    assert [(r["caller"], r["purpose"], r["outcome"]) for r in rows] == [
        ("acquirer-link-0", "authorize pi_123", "ok")]


def test_detokenize_unknown_token_is_a_clear_error_and_is_audited(db: VaultDb) -> None:
    token = "pm_ZZZZZZZZZZZZZZZZZZZZZZ"

    async def body(vault: CardVault) -> UnknownTokenError:
        with pytest.raises(UnknownTokenError) as caught:
            await vault.detokenize(token, "acquirer-link-0", "authorize pi_456")
        with pytest.raises(ValueError, match="caller and a purpose"):
            await vault.detokenize(token, "", "")
        return caught.value

    error = with_vault(db, body)
    assert str(error) == "No such payment method." and token not in repr(error)
    rows = run(fetch(db, "SELECT outcome FROM vault_access_audit WHERE token = $1", token))
    assert [r["outcome"] for r in rows] == ["not_found"]


def test_cvc_is_consumed_by_the_first_detokenize(db: VaultDb) -> None:
    async def body(vault: CardVault) -> list[Any]:
        pm = await vault.tokenize(merchant(), card(cvc="737"))
        held = vault.cvcs_held()
        first = await vault.detokenize(pm["id"], "link", "authorize")
        second = await vault.detokenize(pm["id"], "link", "authorize retry")
        return [held, first["cvc"], second["cvc"], second["pan"], vault.cvcs_held()]

    held, first, second, pan, left = with_vault(db, body)
    assert (held, first, second, pan, left) == (1, "737", None, VISA, 0)


def test_cvc_expires_after_its_ttl(db: VaultDb) -> None:
    clock = FakeClock()

    async def body(vault: CardVault) -> list[Any]:
        kept = await vault.tokenize(merchant(), card(cvc="111"))
        swept = await vault.tokenize(merchant(), card(cvc="222"))
        clock.now += 599
        in_time = (await vault.detokenize(kept["id"], "link", "authorize"))["cvc"]
        clock.now += 2  # 601 s after tokenization
        late = (await vault.detokenize(swept["id"], "link", "authorize"))["cvc"]
        return [in_time, late, vault.cvcs_held()]

    assert with_vault(db, body, clock=clock, cvc_ttl_s=600) == ["111", None, 0]


def test_periodic_sweep_evicts_expired_cvcs(db: VaultDb) -> None:
    async def body(vault: CardVault) -> list[int]:
        for _ in range(3):
            await vault.tokenize(merchant(), card())
        held = vault.cvcs_held()
        await asyncio.sleep(0.5)
        return [held, vault.cvcs_held()]

    assert with_vault(db, body, cvc_ttl_s=0.1, sweep_interval_s=0.05) == [3, 0]


def test_record_cvc_check(db: VaultDb) -> None:
    account = merchant()

    async def body(vault: CardVault) -> list[Any]:
        pm = await vault.tokenize(account, card())
        ok = await vault.record_cvc_check(pm["id"], "pass")
        fetched = await vault.get(account, pm["id"])
        assert fetched is not None
        return [ok, fetched["card"]["checks"]["cvc_check"], await vault.record_cvc_check("pm_nope", "fail")]

    assert with_vault(db, body) == [True, "pass", False]


# --- Stripe's test payment method ids ----------------------------------------------------------

def test_test_payment_method_ids_resolve_once_per_merchant(db: VaultDb) -> None:
    alice, bob = merchant(), merchant()

    async def body(vault: CardVault) -> dict[str, Any]:
        racing = await asyncio.gather(*[vault.resolve_test_payment_method(alice, "pm_card_visa") for _ in range(10)])
        return {
            "racing": racing,
            "again": await vault.resolve_test_payment_method(alice, "pm_card_visa"),
            "bob": await vault.resolve_test_payment_method(bob, "pm_card_visa"),
            "via_get": await vault.get(alice, "pm_card_visa"),
            "bob_reads_alice": await vault.get(bob, racing[0]),
            "card": await vault.detokenize(racing[0], "link", "authorize"),
            "all": {alias: await vault.get(alice, alias) for alias in TEST_PAYMENT_METHODS},
            "plain_id": await vault.resolve_test_payment_method(alice, "pm_123"),
        }

    got = with_vault(db, body)
    assert len(set(got["racing"])) == 1 and got["again"] == got["racing"][0]
    assert got["bob"] != got["again"] and got["bob_reads_alice"] is None
    assert got["via_get"]["id"] == got["again"] and got["via_get"]["card"]["last4"] == "4242"
    assert got["card"]["pan"] == VISA and got["card"]["cvc"] is None
    assert got["plain_id"] == "pm_123"
    for alias, pan in TEST_PAYMENT_METHODS.items():
        assert got["all"][alias]["card"]["last4"] == pan[-4:]
        assert got["all"][alias]["card"]["checks"]["cvc_check"] is None
    assert got["all"]["pm_card_amex"]["card"]["brand"] == "amex"
    assert got["all"]["pm_card_mastercard_prepaid"]["card"]["funding"] == "prepaid"
    rows = run(fetch(db, "SELECT alias FROM test_payment_methods WHERE merchant_id = $1", alice))
    assert sorted(r["alias"] for r in rows) == sorted(TEST_PAYMENT_METHODS)
    # A restarted vault (empty cache) resolves to the same card, from the table.
    assert with_vault(db, lambda v: v.resolve_test_payment_method(alice, "pm_card_visa")) == got["again"]


# --- batches ------------------------------------------------------------------------------------

def test_batches(db: VaultDb) -> None:
    account = merchant()

    async def body(vault: CardVault) -> tuple[list[Any], list[Any]]:
        results = await vault.tokenize_many([
            {"merchant_id": account, "card": card(VISA)},
            {"merchant_id": account, "card": card("4242424242424241")},
            {"merchant_id": account, "card": card(DISCOVER), "metadata": {"k": "v"}},
        ])
        tokens = [r["id"] for r in results if isinstance(r, dict)]
        cards = await vault.detokenize_many(
            [(tokens[0], "link", "a"), ("pm_missing", "link", "b"), (tokens[1], "link", "c")])
        return results, cards

    results, cards = with_vault(db, body)
    assert isinstance(results[1], CardError) and results[1].code == "incorrect_number"
    assert results[2]["metadata"] == {"k": "v"}
    assert [c["pan"] if c else None for c in cards] == [VISA, None, DISCOVER]


# --- key rotation ------------------------------------------------------------------------------

def test_rotation_under_200_concurrent_tokenizations(db: VaultDb) -> None:
    account = merchant()
    existing = [random_pan(i) for i in range(1200)]  # > 2 re-wrap batches of 500
    fresh = [random_pan(10_000 + i) for i in range(200)]

    async def body(vault: CardVault) -> dict[str, Any]:
        made: list[dict[str, Any]] = []
        for start in range(0, len(existing), 400):
            batch = await vault.tokenize_many(
                [{"merchant_id": account, "card": card(pan)} for pan in existing[start:start + 400]])
            made += [pm for pm in batch if isinstance(pm, dict)]
        old_version = (await vault.rotation_status())["active_version"]
        # Half the tokenizations are sealed under the old KEK and still uncommitted when the rotation
        # starts; the other half arrive while the re-wrap is running. Reads go on throughout.
        tasks = [asyncio.create_task(vault.tokenize(account, card(pan))) for pan in fresh[:100]]
        await asyncio.sleep(0)
        rotation = asyncio.create_task(vault.rotate_key())
        readers = asyncio.gather(*[vault.detokenize(pm["id"], "link", "during rotation") for pm in made[:300]],
                                 return_exceptions=True)
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(vault.tokenize(account, card(pan))) for pan in fresh[100:]]
        new_version = await rotation
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        during = await readers
        status = await vault.wait_for_rotation(timeout_s=120)
        tokens = [pm["id"] for pm in made] + [pm["id"] for pm in outcomes if isinstance(pm, dict)]
        cards = await vault.detokenize_many([(t, "test", "verify after rotation") for t in tokens])
        return {"old": old_version, "new": new_version, "outcomes": outcomes, "during": during,
                "status": status, "cards": cards}

    got = with_vault(db, body)
    failures = [o for o in got["outcomes"] + got["during"] if isinstance(o, BaseException)]
    assert failures == []
    assert got["new"] == got["old"] + 1
    status = got["status"]
    assert status["running"] is False and status["last_error"] is None
    assert status["active_version"] == got["new"] and status["rewrapped"] >= len(existing)
    assert set(status["cards_per_version"]) == {str(got["new"])}  # every card in the db, not just ours
    assert [c["pan"] for c in got["cards"]] == existing + fresh
    assert [c["pan"] for c in got["during"]] == existing[:300]


def test_interrupted_rotation_resumes_on_start(db: VaultDb) -> None:
    async def rotate_then_die(vault: CardVault) -> int:
        await vault.tokenize_many([{"merchant_id": merchant(), "card": card(random_pan(20_000 + i))}
                                   for i in range(300)])
        return await vault.rotate_key()  # close() right after cancels the re-wrap mid-way

    version = with_vault(db, rotate_then_die, rewrap_batch=10)
    left = run(fetch(db, "SELECT count(*) AS n FROM cards WHERE kek_version < $1", version))[0]["n"]
    assert left > 0  # the re-wrap really was cut short

    async def restart(vault: CardVault) -> dict[str, Any]:
        return await vault.wait_for_rotation(timeout_s=120)

    status = with_vault(db, restart)
    assert status["active_version"] == version
    assert set(status["cards_per_version"]) == {str(version)} and status["last_error"] is None


def test_a_replica_with_a_stale_key_ring_reloads_it(db: VaultDb) -> None:
    async def body(vault: CardVault) -> Any:
        other = db.vault()  # a second replica, started before the rotation
        await other.start()
        try:
            await vault.rotate_key()
            pm = await vault.tokenize(merchant(), card(MASTERCARD))  # sealed under a version `other` lacks
            await vault.wait_for_rotation()
            return await other.detokenize(pm["id"], "link", "authorize")
        finally:
            await other.close()

    assert with_vault(db, body)["pan"] == MASTERCARD


# --- nothing in clear ----------------------------------------------------------------------------

def test_no_pan_or_cvc_in_a_database_dump(db: VaultDb) -> None:
    cvcs = ["738", "9146", "583"]  # distinctive values, absent from the fixed test data
    pans = [VISA, AMEX, random_pan(777)]
    account = merchant()

    async def body(vault: CardVault) -> list[str]:
        tokens = []
        for pan, cvc in zip(pans, cvcs, strict=True):
            pm = await vault.tokenize(account, card(pan, cvc), {"name": "Leak Check"}, {"note": "dump"})
            tokens.append(pm["id"])
        await vault.detokenize(tokens[0], "link", "authorize")
        for alias in TEST_PAYMENT_METHODS:
            await vault.resolve_test_payment_method(account, alias)
        return tokens

    tokens = with_vault(db, body)
    dump = subprocess.run(
        [pg_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(db.server.port), "-U", "postgres", "paygate"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert all(token in dump for token in tokens)  # the dump does hold the rows
    server_log = db.server.log_path.read_text(errors="replace")
    for pan in [*pans, *TEST_PAYMENT_METHODS.values()]:
        for text in (dump, server_log):
            assert pan not in text
            assert pan.encode().hex() not in text  # nor as bytea hex
    fields = list(_copy_fields(dump))
    assert tokens[0] in fields
    for field in fields:
        assert field not in cvcs
        assert not any(f'"{cvc}"' in field for cvc in cvcs)  # nor inside jsonb


def _copy_fields(dump: str) -> Iterator[str]:
    """Every column value of every row in a plain-format pg_dump, except serial `id` counters."""
    columns: list[str] | None = None
    for line in dump.splitlines():
        if line.startswith("COPY "):
            columns = [c.strip() for c in line[line.index("(") + 1:line.index(")")].split(",")]
        elif line == "\\.":
            columns = None
        elif columns is not None:
            yield from (value for name, value in zip(columns, line.split("\t"), strict=True) if name != "id")
