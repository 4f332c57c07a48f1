"""Reconciliation against the real stack: real payments through the gateway, banksim's settlement
file written from its journal, the Reconciler actor (and `paygate reconcile`) matching it against
the ledger. Each test uses fresh merchants and filters the day's file to them (`merchants=`), since
other tests share the bank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from actors.registry import RECONCILER
from banksim.journal import Journal
from banksim.settlement import write_settlement_file
from cluster.stack import LocalStack, StackInfo
from tests.bank import NEVER_ANSWER_CARD, assert_bank_matches_ledger, ledger, tokenize, wait_until
from tests.conftest import Merchant

ZERO = {"matched": 0, "missing_in_ledger": 0, "missing_in_settlement": 0, "amount_mismatch": 0,
        "currency_mismatch": 0, "duplicate": 0, "timing": 0}


# ---- helpers -------------------------------------------------------------------------------------

def _today() -> date:
    """Today (UTC); waits out the last 90 s before midnight so a test's traffic stays on one day."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    if midnight - now < timedelta(seconds=90):
        time.sleep((midnight - now).total_seconds() + 1)
    return datetime.now(UTC).date()


def _reconciler(live_stack: LocalStack) -> Any:
    return ray.get_actor(RECONCILER, namespace=live_stack.resolved.ray_namespace)


def _reconcile(live_stack: LocalStack, day: date, file: Path | None, merchants: list[str] | None,
               **kwargs: Any) -> dict[str, Any]:
    actor = _reconciler(live_stack)
    return dict(ray.get(actor.reconcile.remote(day.isoformat(), str(file) if file else None, merchants, **kwargs),
                        timeout=120))


def _settlement(stack_info: StackInfo, day: date, out: Path, merchants: list[str], *faults: str) -> Path:
    return write_settlement_file(stack_info.bank_journal, day, out, merchants=merchants, faults=list(faults))


def _pay(api: httpx.Client, amount: int, currency: str = "usd", pm: str = "pm_card_visa",
         **extra: str) -> httpx.Response:
    return api.post("/v1/payment_intents", data={"amount": str(amount), "currency": currency, "payment_method": pm,
                                                 "confirm": "true", **extra})


def _captured(api: httpx.Client, amount: int, currency: str = "usd") -> dict[str, Any]:
    response = _pay(api, amount, currency)
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    return dict(response.json())


def _authorized(api: httpx.Client, amount: int, currency: str = "usd") -> dict[str, Any]:
    response = _pay(api, amount, currency, capture_method="manual")
    assert response.status_code == 200 and response.json()["status"] == "requires_capture", response.text
    return dict(response.json())


def _refund(api: httpx.Client, payment_id: str, amount: int | None = None) -> dict[str, Any]:
    data = {"payment_intent": payment_id} | ({"amount": str(amount)} if amount else {})
    response = api.post("/v1/refunds", data=data)
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    return dict(response.json())


def _capture_rrn(stack_info: StackInfo, payment_id: str) -> str:
    [row] = ledger(stack_info, "SELECT capture_rrn FROM payment_orders WHERE id = $1", payment_id)
    assert row["capture_rrn"], f"{payment_id} has no capture RRN"
    return str(row["capture_rrn"])


def _refund_rrn(stack_info: StackInfo, refund_id: str) -> str:
    [row] = ledger(stack_info, "SELECT rrn FROM refunds WHERE id = $1", refund_id)
    return str(row["rrn"])


def _side(count: int, captured: int, refunded: int) -> dict[str, int]:
    return {"count": count, "captured": captured, "refunded": refunded, "net": captured - refunded}


