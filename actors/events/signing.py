"""Webhook signatures as Stripe makes them: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256>`
over `"<t>.<body>"` with the endpoint's `whsec_…` secret, so `stripe.Webhook.construct_event`
verifies them."""

from __future__ import annotations

import hashlib
import hmac
import time


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"
