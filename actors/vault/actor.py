"""CardVault: the only actor that stores card numbers, and one of two that ever see one.

Cards are validated, sealed (see `crypto.py`) and stored in the vault database; callers get back a
Stripe `payment_method` object and from then on deal only in its `pm_…` token. `detokenize` gives
the PAN back to the acquirer link for an authorization and leaves an audit row behind.

The CVC is never written anywhere: it is kept in this actor's memory for at most `cvc_ttl_s`
(10 minutes, as long as a confirmation plausibly follows a tokenization) and handed out once, to
the first authorization. With several vault replicas, detokenize must reach the replica that
tokenized for the CVC to be there; without it the authorization simply goes without CVC.

Stripe's test PaymentMethod ids (`pm_card_visa`, …) are resolved per merchant: the first use by a
merchant tokenizes the test card once (exp 12/<this year + 5>, no CVC) and records the mapping in
`test_payment_methods`; later uses return the same real `pm_…`. So test cards behave like any other
card (ownership, audit, rotation) and one merchant never sees another's object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import ray

from actors.direct import DirectCallable
from actors.ids import new_id
from actors.vault.cards import TEST_PAYMENT_METHODS, CardData, CardError, ValidCard, validate_card
from actors.vault.crypto import (
    KeyRing,
    KeyRingError,
    Sealed,
    fingerprint,
    load_fingerprint_key,
    open_sealed,
    rewrap,
    seal,
)
from cluster.db import as_columns, create_pool
from cluster.migrate import apply_migrations

log = logging.getLogger("paygate.vault")

DEFAULT_CVC_TTL_S = 600.0
DEFAULT_REWRAP_BATCH = 500
CHECK_VALUES = frozenset({"unchecked", "pass", "fail", "unavailable"})
_ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")
_PUBLIC_COLUMNS = (
    "token, brand, last4, exp_month, exp_year, funding, country, fingerprint, cvc_check, "
    "address_line1_check, address_postal_code_check, billing_details, metadata, created"
)
_SEALED_COLUMNS = "token, exp_month, exp_year, ciphertext, nonce, wrapped_key, wrap_nonce, kek_version"


class VaultError(RuntimeError):
    """A vault failure the caller can act on. Messages never carry card data."""


class UnknownTokenError(VaultError, LookupError):
    def __init__(self, message: str = "No such payment method.") -> None:
        super().__init__(message)


def new_payment_method_id() -> str:
    """A time-sortable `pm_…` id (the shared scheme of `actors.ids`)."""
    return new_id("pm")


# --- the CVC, in memory only ----------------------------------------------------------------

class CvcStore:
    """token -> (cvc, expiry). Entries are evicted on read once expired, and by `sweep()`."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"CvcStore(entries={len(self._entries)}, ttl_s={self.ttl_s})"

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, token: str, cvc: str) -> None:
        self._entries[token] = (cvc, self._clock() + self.ttl_s)

    def take(self, token: str) -> str | None:
        """The CVC, once: the first authorization consumes it, an expired one is dropped."""
        entry = self._entries.pop(token, None)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def sweep(self) -> int:
        now = self._clock()
        expired = [token for token, (_, expires) in self._entries.items() if expires <= now]
        for token in expired:
            del self._entries[token]
        return len(expired)


# --- rows and Stripe objects ----------------------------------------------------------------