def _items(run: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for item in run["discrepancy_items"]:
        found.setdefault((item["classification"], item["rrn"]), []).append(item)
    return found


def _table_counts(stack_info: StackInfo) -> dict[str, Any]:
    [row] = ledger(stack_info, "SELECT (SELECT count(*) FROM reconciliation_runs) AS runs, "
                               "(SELECT count(*) FROM reconciliation_items) AS items, "
                               "(SELECT count(*) FROM reconciliation_resolutions) AS resolutions, "
                               "(SELECT max(updated_at) FROM reconciliation_runs) AS last_update, "
                               "(SELECT sum(attempts) FROM reconciliation_runs) AS attempts, "
                               "(SELECT count(*) FROM ledger_entries) AS entries")
    return row


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", "reconcile", *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "COLUMNS": "200"})


# ---- a normal day --------------------------------------------------------------------------------

def test_a_day_of_mixed_traffic_reconciles_with_zero_discrepancies(
        live_stack: LocalStack, stack_info: StackInfo, api: httpx.Client, merchant: Merchant,
        admin: httpx.Client, base_url: str, tmp_path: Path) -> None:
    day = _today()
    automatic = _captured(api, 1000)
    full = _authorized(api, 2500)
    assert api.post(f"/v1/payment_intents/{full['id']}/capture").json()["status"] == "succeeded"
    partial = _authorized(api, 4000)
    captured = api.post(f"/v1/payment_intents/{partial['id']}/capture", data={"amount_to_capture": "1500"}).json()
    assert (captured["status"], captured["amount_received"]) == ("succeeded", 1500)
    euro = _captured(api, 777, "eur")
    for payment in (automatic, full, partial, euro):
        assert_bank_matches_ledger(stack_info, payment["id"])  # (before refunds: it checks captures)
    _refund(api, automatic["id"], 300)
    _refund(api, full["id"])
    _refund(api, euro["id"], 77)
    declined = _pay(api, 1200, pm="pm_card_chargeDeclined")
    assert declined.status_code == 402
    canceled = _authorized(api, 900)
    assert api.post(f"/v1/payment_intents/{canceled['id']}/cancel").json()["status"] == "canceled"
    timeout = _pay(api, 1300, pm=tokenize(api, NEVER_ANSWER_CARD))  # the bank never answers: reversed
    assert timeout.status_code >= 400, timeout.text
    timed_out = timeout.json()["error"]["payment_intent"]["id"]
    wait_until(lambda: api.get(f"/v1/payment_intents/{timed_out}").json()["status"] != "processing", 60,
               what="the timed-out payment to settle")
    assert_bank_matches_ledger(stack_info, canceled["id"])

    file = _settlement(stack_info, day, tmp_path / "settlement.csv", [merchant.id])
    run = _reconcile(live_stack, day, file, [merchant.id])
    assert run["status"] == "balanced" and run["discrepancies"] == 0, run["discrepancy_items"]
    assert run["counts"] == {**ZERO, "matched": 7}  # 4 captures, 3 refunds; nothing else settles
    usd, eur = _side(5, 5000, 2800), _side(2, 777, 77)
    assert run["totals"] == {"eur": {"settlement": eur, "ledger": eur, "difference": 0},
                             "usd": {"settlement": usd, "ledger": usd, "difference": 0}}
    receivable = {r["currency"]: r["net"] for r in ledger(
        stack_info, "SELECT currency, sum(amount)::bigint AS net FROM ledger_entries "
                    "WHERE merchant_id = $1 AND account = 'acquirer_receivable' GROUP BY currency", merchant.id)}
    assert receivable == {"usd": 2200, "eur": 700}  # the books say what the bank settles, to the cent
    assert run["resolutions"] == [] and run["unresolved"] == []

    again = _reconcile(live_stack, day, file, [merchant.id])  # idempotent: the day's run, replaced
    assert (again["id"], again["attempts"]) == (run["id"], 2)
    assert (again["counts"], again["totals"], again["status"]) == (run["counts"], run["totals"], "balanced")

    listed = admin.get("/v1/reconciliation/runs", params={"business_date": day.isoformat(), "limit": "100"})
    assert listed.status_code == 200 and run["id"] in [r["id"] for r in listed.json()["data"]]
    detail = admin.get(f"/v1/reconciliation/runs/{run['id']}").json()
    assert detail["items"]["data"] == [] and detail["counts"] == run["counts"] and detail["merchants"] == [merchant.id]
    every = admin.get(f"/v1/reconciliation/runs/{run['id']}", params={"classification": "all"}).json()
    assert [i["classification"] for i in every["items"]["data"]] == ["matched"] * 7
    assert {i["object_id"] for i in every["items"]["data"] if i["type"] == "capture"} == {
        automatic["id"], full["id"], partial["id"], euro["id"]}
    with httpx.Client(base_url=base_url, auth=(merchant.key, "")) as as_merchant:
        assert as_merchant.get("/v1/reconciliation/runs").status_code == 401
        assert as_merchant.get(f"/v1/reconciliation/runs/{run['id']}").status_code == 401
    assert admin.get("/v1/reconciliation/runs/rcn_nope").status_code == 404

    # `paygate reconcile` without --file: banksim writes the day's file; same day and scope again.
    out = tmp_path / "reports"
    done = _cli("--date", day.isoformat(), "--merchant", merchant.id, "--out", str(out),
                "--data-dir", stack_info.data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BALANCED" in done.stdout and "matched" in done.stdout
    report = json.loads(next(out.glob("reconciliation-*.json")).read_text())
    assert (report["id"], report["attempts"], report["totals"]) == (run["id"], 3, run["totals"])
    rows = next(out.glob("reconciliation-*.csv")).read_text().splitlines()
    assert len(rows) == 1 + 7 and rows[0].startswith("seq,classification,type,rrn")


# ---- every fault flag ----------------------------------------------------------------------------

def test_each_fault_is_detected_and_classified_with_totals_to_the_cent(
        live_stack: LocalStack, stack_info: StackInfo, api: httpx.Client, merchant: Merchant,
        admin: httpx.Client, tmp_path: Path) -> None:
    day = _today()
    dropped, changed, doubled, shifted, fine = (_captured(api, amount) for amount in (1000, 2000, 3000, 4000, 5000))
    euro = _captured(api, 600, "eur")
    refund = _refund(api, changed["id"], 500)
    rrn = {name: _capture_rrn(stack_info, p["id"]) for name, p in
           (("dropped", dropped), ("changed", changed), ("doubled", doubled), ("shifted", shifted),
            ("fine", fine), ("euro", euro))}
    rrn["refund"] = _refund_rrn(stack_info, refund["id"])
    unknown = f"UNK{uuid.uuid4().int % 10**9:09d}"
    faults = [f"drop:{rrn['dropped']}", f"amount:{rrn['changed']}=1999", f"duplicate:{rrn['doubled']}",
              f"unknown:{unknown}=4242", f"shift:{rrn['shifted']}", f"currency:{rrn['euro']}=gbp"]
    file = _settlement(stack_info, day, tmp_path / "faulty.csv", [merchant.id], *faults)
    run = _reconcile(live_stack, day, file, [merchant.id])

    assert run["status"] == "discrepancies" and run["discrepancies"] == 6
    assert run["counts"] == {**ZERO, "matched": 3, "missing_in_settlement": 2, "amount_mismatch": 1,
                             "duplicate": 1, "missing_in_ledger": 1, "currency_mismatch": 1}
    found = _items(run)
    [drop] = found[("missing_in_settlement", rrn["dropped"])]
    assert (drop["object_id"], drop["ledger_amount"], drop["settlement_amount"], drop["line"]) == (
        dropped["id"], 1000, None, None)
    [amount] = found[("amount_mismatch", rrn["changed"])]
    assert (amount["settlement_amount"], amount["ledger_amount"], amount["object_id"]) == (1999, 2000, changed["id"])
    [dup] = found[("duplicate", rrn["doubled"])]
    assert dup["settlement_amount"] == 3000 and dup["ledger_amount"] is None and dup["note"].startswith("also on line")
    [unk] = found[("missing_in_ledger", unknown)]
    assert (unk["settlement_amount"], unk["settlement_currency"], unk["object_id"]) == (4242, "usd", None)
    [late] = found[("missing_in_settlement", rrn["shifted"])]
    assert late["ledger_amount"] == 4000 and late["resolution"] is None
    [cur] = found[("currency_mismatch", rrn["euro"])]
    assert (cur["settlement_currency"], cur["ledger_currency"], cur["settlement_amount"]) == ("gbp", "eur", 600)
    # The file: 1999 + 3000 + 3000 + 5000 + 4242 captured, 500 refunded in usd; 600 in gbp.
    # The ledger: 1000 + 2000 + 3000 + 4000 + 5000 captured, 500 refunded in usd; 600 in eur.
    assert run["totals"] == {
        "eur": {"settlement": _side(0, 0, 0), "ledger": _side(1, 600, 0), "difference": -600},
        "gbp": {"settlement": _side(1, 600, 0), "ledger": _side(0, 0, 0), "difference": 600},
        "usd": {"settlement": _side(6, 17241, 500), "ledger": _side(6, 15000, 500),
                "difference": -1000 - 1 + 3000 + 4242 - 4000},
    }

    # The shifted transaction settles in the next day's file: `timing` there, `settled_late` here.
    next_day = day + timedelta(days=1)
    next_file = _settlement(stack_info, next_day, tmp_path / "next.csv", [merchant.id], f"shift:{rrn['shifted']}")
    following = _reconcile(live_stack, next_day, next_file, [merchant.id])
    assert following["counts"] == {**ZERO, "timing": 1}
    [timing] = following["discrepancy_items"]
    assert (timing["rrn"], timing["object_id"], timing["settlement_amount"], timing["ledger_amount"]) == (
        rrn["shifted"], shifted["id"], 4000, 4000)
    assert following["totals"] == {"usd": {"settlement": _side(1, 4000, 0), "ledger": _side(1, 4000, 0),
                                           "difference": 0}}
    earlier = admin.get(f"/v1/reconciliation/runs/{run['id']}",
                        params={"classification": "missing_in_settlement"}).json()["items"]["data"]
    settled_late = {i["rrn"]: (i["resolution"], i["resolved_by_run"]) for i in earlier}
    assert settled_late == {rrn["dropped"]: (None, None), rrn["shifted"]: ("settled_late", following["id"])}

    # Rerunning the first day now gives the same classification, and keeps the late settlement.
    again = _reconcile(live_stack, day, file, [merchant.id])
    assert (again["id"], again["counts"], again["totals"]) == (run["id"], run["counts"], run["totals"])
    assert _items(again)[("missing_in_settlement", rrn["shifted"])][0]["resolution"] == "settled_late"
    # A file carrying an already settled transaction again, a day later: duplicate.
    replay = _settlement(stack_info, next_day, tmp_path / "replay.csv", [merchant.id],
                         f"shift:{rrn['shifted']}", f"shift:{rrn['fine']}")
    text = replay.read_text()
    assert rrn["fine"] in text
    replayed = _reconcile(live_stack, next_day, replay, [merchant.id])
    assert replayed["counts"] == {**ZERO, "timing": 1, "duplicate": 1} and replayed["id"] == following["id"]


# ---- damaged files -------------------------------------------------------------------------------

def _edit(path: Path, out: Path, line: int, change: Any) -> Path:
    lines = path.read_text().splitlines()
    lines[line - 1] = change(lines[line - 1])
    out.write_text("\n".join(lines) + "\n")
    return out


def test_truncated_or_tampered_files_are_rejected_without_writing_anything(
        live_stack: LocalStack, stack_info: StackInfo, api: httpx.Client, merchant: Merchant,
        tmp_path: Path) -> None:
    day = _today()
    payment = _captured(api, 2100)
    rrn = _capture_rrn(stack_info, payment["id"])
    _refund(api, payment["id"], 100)
    good = _settlement(stack_info, day, tmp_path / "good.csv", [merchant.id])
    first = _reconcile(live_stack, day, good, [merchant.id])
    assert first["status"] == "balanced"
    before = _table_counts(stack_info)

    def amount_to(value: str) -> Any:
        return lambda text: ",".join(value if i == 7 else f for i, f in enumerate(text.split(",")))

    bad = {
        "truncated": (_settlement(stack_info, day, tmp_path / "t.csv", [merchant.id], "truncate"), 5),
        "cut mid-file": (_settlement(stack_info, day, tmp_path / "c.csv", [merchant.id], "truncate:3"), 3),
        "tampered": (_settlement(stack_info, day, tmp_path / "x.csv", [merchant.id], f"tamper:{rrn}=2000"), 4),
        "edited by hand": (_edit(good, tmp_path / "e.csv", 2, amount_to("2101")), 4),
        "not a number": (_edit(good, tmp_path / "n.csv", 3, amount_to("1O0")), 3),
        "trailer count": (_edit(good, tmp_path / "r.csv", 5, lambda _: "TRL,3,5"), 5),
    }
    for name, (path, line) in bad.items():
        with pytest.raises(Exception) as error:
            _reconcile(live_stack, day, path, [merchant.id])
        assert f"line {line}:" in str(error.value), (name, str(error.value)[-400:])
        assert _table_counts(stack_info) == before, name
    wrong_day = _settlement(stack_info, day, tmp_path / "w.csv", [merchant.id])
    with pytest.raises(Exception, match=f"line 1: the file is for {day}"):
        _reconcile(live_stack, day - timedelta(days=1), wrong_day, [merchant.id])
    rejected = _cli("--date", day.isoformat(), "--file", str(bad["tampered"][0]), "--merchant", merchant.id,
                    "--out", str(tmp_path / "reports"), "--data-dir", stack_info.data_dir)
    assert rejected.returncode == 3, rejected.stdout + rejected.stderr
    assert "rejected, nothing was written: line 4: usd totals do not add up" in rejected.stderr
    assert _table_counts(stack_info) == before and not (tmp_path / "reports").exists()


# ---- unknown outcomes ----------------------------------------------------------------------------

@contextmanager
def _bank_stopped(live_stack: LocalStack) -> Iterator[int]:
    assert live_stack.banksim is not None and live_stack.banksim.pid is not None
    pid = live_stack.banksim.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def _bank_operations(stack_info: StackInfo, rrns: set[str]) -> set[str]:
    journal = Journal(stack_info.bank_journal)
    try:
        return {op.rrn for op in journal.operations() if op.rrn in rrns and op.kind in ("capture", "refund")}
    finally:
        journal.close()


def test_unknown_outcomes_are_settled_from_the_file(
        live_stack: LocalStack, stack_info: StackInfo, base_url: str, api: httpx.Client, merchant: Merchant,
        tmp_path: Path) -> None:
    day = _today()
    to_capture = _authorized(api, 3300)
    to_refund = _captured(api, 5000)
    with _bank_stopped(live_stack) as pid:
        # The bank hangs: the capture and the refund are sent, retransmitted, never answered.
        def post(path: str, data: dict[str, str]) -> httpx.Response:
            with httpx.Client(base_url=base_url, auth=(merchant.key, ""), timeout=60) as client:
                return client.post(path, data=data)

        with ThreadPoolExecutor(2) as pool:
            capture = pool.submit(post, f"/v1/payment_intents/{to_capture['id']}/capture",
                                  {"amount_to_capture": "3000"})
            refund = pool.submit(post, "/v1/refunds", {"payment_intent": to_refund["id"], "amount": "1200"})
            capture_response, refund_response = capture.result(), refund.result()
        assert capture_response.status_code >= 500, capture_response.text
        assert refund_response.json()["status"] == "pending", refund_response.text
        [payment] = ledger(stack_info, "SELECT * FROM payment_orders WHERE id = $1", to_capture["id"])
        assert (payment["status"], payment["bank_phase"], payment["pending_amount"]) == (
            "processing", "capturing", 3000)
        capture_rrn, refund_rrn = payment["pending_rrn"], _refund_rrn(stack_info, refund_response.json()["id"])
        # The bank wakes up just long enough to act on what it received (its answers are too late), then
        # hangs again before paygate's recovery sweep could retransmit and learn the outcome itself.
        os.kill(pid, signal.SIGCONT)
        try:
            wait_until(lambda: _bank_operations(stack_info, {capture_rrn, refund_rrn}) == {capture_rrn, refund_rrn},
                       10, interval_s=0.02, what="the bank to journal the capture and the refund")
        finally:
            os.kill(pid, signal.SIGSTOP)
        assert ledger(stack_info, "SELECT status FROM payment_orders WHERE id = $1", to_capture["id"])[0][
            "status"] == "processing"
        entries_before = _table_counts(stack_info)["entries"]

        tampered = _settlement(stack_info, day, tmp_path / "tampered.csv", [merchant.id], f"tamper:{capture_rrn}=3001")
        with pytest.raises(Exception, match="usd totals do not add up"):
            _reconcile(live_stack, day, tampered, [merchant.id], in_doubt_after_s=3)
        [still] = ledger(stack_info, "SELECT status, amount_received FROM payment_orders WHERE id = $1",
                         to_capture["id"])
        assert (still["status"], still["amount_received"]) == ("processing", 0)  # a rejected file settles nothing
        assert _table_counts(stack_info)["entries"] == entries_before

        file = _settlement(stack_info, day, tmp_path / "settlement.csv", [merchant.id])
        run = _reconcile(live_stack, day, file, [merchant.id], in_doubt_after_s=3)
    assert run["status"] == "balanced", run["discrepancy_items"]
    assert run["counts"] == {**ZERO, "matched": 3}  # the two captures and the refund
    assert run["resolved"] == 2 and {(r["type"], r["object_id"], r["action"]) for r in run["resolutions"]} == {
        ("capture", to_capture["id"], "capture_booked"), ("refund", refund_response.json()["id"], "refund_booked")}
    assert run["unresolved"] == []
    settled = api.get(f"/v1/payment_intents/{to_capture['id']}").json()
    assert (settled["status"], settled["amount_received"]) == ("succeeded", 3000)
    assert api.get(f"/v1/refunds/{refund_response.json()['id']}").json()["status"] == "succeeded"
    usd = _side(3, 8000, 1200)
    assert run["totals"] == {"usd": {"settlement": usd, "ledger": usd, "difference": 0}}

    # The bank is back; the recovery sweep finds nothing left to do, and nothing is booked twice.
    time.sleep(12)
    assert_bank_matches_ledger(stack_info, to_capture["id"])
    [refunded] = ledger(stack_info, "SELECT amount_refunded FROM payment_orders WHERE id = $1", to_refund["id"])
    assert refunded["amount_refunded"] == 1200
    booked = ledger(stack_info, "SELECT description, sum(amount)::bigint AS s FROM ledger_entries "
                                "WHERE merchant_id = $1 AND account = 'acquirer_receivable' GROUP BY description",
                    merchant.id)
    refund_id = refund_response.json()["id"]
    assert {b["description"]: b["s"] for b in booked} == {"capture": 8000, f"refund {refund_id}": -1200}
    again = _reconcile(live_stack, day, file, [merchant.id])
    assert (again["counts"], again["resolved"], again["resolutions"], again["attempts"]) == (
        run["counts"], 2, [], 2)


# ---- the daily schedule --------------------------------------------------------------------------

def test_the_daily_schedule_reconciles_the_previous_day_once(
        live_stack: LocalStack, stack_info: StackInfo, api: httpx.Client, admin: httpx.Client) -> None:
    day = _today()
    _captured(api, 4100)
    actor = _reconciler(live_stack)
    schedule = ray.get(actor.schedule.remote())
    assert schedule["at"] == "02:00" and schedule["running"] is True
    tomorrow = day + timedelta(days=1)
    assert ray.get(actor.tick.remote(f"{tomorrow}T01:59:00+00:00")) is None  # not due yet
    result = ray.get(actor.tick.remote(f"{tomorrow}T02:00:30+00:00"), timeout=120)
    assert result["status"] == "reconciled" and result["business_date"] == day.isoformat(), result
    inbox = Path(stack_info.data_dir) / "settlement" / "inbox" / f"settlement-{day}.csv"
    assert inbox.exists() and all(Path(p).exists() for p in result["reports"])
    run = admin.get(f"/v1/reconciliation/runs/{result['run']}").json()
    assert (run["scope"], run["business_date"], run["merchants"]) == ("all", day.isoformat(), None)
    # Every merchant of this session, unfiltered and without faults: the bank and the books agree.
    assert run["status"] == "balanced", run["items"]["data"][:20]
    assert run["counts"]["matched"] >= 1
    again = ray.get(actor.tick.remote(f"{tomorrow}T03:00:00+00:00"))
    assert again == {"status": "done", "business_date": day.isoformat(), "run": result["run"]}
