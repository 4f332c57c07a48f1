"""Invariant 4: a card number lives only in the vault database (encrypted) and in the memory of the
vault and acquirer-link actors; the CVC is never written anywhere.

One module-wide workload drives known test cards through every path a card takes (tokenization,
authorizations that succeed, decline, time out at the bank, capture and refund, and the edge errors
for bad numbers, CVCs and expiries), in form and JSON bodies. Then every place data can land is
searched: the ledger and vault databases (pg_dump), every file under `<data_dir>/logs/`, the bank
journal, this stack's Ray session logs (the actors' stdout/stderr) and every Kafka topic.

Card numbers are searched everywhere, also written with spaces or dashes, and hex-encoded. A CVC is
a 3-4 digit string that occurs by chance in any large dump, so it is searched where finding it
would mean a leak: as a value next to a `cvc`-like name, as a JSON string value, and in every
column of the vault database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import ray
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from banksim.cards import NEVER_ANSWER_CARD
from cluster.postgres import pg_bin
from cluster.stack import StackInfo
from tests.cards import LEAK_TEST_CVCS

NOW = datetime.now(UTC)
YEAR = NOW.year + 3
CVCS = LEAK_TEST_CVCS  # random cards elsewhere in the suite never end in one (tests/cards.py)
CVC, AMEX_CVC = CVCS

# Cards that tokenize and then go to the bank: (number, cvc).
GOOD_CARDS = [
    ("4242424242424242", CVC), ("5555555555554444", CVC), ("2223003122003222", CVC),
    ("378282246310005", AMEX_CVC), ("6011111111111117", CVC),
]
DECLINED_CARDS = [("4000000000000002", CVC), ("4000000000009995", CVC), ("4000000000000127", CVC),
                  ("4000000000000119", CVC)]
TIMEOUT_CARDS = [(NEVER_ANSWER_CARD, CVC)]  # the bank journals it and never answers (~2 s timeout)
# Rejected at the edge: (form fields that differ from a good card, expected code).
EDGE_ERRORS = [
    ({"card[number]": "4242424242424241"}, "incorrect_number"),
    ({"card[number]": "4242 4242 4242 4242"}, "invalid_number"),
    ({"card[number]": "4242-4242-4242-4242"}, "invalid_number"),
    ({"card[number]": "1234567812345670"}, "invalid_number"),
    ({"card[number]": "4242424242424242", "card[cvc]": AMEX_CVC}, "invalid_cvc"),
    ({"card[number]": "378282246310005", "card[cvc]": CVC}, "invalid_cvc"),
    ({"card[number]": "5555555555554444", "card[exp_year]": str(NOW.year - 1)}, "invalid_expiry_year"),
    ({"card[number]": "6011111111111117", "card[exp_month]": "13"}, "invalid_expiry_month"),
]
# Numbers that only ever reach the edge, with a typo or without a brand: still card data.
EDGE_ONLY_NUMBERS = ["4242424242424241", "1234567812345670"]


def all_numbers() -> list[str]:
    return sorted({n for n, _ in GOOD_CARDS + DECLINED_CARDS + TIMEOUT_CARDS} | set(EDGE_ONLY_NUMBERS))


# ---- needles -------------------------------------------------------------------------------------

def pan_regex(numbers: Iterable[str]) -> re.Pattern[bytes]:
    """Each number as digits, with optional single spaces or dashes between digits, or hex-encoded."""
    parts = []
    for number in numbers:
        parts.append(b"[ -]?".join(re.escape(d.encode()) for d in number))
        ascii_hex = number.encode().hex()
        parts.append(re.escape(ascii_hex.encode()) + b"|" + re.escape(ascii_hex.upper().encode()))
    return re.compile(b"|".join(b"(?:" + p + b")" for p in parts))


def cvc_regex(cvcs: Iterable[str]) -> re.Pattern[bytes]:
    """A CVC as a value: next to a cvc-like name (`cvc=737`, `'cvc': '737'`, `card%5Bcvc%5D=737`),
    or as a whole JSON string value (`: "737"`, also inside an escaped JSON string)."""
    values = b"|".join(re.escape(c.encode()) for c in cvcs)
    separator = rb"(?:%5[dD]|%22|%3[aAdD]|[^0-9A-Za-z\n]){0,8}"
    named = rb"(?i:cvc|cvv|cvc2|csc|security.?code)" + separator + rb"(?:" + values + rb")(?!\d)"
    json_value = rb':\s*\\?"(?:' + values + rb')\\?"'
    return re.compile(named + b"|" + json_value)


PANS = pan_regex(all_numbers())
CVC_VALUES = cvc_regex(CVCS)


def _mask(raw: bytes) -> str:
    text = raw.decode("ascii", "replace")
    return text[:4] + "…" + text[-4:]  # a finding is reported without repeating the number


def find_card_data(data: bytes, where: str, cvcs: bool = True) -> list[str]:
    found = [f"{where}: card number {_mask(m.group(0))} at byte {m.start()}" for m in PANS.finditer(data)]
    if cvcs:
        found += [f"{where}: CVC as a value in {data[max(0, m.start() - 40):m.end() + 10]!r}"
                  for m in CVC_VALUES.finditer(data)]
    return found


def test_needles_find_what_they_should() -> None:
    assert find_card_data(b"x 4242 4242 4242 4242 y", "t")
    assert find_card_data(b"4242-4242-4242-4242", "t")
    assert find_card_data(b"\\x" + b"4242424242424242".hex().encode(), "t")
    assert find_card_data(b'{"card": {"cvc": "737"}}', "t")
    assert find_card_data(b"card%5Bcvc%5D=9173&x=1", "t")
    assert find_card_data(b'"msg":"{\\"value\\": \\"9173\\"}"', "t")
    assert not find_card_data(b'{"ts":"2026-01-01T00:00:00.737Z","pid":9173,"cvc_check":"unchecked"}', "t")
    assert not find_card_data(b"424242******4242", "t")


# ---- the workload --------------------------------------------------------------------------------

@dataclass
class Traffic:
    merchant_id: str
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)  # number -> final PaymentIntent or error
    card_errors: list[str] = field(default_factory=list)
    response_findings: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # pm id -> number

    def check(self, response: httpx.Response, what: str) -> httpx.Response:
        self.response_findings += find_card_data(response.content, f"response to {what}")
        return response


def _form(number: str, cvc: str | None) -> dict[str, str]:
    form = {"type": "card", "card[number]": number, "card[exp_month]": "12", "card[exp_year]": str(YEAR)}
    if cvc:
        form["card[cvc]"] = cvc
    return form


def _tokenize(client: httpx.Client, traffic: Traffic, number: str, cvc: str, as_json: bool) -> str:
    if as_json:
        body = {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": YEAR, "cvc": cvc}}
        response = client.post("/v1/payment_methods", json=body)
    else:
        response = client.post("/v1/payment_methods", data=_form(number, cvc))
    traffic.check(response, f"tokenize …{number[-4:]}")
    assert response.status_code == 200, response.text
    traffic.tokens[response.json()["id"]] = number
    return str(response.json()["id"])


def _pay(client: httpx.Client, traffic: Traffic, pm: str, capture_method: str = "automatic") -> dict[str, Any]:
    started = time.monotonic()
    response = client.post("/v1/payment_intents", headers={"Idempotency-Key": str(uuid.uuid4())},
                           data={"amount": "1000", "currency": "usd", "payment_method": pm, "confirm": "true",
                                 "capture_method": capture_method})
    traffic.check(response, f"payment with {pm}")
    return {"status_code": response.status_code, "elapsed_s": time.monotonic() - started, **response.json()}


def _edge_errors(client: httpx.Client, traffic: Traffic) -> None:
    for changes, code in EDGE_ERRORS:
        form = {**_form("4242424242424242", CVC), **changes}
        response = traffic.check(client.post("/v1/payment_methods", data=form), f"bad card {code}")
        assert response.status_code == 402 and response.json()["error"]["code"] == code, response.text
        traffic.card_errors.append(code)
        body = {"type": "card", "card": {"number": form["card[number]"], "exp_month": form["card[exp_month]"],
                                         "exp_year": form["card[exp_year]"], "cvc": form["card[cvc]"]}}
        response = traffic.check(client.post("/v1/payment_methods", json=body), f"bad card {code} (json)")
        assert response.status_code == 402 and response.json()["error"]["code"] == code, response.text


def _capture_and_refund(client: httpx.Client, traffic: Traffic) -> None:
    pm = _tokenize(client, traffic, "4242424242424242", CVC, as_json=False)
    intent = _pay(client, traffic, pm, capture_method="manual")
    assert intent.get("status") == "requires_capture", intent
    captured = traffic.check(client.post(f"/v1/payment_intents/{intent['id']}/capture"), "capture")
    assert captured.status_code == 200, captured.text
    refund = traffic.check(client.post("/v1/refunds", data={"payment_intent": intent["id"], "amount": "400"}),
                           "refund")
    assert refund.status_code == 200, refund.text


def run_workload(admin: httpx.Client, base_url: str) -> Traffic:
    created = admin.post("/v1/admin/merchants", data={"name": "leak test"})
    assert created.status_code == 200, created.text
    traffic = Traffic(created.json()["id"])
    with httpx.Client(base_url=base_url, auth=(created.json()["secret_key"], ""), timeout=60) as client:
        for index, (number, cvc) in enumerate(GOOD_CARDS + DECLINED_CARDS + TIMEOUT_CARDS):
            pm = _tokenize(client, traffic, number, cvc, as_json=index % 2 == 1)
            traffic.payments[number] = _pay(client, traffic, pm)
            traffic.check(client.get(f"/v1/payment_methods/{pm}"), "retrieve")
        for alias in ("pm_card_visa", "pm_card_chargeDeclined"):
            traffic.payments[alias] = _pay(client, traffic, alias)
        _edge_errors(client, traffic)
        _capture_and_refund(client, traffic)
    return traffic


@pytest.fixture(scope="module")
def traffic(admin: httpx.Client, base_url: str) -> Traffic:
    return run_workload(admin, base_url)


def test_workload_went_through_every_path(traffic: Traffic) -> None:
    """The search below means something only if the cards took the paths they were meant to."""
    for number, _ in GOOD_CARDS:
        assert traffic.payments[number].get("status") == "succeeded", traffic.payments[number]
    for number, _ in DECLINED_CARDS:
        payment = traffic.payments[number]
        assert payment["status_code"] == 402 and payment["error"]["type"] == "card_error", payment
    timed_out = traffic.payments[NEVER_ANSWER_CARD]  # waited for the bank (2 s in tests), then gave up
    assert timed_out.get("status") != "succeeded" and timed_out["elapsed_s"] >= 1.5, timed_out
    assert traffic.payments["pm_card_visa"].get("status") == "succeeded"
    assert sorted(set(traffic.card_errors)) == sorted({code for _, code in EDGE_ERRORS})


def test_responses_carry_no_card_data(traffic: Traffic) -> None:
    assert traffic.response_findings == []


# ---- databases -----------------------------------------------------------------------------------

def pg_dump(dsn: str) -> bytes:
    argv = [pg_bin("pg_dump"), "--dbname", dsn]  # libpq reads the URL, socket or TCP
    result = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"COPY " in result.stdout or b"INSERT INTO" in result.stdout
    return result.stdout


def dump_sections(dump: bytes) -> Iterator[tuple[str, bytes]]:
    """(table, its data) for each `COPY` block of a plain pg_dump; the schema part as "schema"."""
    parts = re.split(rb"^COPY public\.(\w+) ", dump, flags=re.MULTILINE)
    yield "schema", parts[0]
    for index in range(1, len(parts) - 1, 2):
        yield parts[index].decode(), parts[index + 1]


def scan_dump(dump: bytes, database: str, cvcs: bool = True) -> list[str]:
    return [f for table, data in dump_sections(dump) for f in find_card_data(data, f"{database} {table}", cvcs)]


def test_ledger_dump_holds_no_card_data(traffic: Traffic, stack_info: StackInfo) -> None:
    dump = pg_dump(stack_info.ledger_dsn)
    assert traffic.merchant_id.encode() in dump  # the workload's rows are in it
    assert scan_dump(dump, "ledger") == []


def test_vault_dump_holds_no_pan_in_the_clear(traffic: Traffic, stack_info: StackInfo) -> None:
    dump = pg_dump(stack_info.vault_dsn)
    assert next(iter(traffic.tokens)).encode() in dump
    assert scan_dump(dump, "vault", cvcs=False) == []


async def _vault_rows(dsn: str) -> tuple[list[tuple[str, str, str]], dict[str, list[dict[str, Any]]]]:
    conn = await asyncpg.connect(dsn)
    try:
        columns = [tuple(r) for r in await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")]
        rows = {table: [dict(r) for r in await conn.fetch(f'SELECT * FROM "{table}"')]
                for table in sorted({c[0] for c in columns})}
        return columns, rows  # type: ignore[return-value]
    finally:
        await conn.close()


def _values(value: Any) -> Iterator[Any]:
    if isinstance(value, str) and value.startswith(("[", "{")):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, dict):
        for item in value.values():
            yield from _values(item)
    elif isinstance(value, list):
        for item in value:
            yield from _values(item)
    else:
        yield value


def test_vault_database_holds_no_cvc(traffic: Traffic, stack_info: StackInfo) -> None:
    """No column of the vault is a CVC (the *_check columns hold Stripe's check results), no value in
    any row is one, and the sealed plaintext is exactly the card number (no room for a CVC in it)."""
    columns, rows = asyncio.run(_vault_rows(stack_info.vault_dsn))
    cvc_columns = [c for c in columns if re.search("cvc|cvv|csc|security", c[1]) and not c[1].endswith("_check")]
    assert cvc_columns == []
    for table, table_rows in rows.items():
        for row in table_rows:
            for column, value in row.items():
                # Text and JSON text only: numbers (ids, years) hit 737 by chance; the bytea columns
                # (ciphertext, nonces, wrapped keys) are checked by length below.
                assert not any(isinstance(v, str) and v in CVCS for v in _values(value)), (
                    f"{table}.{column} holds a CVC")
    by_token = {row["token"]: row for row in rows["cards"]}
    for token, number in traffic.tokens.items():
        # AES-GCM: ciphertext = plaintext + 16-byte tag, and the plaintext is the card number alone.
        assert len(bytes(by_token[token]["ciphertext"])) == len(number) + 16
        assert by_token[token]["cvc_check"] in ("unchecked", "pass", "fail", "unavailable")


# ---- files ---------------------------------------------------------------------------------------

def _scan_files(paths: Iterable[Path], where: str) -> tuple[int, list[str]]:
    scanned, findings = 0, []
    for path in paths:
        if path.is_file():
            scanned += 1
            findings += find_card_data(path.read_bytes(), f"{where} {path}")
    return scanned, findings


def test_log_files_hold_no_card_data(traffic: Traffic, stack_info: StackInfo) -> None:
    log_dir = Path(stack_info.data_dir) / "logs"
    scanned, findings = _scan_files(sorted(log_dir.rglob("*")), "log file")
    assert scanned >= 3 and findings == []


def test_bank_journal_holds_no_card_data(traffic: Traffic, stack_info: StackInfo) -> None:
    journal = Path(stack_info.bank_journal)
    paths = [journal, *journal.parent.glob(journal.name + "-*")]  # the SQLite WAL and shm too
    scanned, findings = _scan_files(paths, "bank journal")
    assert scanned >= 1 and findings == []


def ray_log_dir() -> Path:
    """This stack's Ray session (the fixture's driver runs in this process). `session_latest` may be
    another stack's when several run on one machine, so it is only the fallback."""
    node = getattr(ray._private.worker, "_global_node", None)
    if ray.is_initialized() and node is not None:
        return Path(node.get_session_dir_path()) / "logs"
    return Path("/tmp/ray/session_latest/logs")


