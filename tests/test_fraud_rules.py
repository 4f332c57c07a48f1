"""The merchant rules API (`/v1/risk/rules`) and each merchant rule firing on a real payment:
block lists, blocked countries, max amount, allow lists, score thresholds."""

from __future__ import annotations

import httpx
import pytest

from cluster.stack import StackInfo
from tests.conftest import Merchant
from tests.fraud_support import auth_rrns, bank_seen, is_blocked, new_card, outcome, pay


def _rules(api: httpx.Client) -> dict:
    response = api.get("/v1/risk/rules")
    assert response.status_code == 200, response.text
    return response.json()


def _set(api: httpx.Client, **form: str) -> dict:
    response = api.post("/v1/risk/rules", data=form)
    assert response.status_code == 200, response.text
    return response.json()


def test_defaults(api: httpx.Client, merchant: Merchant) -> None:
    rules = _rules(api)
    assert rules == {
        "object": "risk_rules", "merchant": merchant.id, "block_score": 75, "review_score": 65,
        "blocked_countries": [], "max_amount": {},
        "allow_list": {"fingerprint": [], "ip_address": [], "email": [], "device_id": []},
        "block_list": {"fingerprint": [], "ip_address": [], "email": [], "device_id": []},
        "updated": None, "livemode": False}


def test_update_merges_and_clears(api: httpx.Client) -> None:
    first = api.post("/v1/risk/rules", data={
        "block_score": "80", "review_score": "50", "blocked_countries[]": ["ng", "KP"],
        "max_amount[usd]": "100000", "max_amount[EUR]": "90000",
        "block_list[email][]": ["Fraud@Example.com"], "block_list[ip_address][]": ["203.0.113.0/24", "2001:db8::1"],
        "allow_list[device_id][]": ["trusted-device"]})
    assert first.status_code == 200, first.text
    rules = first.json()
    assert (rules["block_score"], rules["review_score"]) == (80, 50)
    assert rules["blocked_countries"] == ["KP", "NG"]
    assert rules["max_amount"] == {"usd": 100000, "eur": 90000}
    assert rules["block_list"]["email"] == ["fraud@example.com"]
    assert rules["block_list"]["ip_address"] == ["203.0.113.0/24", "2001:db8::1"]
    assert rules["allow_list"]["device_id"] == ["trusted-device"] and isinstance(rules["updated"], int)
    assert _rules(api) == rules

    # only what is named changes; an empty value clears
    second = _set(api, **{"max_amount[eur]": "", "block_list[email]": "", "review_score": "60"})
    assert second["max_amount"] == {"usd": 100000} and second["block_list"]["email"] == []
    assert second["block_list"]["ip_address"] == ["203.0.113.0/24", "2001:db8::1"]
    assert (second["block_score"], second["review_score"], second["blocked_countries"]) == (80, 60, ["KP", "NG"])
    third = _set(api, blocked_countries="", allow_list="")
    assert third["blocked_countries"] == [] and third["allow_list"]["device_id"] == []

    # JSON bodies work too
    response = api.post("/v1/risk/rules", json={"block_list": {"fingerprint": ["AbCdEf123456"]}, "block_score": 90})
    assert response.status_code == 200, response.text
    assert response.json()["block_list"]["fingerprint"] == ["AbCdEf123456"] and response.json()["block_score"] == 90


@pytest.mark.parametrize(("form", "param", "code"), [
    ({"block_score": "abc"}, "block_score", "parameter_invalid_integer"),
    ({"block_score": "0"}, "block_score", "parameter_invalid_integer"),
    ({"review_score": "101"}, "review_score", "parameter_invalid_integer"),
    ({"review_score": "90"}, "review_score", "parameter_invalid_integer"),  # above the default block_score
    ({"block_score": "50"}, "block_score", "parameter_invalid_integer"),  # below the default review_score
    ({"blocked_countries[]": ["US", "USA"]}, "blocked_countries[1]", "parameter_invalid_string"),
    ({"blocked_countries": "US"}, "blocked_countries", "parameter_invalid_string"),
    ({"max_amount[xyz]": "100"}, "max_amount[xyz]", "parameter_invalid_string"),
    ({"max_amount[usd]": "-5"}, "max_amount[usd]", "parameter_invalid_integer"),
    ({"max_amount": "100"}, "max_amount", "parameter_invalid_string"),
    ({"block_list[ip_address][]": ["1.2.3.4", "not-an-ip"]}, "block_list[ip_address][1]", "parameter_invalid_string"),
    ({"block_list[email][]": ["nobody"]}, "block_list[email][0]", "parameter_invalid_string"),
    ({"allow_list[fingerprint][]": ["short"]}, "allow_list[fingerprint][0]", "parameter_invalid_string"),
    ({"block_list[phone][]": ["1"]}, "block_list[phone]", "parameter_unknown"),
    ({"block_list": "x@y.z"}, "block_list", "parameter_invalid_string"),
    ({"velocity": "1"}, "velocity", "parameter_unknown"),
])
def test_validation_names_the_param_and_writes_nothing(api: httpx.Client, form: dict, param: str,
                                                       code: str) -> None:
    before = _set(api, **{"max_amount[usd]": "5000", "block_list[email][]": ["keep@example.com"]})
    # a bad entry alongside good ones: the whole update is refused
    response = api.post("/v1/risk/rules", data={"block_score": "74", **form})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code), error
    assert _rules(api) == before


