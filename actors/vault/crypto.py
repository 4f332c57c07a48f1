"""Envelope encryption for stored cards, the key ring of key-encrypting keys, and card fingerprints.

Each card is encrypted with its own random 256-bit data key (AES-256-GCM); the data key is stored
wrapped (AES-256-GCM again) by a versioned key-encrypting key (KEK). Rotating the KEK therefore only
re-wraps 60-byte data keys, never re-encrypts card data, and a leaked data key exposes one card.

The associated data binds every ciphertext to its token id, and every wrapped key to its token id
and KEK version, so rows cannot be swapped between tokens or replayed under another version.

Key file (`PAYGATE_VAULT_KEK_FILE`, or the JSON itself in env `PAYGATE_VAULT_KEK`):
    {"active": 2, "keys": {"1": "<base64 of 32 bytes>", "2": "<base64 of 32 bytes>"}}
Fingerprint key (`PAYGATE_FINGERPRINT_KEY_FILE`, or env `PAYGATE_FINGERPRINT_KEY`): base64 of 32 bytes.
Key files are created with mode 0600 when missing and refused when group or others can read them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from actors.ids import base62

KEK_ENV = "PAYGATE_VAULT_KEK"
FINGERPRINT_ENV = "PAYGATE_FINGERPRINT_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12  # the GCM standard nonce; random nonces are safe here because each data key is single-use
_DATA_LABEL = b"paygate/vault/card-data/v1"
_WRAP_LABEL = b"paygate/vault/data-key/v1"
FINGERPRINT_CHARS = 16


class KeyRingError(RuntimeError):
    """The key ring cannot be loaded, saved or does not hold a version. Never carries key material."""


class VaultCryptoError(RuntimeError):
    """Authenticated decryption failed: wrong key, wrong token id, or tampered data."""


@dataclass(frozen=True)
class Sealed:
    """A card's encrypted form, as stored in the `cards` row."""

    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    wrap_nonce: bytes
    kek_version: int

    def __repr__(self) -> str:
        return f"Sealed(kek_version={self.kek_version}, ciphertext=<{len(self.ciphertext)} bytes>)"


# --- files holding secrets ------------------------------------------------------------------

def _read_private(path: Path) -> str:
    """Read a secret file, refusing one that group or others could read (or write)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        mode = os.fstat(fd).st_mode  # fstat on the open fd: no window between check and read
        if not stat.S_ISREG(mode):
            raise KeyRingError(f"{path} is not a regular file")
        if mode & 0o077:
            raise KeyRingError(f"{path} is readable by group or others (mode {mode & 0o777:o}); chmod 600 it")
        with os.fdopen(fd, "r", encoding="utf-8", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def _write_new_private(path: Path, text: str) -> bool:
    """Create `path` with mode 0600 holding `text`; False if it already exists (someone else won)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(path.parent)
    return True


