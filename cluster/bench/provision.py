"""Setting up before the load and tidying after: the bench's merchants (rate limits raised so the
bench measures the gateway, not the limiter) and one webhook endpoint each, pointing at the
bench's receiver. Plain httpx: this runs before and after the measured window."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from cluster.bench.client import Endpoint, RequestBuilder

UNLIMITED = "1000000"


class ProvisionError(RuntimeError):
    pass


@dataclass
class Merchant:
    id: str | None  # None when benching with a given key: learnt from the ledger at audit time
    key: str
    requests: RequestBuilder
    webhook_endpoint: str | None = None
    webhook_secret: str | None = None


def _check(response: httpx.Response, what: str) -> dict:
    if response.status_code != 200:
        raise ProvisionError(f"{what} failed ({response.status_code}): {response.text[:300]}")
    return dict(response.json())


def create_merchants(base_url: str, admin_key: str, count: int, run_id: str) -> list[Merchant]:
    endpoint = Endpoint.parse(base_url)
    merchants = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30,
                      verify=False) as admin:
        for index in range(count):
            body = _check(admin.post("/v1/admin/merchants", data={"name": f"bench {run_id} #{index + 1}"}),
                          "creating a bench merchant")
            _check(admin.post(f"/v1/admin/merchants/{body['id']}/rate_limit",
                              data={"rate": UNLIMITED, "burst": UNLIMITED}), "raising its rate limit")
            merchants.append(Merchant(body["id"], body["secret_key"], RequestBuilder(endpoint, body["secret_key"])))
    return merchants


def given_merchant(base_url: str, key: str) -> Merchant:
    return Merchant(None, key, RequestBuilder(Endpoint.parse(base_url), key))


def add_webhook_endpoints(base_url: str, merchants: list[Merchant], receiver_url: str) -> None:
    for index, merchant in enumerate(merchants):
        path = webhook_path(merchant, index)
        with httpx.Client(base_url=base_url, auth=(merchant.key, ""), timeout=30, verify=False) as api:
            body = _check(api.post("/v1/webhook_endpoints", data={"url": receiver_url + path,
                                                                  "enabled_events[]": "*"}),
                          "creating the bench's webhook endpoint")
        merchant.webhook_endpoint, merchant.webhook_secret = body["id"], body["secret"]


def remove_webhook_endpoints(base_url: str, merchants: list[Merchant]) -> None:
    """Best effort: the receiver is going away, so nothing should keep trying to reach it."""
    for merchant in merchants:
        if not merchant.webhook_endpoint:
            continue
        try:
            with httpx.Client(base_url=base_url, auth=(merchant.key, ""), timeout=10, verify=False) as api:
                api.delete(f"/v1/webhook_endpoints/{merchant.webhook_endpoint}")
        except httpx.HTTPError:
            pass


def webhook_path(merchant: Merchant, index: int) -> str:
    return f"/wh/{merchant.id or f'm{index}'}"