def _opt_str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def normalize_billing_details(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stripe's billing_details shape, every field present (null when not given)."""
    raw = raw or {}
    address = raw.get("address") or {}
    return {
        "address": {key: _opt_str(address.get(key)) for key in _ADDRESS_KEYS},
        "email": _opt_str(raw.get("email")),
        "name": _opt_str(raw.get("name")),
        "phone": _opt_str(raw.get("phone")),
    }


def _check_if(present: object) -> str | None:
    # Stripe: null when the value was not provided, "unchecked" until an authorization verifies it.
    return "unchecked" if present else None


@dataclass(frozen=True)
class _NewCard:
    """A card ready to insert. Holds no PAN (only its sealed form) and no CVC."""

    token: str
    merchant_id: str
    card: ValidCard = field(repr=False)
    fingerprint: str
    sealed: Sealed
    billing_details: dict[str, Any]
    metadata: dict[str, str]
    created: datetime

    def checks(self) -> tuple[str | None, str | None, str | None]:
        """(cvc_check, address_line1_check, address_postal_code_check) at tokenization."""
        address = self.billing_details["address"]
        return _check_if(self.card.cvc), _check_if(address["line1"]), _check_if(address["postal_code"])

    def insert_args(self) -> tuple[Any, ...]:
        card, sealed = self.card, self.sealed
        return (
            self.token, self.merchant_id, card.brand, card.last4, card.exp_month, card.exp_year,
            card.funding, card.country, self.fingerprint, sealed.ciphertext, sealed.nonce,
            sealed.wrapped_key, sealed.wrap_nonce, sealed.kek_version, *self.checks(),
            self.billing_details, self.metadata, self.created,
        )

    def public_row(self) -> dict[str, Any]:
        cvc_check, line1_check, postal_check = self.checks()
        return {
            "token": self.token, "brand": self.card.brand, "last4": self.card.last4,
            "exp_month": self.card.exp_month, "exp_year": self.card.exp_year,
            "funding": self.card.funding, "country": self.card.country, "fingerprint": self.fingerprint,
            "cvc_check": cvc_check, "address_line1_check": line1_check,
            "address_postal_code_check": postal_check,
            "billing_details": self.billing_details, "metadata": self.metadata, "created": self.created,
        }


# The columns of `_NewCard.insert_args`, in its order, with their types.
_CARD_COLUMN_TYPES = (
    ("token", "text"), ("merchant_id", "text"), ("brand", "text"), ("last4", "text"), ("exp_month", "smallint"),
    ("exp_year", "smallint"), ("funding", "text"), ("country", "text"), ("fingerprint", "text"),
    ("ciphertext", "bytea"), ("nonce", "bytea"), ("wrapped_key", "bytea"), ("wrap_nonce", "bytea"),
    ("kek_version", "integer"), ("cvc_check", "text"), ("address_line1_check", "text"),
    ("address_postal_code_check", "text"), ("billing_details", "jsonb"), ("metadata", "jsonb"),
    ("created", "timestamptz"),
)
# A batch of cards in one statement (atomic on its own: no BEGIN/COMMIT round trips).
_INSERT_CARDS = ("INSERT INTO cards (" + ", ".join(name for name, _ in _CARD_COLUMN_TYPES) + ") SELECT * FROM unnest("
                 + ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_CARD_COLUMN_TYPES, start=1)) + ")")
# The sealed cards asked for, with one audit row per request (hit or miss) written by the same
# statement: the audit has committed before the answer (and so any PAN) leaves the database.
_DETOKENIZE = (
    "WITH found AS (SELECT " + _SEALED_COLUMNS + " FROM cards WHERE token = ANY($1::text[])), "
    "audit AS (INSERT INTO vault_access_audit (token, caller, purpose, outcome) "
    "SELECT r.token, r.caller, r.purpose, "
    "CASE WHEN r.token IN (SELECT token FROM found) THEN 'ok' ELSE 'not_found' END "
    "FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS r(token, caller, purpose, n) ORDER BY r.n) "
    "SELECT * FROM found"
)


def payment_method_object(row: Mapping[str, Any]) -> dict[str, Any]:
    """Stripe's PaymentMethod (type card) from a `cards` row."""
    brand = row["brand"]
    return {
        "id": row["token"],
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": row["billing_details"],
        "card": {
            "brand": brand,
            "checks": {
                "address_line1_check": row["address_line1_check"],
                "address_postal_code_check": row["address_postal_code_check"],
                "cvc_check": row["cvc_check"],
            },
            "country": row["country"],
            "display_brand": brand,
            "exp_month": row["exp_month"],
            "exp_year": row["exp_year"],
            "fingerprint": row["fingerprint"],
            "funding": row["funding"],
            "generated_from": None,
            "last4": row["last4"],
            "networks": {"available": [brand], "preferred": None},
            "three_d_secure_usage": {"supported": True},
            "wallet": None,
        },
        "created": int(row["created"].timestamp()),
        "customer": None,
        "livemode": False,
        "metadata": row["metadata"],
        "type": "card",
    }