def _replace_private(path: Path, text: str) -> None:
    """Atomically replace `path` (tmp file + rename): readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if not _write_new_private(tmp, text):
            raise KeyRingError(f"temporary file {tmp} already exists")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock next to `path`, so two processes adding versions do not lose one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _decode_key(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyRingError(f"{what} is not a base64 string")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError(f"{what} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyRingError(f"{what} must be {KEY_BYTES} bytes, got {len(key)}")
    return key


def _encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


# --- the key ring ---------------------------------------------------------------------------

class KeyRing:
    """Versioned KEKs; `active` wraps new data keys, every version present can still unwrap."""

    def __init__(self, keys: Mapping[int, bytes], active: int, path: Path | None = None) -> None:
        if active not in keys:
            raise KeyRingError(f"active version {active} is not in the key ring")
        for version, key in keys.items():
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"KEK version {version} must be {KEY_BYTES} bytes")
        self._keys = dict(keys)
        self._active = active
        self.path = path  # None: loaded from the environment, managed outside paygate

    def __repr__(self) -> str:
        source = str(self.path) if self.path else f"${KEK_ENV}"
        return f"KeyRing(active={self._active}, versions={self.versions}, source={source!r})"

    @property
    def active(self) -> int:
        return self._active

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def key(self, version: int) -> bytes:
        try:
            return self._keys[version]
        except KeyError:
            raise KeyRingError(f"KEK version {version} is not in the key ring") from None

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> KeyRing:
        try:
            doc = json.loads(text)
            active = int(doc["active"])
            raw_keys = doc["keys"]
            keys = {int(v): _decode_key(k, f"KEK version {v}") for v, k in raw_keys.items()}
        except KeyRingError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError):
            # `from None`: the JSON decoder's message could quote the document, i.e. key material.
            raise KeyRingError('key ring must be {"active": N, "keys": {"N": "<base64>"}}') from None
        return cls(keys, active, path)

    @classmethod
    def load(cls, path: Path | str | None, env: Mapping[str, str] | None = None) -> KeyRing:
        """The ring from env `PAYGATE_VAULT_KEK` if set, else from `path` (created if missing)."""
        env = os.environ if env is None else env
        if env.get(KEK_ENV):
            return cls.from_json(env[KEK_ENV])
        if path is None:
            raise KeyRingError(f"no key file given and {KEK_ENV} is not set")
        path = Path(path)
        if not path.exists():
            first = cls({1: AESGCM.generate_key(bit_length=256)}, 1, path)
            _write_new_private(path, first.to_json())  # loses the race gracefully: load the winner's
        return cls.from_json(_read_private(path), path)

    def to_json(self) -> str:
        keys = {str(v): _encode_key(k) for v, k in sorted(self._keys.items())}
        return json.dumps({"active": self._active, "keys": keys}, indent=2) + "\n"

    def reload(self) -> bool:
        """Re-read the key file (another replica may have rotated); True if the ring changed.

        Always reads rather than trusting mtimes: file timestamps can be coarser than two rotations.
        """
        if self.path is None:
            return False
        fresh = KeyRing.from_json(_read_private(self.path), self.path)
        if fresh._keys == self._keys and fresh._active == self._active:
            return False
        # Keys first, then the active version: a concurrent reader never sees an active without its key.
        # Never move backwards: a read that raced with our own add_version must not undo it.
        self._keys = {**self._keys, **fresh._keys}
        self._active = max(self._active, fresh._active)
        return True

    # -- rotation ----------------------------------------------------------------------------

    def add_version(self) -> int:
        """Generate a new KEK, make it active and save the file atomically; return its version."""
        if self.path is None:
            raise KeyRingError(f"the key ring comes from {KEK_ENV}; rotate by updating that variable")
        with _file_lock(self.path):
            self.reload()  # another process may have added a version since we loaded
            version = max(self._keys) + 1
            keys = {**self._keys, version: AESGCM.generate_key(bit_length=256)}
            _replace_private(self.path, KeyRing(keys, version).to_json())
            self._keys = keys
            self._active = version
        return version


# --- envelope encryption --------------------------------------------------------------------

def _data_aad(aad: bytes) -> bytes:
    # Length-prefixed so that no (label, aad) pair can be confused with another.
    return _DATA_LABEL + struct.pack(">I", len(aad)) + aad


def _wrap_aad(aad: bytes, version: int) -> bytes:
    return _WRAP_LABEL + struct.pack(">I", len(aad)) + aad + struct.pack(">I", version)


def _wrap(data_key: bytes, aad: bytes, ring: KeyRing) -> tuple[bytes, bytes, int]:
    version = ring.active
    wrap_nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(ring.key(version)).encrypt(wrap_nonce, data_key, _wrap_aad(aad, version))
    return wrapped, wrap_nonce, version


def _unwrap(sealed: Sealed, aad: bytes, ring: KeyRing) -> bytes:
    kek = ring.key(sealed.kek_version)
    try:
        return AESGCM(kek).decrypt(sealed.wrap_nonce, sealed.wrapped_key, _wrap_aad(aad, sealed.kek_version))
    except InvalidTag:
        raise VaultCryptoError("data key failed authentication (wrong KEK, token or tampered row)") from None


def seal(plaintext: bytes, aad: bytes, ring: KeyRing) -> Sealed:
    """Encrypt under a fresh data key, wrapped by the ring's active KEK; `aad` is the token id."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _data_aad(aad))
    wrapped, wrap_nonce, version = _wrap(data_key, aad, ring)
    return Sealed(ciphertext, nonce, wrapped, wrap_nonce, version)


def open_sealed(sealed: Sealed, aad: bytes, ring: KeyRing) -> bytes:
    data_key = _unwrap(sealed, aad, ring)
    try:
        return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, _data_aad(aad))
    except InvalidTag:
        raise VaultCryptoError("card data failed authentication (wrong token id or tampered row)") from None


def rewrap(sealed: Sealed, aad: bytes, ring: KeyRing) -> Sealed:
    """The same ciphertext with its data key re-wrapped under the active KEK (no-op if already)."""
    if sealed.kek_version == ring.active:
        return sealed
    wrapped, wrap_nonce, version = _wrap(_unwrap(sealed, aad, ring), aad, ring)
    return Sealed(sealed.ciphertext, sealed.nonce, wrapped, wrap_nonce, version)


# --- fingerprints ---------------------------------------------------------------------------

def fingerprint(pan: str, key: bytes) -> str:
    """Keyed fingerprint (HMAC-SHA256), 16 base62 characters like Stripe's: same card, same value.

    Keyed so that the 10^9 or so possible PANs of a BIN cannot be hashed offline to reverse it.
    """
    digest = hmac.new(key, pan.encode("ascii"), hashlib.sha256).digest()
    return base62(int.from_bytes(digest, "big"), FINGERPRINT_CHARS)


def load_fingerprint_key(path: Path | str | None, env: Mapping[str, str] | None = None) -> bytes:
    """The fingerprint key from env `PAYGATE_FINGERPRINT_KEY` (base64) or `path` (created if missing)."""
    env = os.environ if env is None else env
    if env.get(FINGERPRINT_ENV):
        return _decode_key(env[FINGERPRINT_ENV], FINGERPRINT_ENV)
    if path is None:
        raise KeyRingError(f"no fingerprint key file given and {FINGERPRINT_ENV} is not set")
    path = Path(path)
    if not path.exists():
        _write_new_private(path, _encode_key(secrets.token_bytes(KEY_BYTES)) + "\n")
    return _decode_key(_read_private(path), f"fingerprint key in {path}")