def test_rules_are_per_merchant(api: httpx.Client, admin: httpx.Client, base_url: str) -> None:
    _set(api, **{"block_list[email][]": ["someone@example.com"], "block_score": "70"})
    other = admin.post("/v1/admin/merchants", data={"name": "rules isolation"}).json()
    with httpx.Client(base_url=base_url, auth=(other["secret_key"], ""), timeout=60) as other_api:
        assert _rules(other_api)["block_score"] == 75
        assert _rules(other_api)["block_list"]["email"] == []
        payment = pay(other_api, "pm_card_visa", risk={"email": "someone@example.com"})
        assert payment["status"] == "succeeded"
    assert is_blocked(pay(api, "pm_card_visa", risk={"email": "someone@example.com"}))


def test_rules_need_a_key(base_url: str) -> None:
    assert httpx.get(f"{base_url}/v1/risk/rules").status_code == 401


def test_block_lists_fire_and_name_their_rule(api: httpx.Client, stack_info: StackInfo) -> None:
    stolen = new_card(api)
    _set(api, **{"block_list[fingerprint][]": [stolen["card"]["fingerprint"]],
                 "block_list[ip_address][]": ["203.0.113.0/24"], "block_list[email][]": ["Fraud@Example.com"],
                 "block_list[device_id][]": ["emulator-13"]})
    cases = [
        (stolen["id"], {}, "block_list:fingerprint"),
        (new_card(api)["id"], {"ip_address": "203.0.113.9"}, "block_list:ip_address"),
        (new_card(api)["id"], {"email": "fraud@example.COM"}, "block_list:email"),
        (new_card(api)["id"], {"device_id": "emulator-13"}, "block_list:device_id"),
    ]
    blocked = []
    for pm, risk, rule in cases:
        payment = pay(api, pm, risk=risk)
        assert is_blocked(payment), (rule, payment)
        shown = outcome(api, payment["id"])
        assert shown["type"] == "blocked" and shown["rule"] == rule and shown["rules"][0] == rule
        assert shown["reason"] == "rule"
        blocked.append(payment["id"])
    # a clean payment still goes through, and nothing blocked reached the bank
    clean = pay(api, new_card(api)["id"], risk={"ip_address": "203.0.114.9", "email": "ok@example.com"})
    assert clean["status"] == "succeeded"
    assert sum(bank_seen(stack_info, auth_rrns(stack_info, blocked).values()).values()) == 0


def test_country_mismatch_and_blocked_countries(api: httpx.Client) -> None:
    mismatch = pay(api, "pm_card_visa", risk={"ip_address": "200.160.2.3", "country": "BR"})
    assert mismatch["status"] == "succeeded"
    shown = outcome(api, mismatch["id"])
    assert shown["rules"] == ["country_mismatch"] and shown["risk_score"] == 45 and shown["risk_level"] == "normal"
    assert outcome(api, pay(api, "pm_card_visa", risk={"country": "us"})["id"])["rules"] == []

    _set(api, **{"blocked_countries[]": ["BR"]})
    blocked = pay(api, "pm_card_visa", risk={"ip_address": "200.160.2.3", "country": "BR"})
    assert is_blocked(blocked)
    shown = outcome(api, blocked["id"])
    assert shown["rule"] == "blocked_country" and shown["rules"] == ["blocked_country", "country_mismatch"]
    # the card's own country counts too
    _set(api, **{"blocked_countries[]": ["US"]})
    assert outcome(api, pay(api, "pm_card_visa")["id"])["rule"] == "blocked_country"


def test_max_amount(api: httpx.Client) -> None:
    _set(api, **{"max_amount[usd]": "10000"})
    assert pay(api, new_card(api)["id"], amount=10000)["status"] == "succeeded"
    over = pay(api, new_card(api)["id"], amount=10001)
    assert is_blocked(over) and outcome(api, over["id"])["rules"] == ["max_amount"]
    assert pay(api, new_card(api)["id"], amount=10001, currency="eur")["status"] == "succeeded"  # usd only


def test_score_thresholds_and_allow_list(api: httpx.Client) -> None:
    risk = {"ip_address": "200.160.2.3", "country": "BR", "email": "vip@example.com"}
    _set(api, block_score="40", review_score="30")
    blocked = pay(api, "pm_card_visa", risk=risk)  # country_mismatch alone is 45
    assert is_blocked(blocked)
    shown = outcome(api, blocked["id"])
    assert shown["reason"] == "highest_risk_level" and shown["risk_level"] == "highest"

    _set(api, **{"allow_list[email][]": ["VIP@example.com"]})
    allowed = pay(api, "pm_card_visa", risk=risk)
    assert allowed["status"] == "succeeded"
    assert outcome(api, allowed["id"])["rules"] == ["allow_list:email", "country_mismatch"]
    # a block list entry wins over the allow list
    _set(api, **{"block_list[ip_address][]": ["200.160.2.3"]})
    assert outcome(api, pay(api, "pm_card_visa", risk=risk)["id"])["rule"] == "block_list:ip_address"
