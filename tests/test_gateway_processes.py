"""More than one gateway process on one cluster, as behind a load balancer: the rate limit is
shared, and TLS is served when PAYGATE_TLS_CERT / PAYGATE_TLS_KEY are set."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster.procs import ChildProcess, free_port
from cluster.stack import LocalStack
from tests.conftest import Merchant


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_gateway(live_stack: LocalStack, tmp_path: Path) -> Iterator[str]:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = {**live_stack.gateway_env(), "PAYGATE_HTTP_PORT": str(port), "PAYGATE_TLS_CERT": str(cert),
           "PAYGATE_TLS_KEY": str(key)}
    process = ChildProcess("gateway-tls", [sys.executable, "-m", "gateway"], tmp_path / "gateway.out", env=env).start()
    try:
        process.wait_listening("127.0.0.1", port, timeout=120)
        yield f"https://127.0.0.1:{port}"
    finally:
        process.stop()


def test_a_second_gateway_serves_tls(tls_gateway: str, merchant: Merchant) -> None:
    response = httpx.get(f"{tls_gateway}/v1/payment_intents", auth=(merchant.key, ""), verify=False, timeout=30)
    assert response.status_code == 200, response.text
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_gateway.replace("https", "http") + "/healthz", timeout=5)


def test_rate_limit_is_shared_between_gateways(tls_gateway: str, base_url: str, admin: httpx.Client,
                                               merchant: Merchant) -> None:
    limit = admin.post(f"/v1/admin/merchants/{merchant.id}/rate_limit", data={"rate": "1", "burst": "10"})
    assert limit.status_code == 200
    with httpx.Client(auth=(merchant.key, ""), verify=False, timeout=30) as client:
        statuses = [client.get(f"{url}/v1/payment_intents").status_code
                    for _ in range(15) for url in (base_url, tls_gateway)]
    accepted = statuses.count(200)
    # One bucket of 10 for both processes (plus at most a token of refill while the test runs);
    # two separate buckets would have let 20 through.
    assert 10 <= accepted <= 12, statuses
    assert statuses.count(429) == len(statuses) - accepted
