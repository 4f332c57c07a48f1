"""Envelope encryption, the KEK ring and its key file, fingerprints (pure, files under tmp_path)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from actors.ids import BASE62_ALPHABET
from actors.vault.crypto import (
    FINGERPRINT_ENV,
    KEK_ENV,
    KeyRing,
    KeyRingError,
    VaultCryptoError,
    fingerprint,
    load_fingerprint_key,
    open_sealed,
    rewrap,
    seal,
)

PAN = b"4242424242424242"
TOKEN = b"pm_0000000000000000000001"
NO_ENV: dict[str, str] = {}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing.load(tmp_path / "secrets" / "kek.json", env=NO_ENV)


# --- the key file ---------------------------------------------------------------------------

def test_missing_key_file_is_created_0600_in_the_documented_format(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "kek.json"
    ring = KeyRing.load(path, env=NO_ENV)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    doc = json.loads(path.read_text())
    assert doc["active"] == 1 and list(doc["keys"]) == ["1"]
    assert len(base64.b64decode(doc["keys"]["1"])) == 32
    assert ring.active == 1 and ring.versions == [1]
    assert KeyRing.load(path, env=NO_ENV).key(1) == ring.key(1)  # loading again keeps the key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek.json"
    KeyRing.load(path, env=NO_ENV)
    path.chmod(mode)
    with pytest.raises(KeyRingError, match="chmod 600"):
        KeyRing.load(path, env=NO_ENV)


def test_add_version_rewrites_atomically_and_keeps_old_keys(tmp_path: Path, ring: KeyRing) -> None:
    assert ring.path is not None
    old_key = ring.key(1)
    assert ring.add_version() == 2
    assert ring.active == 2 and ring.versions == [1, 2]
    assert mode_of(ring.path) == 0o600
    on_disk = KeyRing.load(ring.path, env=NO_ENV)
    assert on_disk.active == 2 and on_disk.key(1) == old_key and on_disk.key(2) == ring.key(2)
    assert not [p for p in ring.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_two_processes_adding_versions_do_not_lose_one(ring: KeyRing) -> None:
    assert ring.path is not None
    other = KeyRing.load(ring.path, env=NO_ENV)  # a second vault replica
    assert ring.add_version() == 2
    assert other.add_version() == 3  # re-reads the file under the lock before adding
    final = KeyRing.load(ring.path, env=NO_ENV)
    assert final.versions == [1, 2, 3] and final.key(2) == ring.key(2)
    assert ring.reload() and ring.active == 3


def test_ring_from_environment_wins_and_is_read_only(tmp_path: Path) -> None:
    keys = {"1": base64.b64encode(b"\x01" * 32).decode(), "2": base64.b64encode(b"\x02" * 32).decode()}
    env = {KEK_ENV: json.dumps({"active": 2, "keys": keys})}
    ring = KeyRing.load(tmp_path / "unused.json", env=env)
    assert ring.active == 2 and ring.key(1) == b"\x01" * 32
    assert not (tmp_path / "unused.json").exists()
    with pytest.raises(KeyRingError, match=KEK_ENV):
        ring.add_version()


@pytest.mark.parametrize(
    "text",
    [
        "not json c2VjcmV0LWtleS1tYXRlcmlhbA==",
        json.dumps({"active": 3, "keys": {"1": base64.b64encode(b"k" * 32).decode()}}),
        json.dumps({"active": 1, "keys": {"1": base64.b64encode(b"short").decode()}}),
        json.dumps({"active": 1, "keys": {"1": "!!!c2VjcmV0!!!"}}),
        json.dumps({"keys": {}}),
    ],
)
def test_bad_key_rings_are_refused_without_quoting_them(text: str) -> None:
    with pytest.raises(KeyRingError) as caught:
        KeyRing.from_json(text)
    assert "c2VjcmV0" not in str(caught.value) and "k" * 32 not in str(caught.value)
    assert caught.value.__cause__ is None


def test_repr_never_shows_key_material(ring: KeyRing) -> None:
    ring.add_version()
    text = repr(ring)
    for version in ring.versions:
        key = ring.key(version)
        assert base64.b64encode(key).decode() not in text and key.hex() not in text
    assert "active=2" in text


# --- envelope encryption --------------------------------------------------------------------

def test_seal_open_round_trip_with_a_fresh_data_key_each_time(ring: KeyRing) -> None:
    first, second = seal(PAN, TOKEN, ring), seal(PAN, TOKEN, ring)
    assert open_sealed(first, TOKEN, ring) == PAN
    assert first.ciphertext != second.ciphertext and first.wrapped_key != second.wrapped_key
    assert PAN not in first.ciphertext and len(first.nonce) == 12 and len(first.wrap_nonce) == 12
    assert len(first.wrapped_key) == 32 + 16  # the 256-bit data key plus the GCM tag
    assert first.kek_version == 1
    assert PAN.decode() not in repr(first)


def test_ciphertext_is_bound_to_its_token(ring: KeyRing) -> None:
    sealed = seal(PAN, TOKEN, ring)
    with pytest.raises(VaultCryptoError):
        open_sealed(sealed, b"pm_0000000000000000000002", ring)


def test_rows_cannot_be_mixed_between_tokens(ring: KeyRing) -> None:
    mine, theirs = seal(PAN, TOKEN, ring), seal(b"5555555555554444", b"pm_other", ring)
    swapped = dataclasses.replace(mine, wrapped_key=theirs.wrapped_key, wrap_nonce=theirs.wrap_nonce)
    with pytest.raises(VaultCryptoError):
        open_sealed(swapped, TOKEN, ring)


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "wrapped_key", "wrap_nonce"])
def test_tampering_is_detected(ring: KeyRing, field: str) -> None:
    sealed = seal(PAN, TOKEN, ring)
    value = bytearray(getattr(sealed, field))
    value[0] ^= 0x01
    tampered: dict[str, Any] = {field: bytes(value)}
    with pytest.raises(VaultCryptoError) as caught:
        open_sealed(dataclasses.replace(sealed, **tampered), TOKEN, ring)
    assert caught.value.__cause__ is None


def test_wrapped_key_is_bound_to_its_kek_version(ring: KeyRing) -> None:
    sealed = seal(PAN, TOKEN, ring)
    ring.add_version()
    # Relabelling the row as version 2 fails even though version 2 exists: the version is in the AAD.
    with pytest.raises(VaultCryptoError):
        open_sealed(dataclasses.replace(sealed, kek_version=2), TOKEN, ring)


def test_rewrap_moves_the_data_key_to_the_active_version(ring: KeyRing) -> None:
    sealed = seal(PAN, TOKEN, ring)
    ring.add_version()
    fresh = rewrap(sealed, TOKEN, ring)
    assert fresh.kek_version == 2 and fresh.ciphertext == sealed.ciphertext
    assert fresh.wrapped_key != sealed.wrapped_key
    assert open_sealed(fresh, TOKEN, ring) == PAN
    assert open_sealed(sealed, TOKEN, ring) == PAN  # the old version stays readable
    assert rewrap(fresh, TOKEN, ring) is fresh  # already current: nothing to do
    new_cards = seal(PAN, TOKEN, ring)
    assert new_cards.kek_version == 2


def test_unknown_kek_version_is_a_key_ring_error(ring: KeyRing, tmp_path: Path) -> None:
    ring.add_version()
    sealed = seal(PAN, TOKEN, ring)
    stale = KeyRing({1: ring.key(1)}, 1)
    with pytest.raises(KeyRingError, match="version 2"):
        open_sealed(sealed, TOKEN, stale)


# --- fingerprints ---------------------------------------------------------------------------

def test_fingerprint_is_16_base62_chars_stable_and_keyed() -> None:
    key, other_key = b"\x07" * 32, b"\x08" * 32
    value = fingerprint("4242424242424242", key)
    assert len(value) == 16 and set(value) <= set(BASE62_ALPHABET)
    assert fingerprint("4242424242424242", key) == value
    assert fingerprint("4000056655665556", key) != value
    assert fingerprint("4242424242424242", other_key) != value


def test_fingerprint_key_file_created_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "fingerprint_key"
    key = load_fingerprint_key(path, env=NO_ENV)
    assert len(key) == 32 and mode_of(path) == 0o600
    assert base64.b64decode(path.read_text()) == key
    assert load_fingerprint_key(path, env=NO_ENV) == key
    path.chmod(0o644)
    with pytest.raises(KeyRingError, match="chmod 600"):
        load_fingerprint_key(path, env=NO_ENV)


def test_fingerprint_key_from_environment(tmp_path: Path) -> None:
    env = {FINGERPRINT_ENV: base64.b64encode(b"\x09" * 32).decode()}
    assert load_fingerprint_key(tmp_path / "unused", env=env) == b"\x09" * 32
    assert not (tmp_path / "unused").exists()
    secret = base64.b64encode(b"too-short-secret").decode()
    with pytest.raises(KeyRingError) as caught:
        load_fingerprint_key(None, env={FINGERPRINT_ENV: secret})
    assert secret not in str(caught.value)


def test_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FINGERPRINT_ENV, base64.b64encode(b"\x0a" * 32).decode())
    assert load_fingerprint_key(tmp_path / "unused") == b"\x0a" * 32
    monkeypatch.delenv(KEK_ENV, raising=False)
    assert KeyRing.load(tmp_path / "kek.json").active == 1
    assert os.path.exists(tmp_path / "kek.json")