def _sealed_of(row: Mapping[str, Any]) -> Sealed:
    return Sealed(
        bytes(row["ciphertext"]), bytes(row["nonce"]), bytes(row["wrapped_key"]),
        bytes(row["wrap_nonce"]), row["kek_version"],
    )


class _LostRace(Exception):
    """Raised inside a transaction to roll it back when another call created the same row first."""


# --- the actor --------------------------------------------------------------------------------

class CardVault(DirectCallable):
    """The card vault. Plain class (unit-testable); `CardVaultActor` is its Ray actor."""

    DIRECT_METHODS = frozenset({"tokenize_many", "get_many", "detokenize_many"})

    def __init__(
        self,
        vault_dsn: str,
        kek_path: str,
        fingerprint_key_path: str,
        *,
        cvc_ttl_s: float = DEFAULT_CVC_TTL_S,
        rewrap_batch: int = DEFAULT_REWRAP_BATCH,
        sweep_interval_s: float = 30.0,
        pool_max_size: int = 10,
        migrate: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Nothing here touches the network, the disk or the event loop: Ray constructs the actor
        # before its loop runs. `start()` (called by every method if needed) does that work.
        self._dsn = vault_dsn
        self._kek_path = Path(kek_path)
        self._fingerprint_key_path = Path(fingerprint_key_path)
        self._batch_size = rewrap_batch
        self._sweep_interval_s = sweep_interval_s
        self._pool_max_size = pool_max_size
        self._migrate = migrate
        self._cvcs = CvcStore(cvc_ttl_s, clock)
        self._pool: asyncpg.Pool | None = None
        self._ring: KeyRing | None = None
        self._fingerprint_key: bytes | None = None
        self._start_lock: asyncio.Lock | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._rewrapper: asyncio.Task[None] | None = None
        self._in_flight: Counter[int] = Counter()  # sealed-but-uncommitted cards per KEK version
        self._test_pms: dict[tuple[str, str], str] = {}
        self._rewrapped = 0
        self._rotation_error: str | None = None
        self._counts: Counter[str] = Counter()  # cards tokenized, looked up, detokenized

    def __repr__(self) -> str:
        return f"CardVault(started={self._pool is not None}, cvcs_held={len(self._cvcs)})"

    async def stats(self) -> dict[str, int]:
        """Cards tokenized, looked up (PaymentMethod reads) and detokenized since this process started."""
        return {key: self._counts[key] for key in ("tokenized", "looked_up", "detokenized")}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Apply migrations, load keys, open the pool, start the sweeper; safe to call again."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._pool is not None:
                return
            if self._migrate:
                await apply_migrations(self._dsn, "vault")
            self._ring = await asyncio.to_thread(KeyRing.load, self._kek_path)
            self._fingerprint_key = await asyncio.to_thread(load_fingerprint_key, self._fingerprint_key_path)
            self._pool = await create_pool(self._dsn, min_size=1, max_size=self._pool_max_size)
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="vault-cvc-sweeper")
            if await self._stale_count(self._ring.active):
                self._start_rewrap()  # a rotation was interrupted (crash, restart): finish it
            log.info("card vault started, KEK versions %s, active %s", self._ring.versions, self._ring.active)

    async def close(self) -> None:
        for task in (self._sweeper, self._rewrapper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = self._rewrapper = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> str:
        return "pong"

    def cvcs_held(self) -> int:
        """How many CVCs are waiting in memory for their first authorization (metrics, tests)."""
        return len(self._cvcs)

    async def _ready(self) -> tuple[asyncpg.Pool, KeyRing, bytes]:
        if self._pool is None:
            await self.start()
        assert self._pool is not None and self._ring is not None and self._fingerprint_key is not None
        return self._pool, self._ring, self._fingerprint_key

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                self._cvcs.sweep()
                if self._ring is not None:
                    self._ring.reload()  # pick up a rotation made by another vault replica
            except Exception as exc:  # keep sweeping; the error names no secret
                log.warning("vault sweep failed: %s", type(exc).__name__)

    # -- tokenize ------------------------------------------------------------------------------

    async def tokenize(
        self,
        merchant_id: str,
        card: Mapping[str, Any],
        billing_details: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate, encrypt and store a card; the Stripe PaymentMethod. Raises CardError (402)."""
        request = {"merchant_id": merchant_id, "card": card,
                   "billing_details": billing_details, "metadata": metadata}
        [result] = await self.tokenize_many([request])
        if isinstance(result, CardError):
            raise result
        return result

    async def tokenize_many(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | CardError]:
        """Batch tokenize in one statement: per request a PaymentMethod or the CardError."""
        pool, ring, fp_key = await self._ready()
        results: list[dict[str, Any] | CardError] = []
        cards: list[_NewCard] = []
        for request in requests:
            try:
                new = self._prepare(request, ring, fp_key)
            except CardError as error:
                results.append(error)
                continue
            cards.append(new)
            results.append(payment_method_object(new.public_row()))
        if cards:
            await self._insert(pool, cards)
        self._counts["tokenized"] += len(cards)
        return results

    def _prepare(self, request: Mapping[str, Any], ring: KeyRing, fp_key: bytes) -> _NewCard:
        raw = request.get("card")
        raw = raw if isinstance(raw, Mapping) else {}
        card = validate_card(raw.get("number"), raw.get("exp_month"), raw.get("exp_year"), raw.get("cvc"))
        metadata = {str(k): str(v) for k, v in (request.get("metadata") or {}).items()}
        billing_details = normalize_billing_details(request.get("billing_details"))
        token = new_payment_method_id()
        return _NewCard(
            token=token, merchant_id=str(request["merchant_id"]), card=card,
            fingerprint=fingerprint(card.pan, fp_key),
            sealed=seal(card.pan.encode("ascii"), token.encode("ascii"), ring),
            billing_details=billing_details, metadata=metadata, created=datetime.now(UTC),
        )

    @contextlib.contextmanager
    def _sealed_in_flight(self, cards: Sequence[_NewCard]) -> Iterator[None]:
        """Count cards from seal() until their transaction has committed (or failed).

        Entered with no await after seal(), so no other task runs in between: the re-wrap waits for
        cards sealed under an old KEK version to land before it declares itself done.
        """
        for new in cards:
            self._in_flight[new.sealed.kek_version] += 1
        try:
            yield
        finally:
            for new in cards:
                self._in_flight[new.sealed.kek_version] -= 1

    async def _insert(self, pool: asyncpg.Pool, cards: list[_NewCard]) -> None:
        with self._sealed_in_flight(cards):
            await pool.execute(_INSERT_CARDS, *as_columns([c.insert_args() for c in cards], len(_CARD_COLUMN_TYPES)))
        self._keep_cvcs(cards)

    def _keep_cvcs(self, cards: Sequence[_NewCard]) -> None:
        # Only once the rows are durable: a CVC for a card that was never stored is useless.
        for new in cards:
            if new.card.cvc is not None:
                self._cvcs.put(new.token, new.card.cvc)

    # -- read ----------------------------------------------------------------------------------

    async def get_many(self, requests: Sequence[tuple[str, str]]) -> list[dict[str, Any] | None]:
        """The PaymentMethods, (merchant_id, token) each, in one query; None for an unknown token or
        another merchant's (the gateway: 404). One Ray call and one statement per shard micro-batch."""
        pool, _, _ = await self._ready()
        self._counts["looked_up"] += len(requests)
        wanted = [(merchant_id, await self.resolve_test_payment_method(merchant_id, token))
                  for merchant_id, token in requests]
        rows = await pool.fetch(
            f"SELECT merchant_id, {_PUBLIC_COLUMNS} FROM cards WHERE token = ANY($1::text[])",
            list({token for _, token in wanted}))
        found = {(row["merchant_id"], row["token"]): row for row in rows}
        return [payment_method_object(found[key]) if key in found else None for key in wanted]

    async def get(self, merchant_id: str, token: str) -> dict[str, Any] | None:
        [card] = await self.get_many([(merchant_id, token)])
        return card

    async def resolve_test_payment_method(self, merchant_id: str, pm_id: str) -> str:
        """The merchant's real `pm_…` for a Stripe test id such as `pm_card_visa`; other ids unchanged."""
        if pm_id not in TEST_PAYMENT_METHODS:
            return pm_id
        cached = self._test_pms.get((merchant_id, pm_id))
        if cached:
            return cached
        pool, ring, fp_key = await self._ready()
        token = await pool.fetchval(
            "SELECT token FROM test_payment_methods WHERE merchant_id = $1 AND alias = $2", merchant_id, pm_id
        )
        if token is None:
            token = await self._create_test_payment_method(pool, ring, fp_key, merchant_id, pm_id)
        self._test_pms[(merchant_id, pm_id)] = token
        return str(token)

    async def _create_test_payment_method(
        self, pool: asyncpg.Pool, ring: KeyRing, fp_key: bytes, merchant_id: str, alias: str
    ) -> str:
        year = datetime.now(UTC).year + 5
        card = {"number": TEST_PAYMENT_METHODS[alias], "exp_month": 12, "exp_year": year}
        new = self._prepare({"merchant_id": merchant_id, "card": card}, ring, fp_key)
        try:
            with self._sealed_in_flight([new]):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(_INSERT_CARDS, *as_columns([new.insert_args()], len(_CARD_COLUMN_TYPES)))
                    won = await conn.fetchval(
                        "INSERT INTO test_payment_methods (merchant_id, alias, token) VALUES ($1, $2, $3) "
                        "ON CONFLICT DO NOTHING RETURNING token",
                        merchant_id, alias, new.token,
                    )
                    if won is None:
                        raise _LostRace  # roll back our card: a concurrent call mapped the alias first
            return new.token
        except _LostRace:
            token = await pool.fetchval(
                "SELECT token FROM test_payment_methods WHERE merchant_id = $1 AND alias = $2",
                merchant_id, alias,
            )
            return str(token)

    # -- detokenize ----------------------------------------------------------------------------

    async def detokenize(self, token: str, caller: str, purpose: str) -> CardData:
        """The card for an authorization: {pan, exp_month, exp_year, cvc}. Audited; consumes the CVC."""
        [card] = await self.detokenize_many([(token, caller, purpose)])
        if card is None:
            raise UnknownTokenError()
        return card

    async def detokenize_many(self, requests: Sequence[tuple[str, str, str]]) -> list[CardData | None]:
        """Batch detokenize: (token, caller, purpose) each; None for an unknown token. One audit row each."""
        for _, caller, purpose in requests:
            if not caller or not purpose:
                raise ValueError("detokenize needs a caller and a purpose for the audit trail")
        pool, _, _ = await self._ready()
        tokens = [str(token) for token, _, _ in requests]
        rows = await pool.fetch(_DETOKENIZE, tokens, [str(c) for _, c, _ in requests], [str(p) for _, _, p in requests])
        found = {row["token"]: row for row in rows}
        self._counts["detokenized"] += len(found)
        return [self._card_data(found[token]) if token in found else None for token in tokens]

    def _card_data(self, row: Mapping[str, Any]) -> CardData:
        token = row["token"]
        pan = self._open(_sealed_of(row), token).decode("ascii")
        cvc = self._cvcs.take(token)
        return CardData(pan=pan, exp_month=row["exp_month"], exp_year=row["exp_year"], cvc=cvc)

    def _open(self, sealed: Sealed, token: str) -> bytes:
        assert self._ring is not None
        try:
            return open_sealed(sealed, token.encode("ascii"), self._ring)
        except KeyRingError:
            if not self._ring.reload():  # a version added by another replica since we loaded
                raise
            return open_sealed(sealed, token.encode("ascii"), self._ring)

    async def record_cvc_check(self, token: str, result: str) -> bool:
        """Store the CVC check outcome of an authorization (pass/fail/unavailable); False if unknown."""
        if result not in CHECK_VALUES:
            raise ValueError(f"cvc_check must be one of {sorted(CHECK_VALUES)}")
        pool, _, _ = await self._ready()
        status = await pool.execute("UPDATE cards SET cvc_check = $2 WHERE token = $1", token, result)
        return bool(status == "UPDATE 1")

    # -- key rotation --------------------------------------------------------------------------

    async def rotate_key(self) -> int:
        """Add a KEK version (active at once) and re-wrap every data key under it in the background."""
        _, ring, _ = await self._ready()
        version = await asyncio.to_thread(ring.add_version)
        log.info("vault KEK rotated to version %s; re-wrapping data keys", version)
        self._start_rewrap()
        return version

    def _start_rewrap(self) -> None:
        if self._rewrapper is not None and not self._rewrapper.done():
            return  # the running pass re-reads the active version each batch
        self._rotation_error = None
        self._rewrapper = asyncio.create_task(self._rewrap_until_done(), name="vault-rewrap")

    async def _rewrap_until_done(self) -> None:
        pool, ring, _ = await self._ready()
        try:
            while True:
                target = ring.active
                done = await self._rewrap_batch(pool, ring, target)
                self._rewrapped += done
                if done:
                    continue
                stale_in_flight = any(n for v, n in self._in_flight.items() if v < target)
                if not stale_in_flight and await self._stale_count(target) == 0:
                    break
                await asyncio.sleep(0.05)  # rows locked by another transaction, or inserts in flight
            log.info("vault re-wrap to KEK version %s complete", ring.active)
        except Exception as exc:
            self._rotation_error = type(exc).__name__
            log.error("vault re-wrap failed: %s; it resumes on the next rotate_key or restart",
                      type(exc).__name__)

    async def _rewrap_batch(self, pool: asyncpg.Pool, ring: KeyRing, target: int) -> int:
        async with pool.acquire() as conn, conn.transaction():
            # SKIP LOCKED: several vault replicas can re-wrap side by side without waiting on each other.
            # `<` (not `<>`): a replica with a stale ring must never wrap rows back to an older version.
            rows = await conn.fetch(
                f"""SELECT {_SEALED_COLUMNS} FROM cards WHERE kek_version < $1
                    LIMIT $2 FOR UPDATE SKIP LOCKED""",
                target, self._batch_size,
            )
            updates = []
            for row in rows:
                fresh = rewrap(_sealed_of(row), row["token"].encode("ascii"), ring)
                updates.append((row["token"], fresh.wrapped_key, fresh.wrap_nonce, fresh.kek_version))
            await conn.executemany(
                "UPDATE cards SET wrapped_key = $2, wrap_nonce = $3, kek_version = $4 WHERE token = $1",
                updates,
            )
        return len(rows)

    async def _stale_count(self, target: int) -> int:
        assert self._pool is not None
        return int(await self._pool.fetchval("SELECT count(*) FROM cards WHERE kek_version < $1", target))

    async def rotation_status(self) -> dict[str, Any]:
        pool, ring, _ = await self._ready()
        rows = await pool.fetch(
            "SELECT kek_version, count(*) AS n FROM cards GROUP BY kek_version ORDER BY kek_version"
        )
        return {
            "active_version": ring.active,
            "versions": ring.versions,
            "cards_per_version": {str(r["kek_version"]): int(r["n"]) for r in rows},
            "running": self._rewrapper is not None and not self._rewrapper.done(),
            "rewrapped": self._rewrapped,
            "last_error": self._rotation_error,
        }

    async def wait_for_rotation(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Block until the background re-wrap is finished (operators' CLI, tests); its status."""
        if self._rewrapper is not None:
            await asyncio.wait_for(asyncio.shield(self._rewrapper), timeout_s)
        return await self.rotation_status()


CardVaultActor = ray.remote(CardVault)