def test_ray_session_logs_hold_no_card_data(traffic: Traffic, stack_info: StackInfo) -> None:
    log_dir = ray_log_dir()
    workers = list(log_dir.glob("worker-*.err"))
    assert workers, f"no actor logs under {log_dir}"
    scanned, findings = _scan_files(sorted(log_dir.rglob("*")), "ray log")
    assert scanned > len(workers) and findings == []


# ---- Kafka ---------------------------------------------------------------------------------------

async def _all_messages(bootstrap: str, idle_ms: int = 500) -> tuple[list[str], list[bytes]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = sorted(await admin.list_topics())
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    partitions = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions) if partitions else {}
        return topics, await _drain(consumer, ends, idle_ms)
    finally:
        await consumer.stop()


async def _drain(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], idle_ms: int) -> list[bytes]:
    messages: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + 60
    while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
        assert asyncio.get_running_loop().time() < deadline, "Kafka did not deliver up to the end offsets"
        batches = await consumer.getmany(timeout_ms=idle_ms)
        for records in batches.values():
            for record in records:
                headers = b"".join(k.encode() + b"=" + (v or b"") for k, v in record.headers or ())
                messages.append((record.key or b"") + b"\n" + (record.value or b"") + b"\n" + headers)
    return messages


async def _messages_with(bootstrap: str, needle: bytes, timeout_s: float = 30.0) -> tuple[list[str], list[bytes]]:
    """Every message of every topic, once the outbox relay has published the one naming `needle`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        topics, messages = await _all_messages(bootstrap)
        if any(needle in m for m in messages) or asyncio.get_running_loop().time() > deadline:
            return topics, messages
        await asyncio.sleep(0.5)


def test_kafka_topics_hold_no_card_data(traffic: Traffic, stack_info: StackInfo) -> None:
    last_payment = traffic.payments["pm_card_chargeDeclined"]["error"]["payment_intent"]["id"]
    topics, messages = asyncio.run(_messages_with(stack_info.kafka_bootstrap, last_payment.encode()))
    assert "paygate.events" in topics
    assert any(last_payment.encode() in m for m in messages)  # the workload's events are there
    findings = [f for i, m in enumerate(messages) for f in find_card_data(m, f"kafka message {i}")]
    assert findings == []


# ---- a card number where an id belongs -----------------------------------------------------------

MISPLACED = ["4111111111111111", "4012888888881881"]  # not in the workload above: this test is independent


def test_a_card_number_sent_as_an_id_is_not_echoed(api: httpx.Client) -> None:
    """A merchant who sends a raw card number where a `pm_` id belongs gets a 4xx that does not repeat it."""
    responses = [
        api.get(f"/v1/payment_methods/{MISPLACED[0]}"),
        api.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "payment_method": MISPLACED[1],
                                              "confirm": "true"}),
    ]
    assert [r.status_code for r in responses] == [404, 400]
    numbers = pan_regex(MISPLACED)
    assert [r.text for r in responses if numbers.search(r.content)] == []
