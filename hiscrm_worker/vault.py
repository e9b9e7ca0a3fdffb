"""Browser sessions in Redis, encrypted with a key only workers hold.

A login belongs to the account, not to the worker that happened to run it: whichever
worker owns the account restores its session from here (on start, on assignment, on
failover), so a dead worker's accounts stay logged in. Redis alone leaks nothing: the
session (Playwright's storage state) is sealed with AES-GCM under the key in
``HISCRM_SESSION_KEY_FILE`` and bound to its account id, and the Master and the CLI
never see that key. Each write bumps the session's version; a worker writes only when
the session changed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

from hiscrm_bus.connection import call
from hiscrm_bus.errors import ConfigurationError
from hiscrm_bus.keys import Keys
from hiscrm_bus.limits import MAX_MESSAGE_BYTES

from .settings import write_private

log = logging.getLogger(__name__)
KEY_BYTES = 32
_NONCE_BYTES = 12


class SessionUnreadable(Exception):
    """A stored session that does not decrypt (another key) or does not decode."""


def new_key() -> str:
    """A new session key as the key file holds it (base64, one line)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def write_key_file(path: Path) -> None:
    """Write a new key to ``path`` (mode 0600); never over an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, new_key() + "\n", new=True)


def read_key_file(path: Path) -> bytes:
    """The key in ``path``, or ConfigurationError with one sentence."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the session key file {path}: {exc.strerror} "
            "(make one with `hiscrm session keygen --out FILE`)"
        ) from None
    try:
        key = base64.urlsafe_b64decode(text.encode())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigurationError(
            f"the session key file {path} does not hold a key made by "
            "`hiscrm session keygen` (32 bytes, base64)"
        )
    return key


def digest(state: dict[str, Any]) -> str:
    """A fingerprint of a session, to write only what changed (kept in memory only)."""
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredSession:
    state: dict[str, Any]
    version: int


class SessionVault:
    def __init__(self, redis: Redis, keys: Keys, key: bytes, worker_id: str) -> None:
        self.redis = redis
        self.keys = keys
        self._aead = AESGCM(key)
        self.worker_id = worker_id

    def _aad(self, account_id: str) -> bytes:
        return f"hiscrm-session:{account_id}".encode()

    def seal(self, account_id: str, state: dict[str, Any]) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        plain = json.dumps(state, separators=(",", ":")).encode()
        return nonce + self._aead.encrypt(nonce, plain, self._aad(account_id))

    def open(self, account_id: str, blob: bytes) -> dict[str, Any]:
        if len(blob) > MAX_MESSAGE_BYTES:
            raise SessionUnreadable(f"the stored session is {len(blob)} bytes")
        try:
            plain = self._aead.decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], self._aad(account_id)
            )
        except (InvalidTag, ValueError):
            raise SessionUnreadable(
                "the stored session does not decrypt with this worker's session key"
            ) from None
        try:
            state = json.loads(plain)
        except ValueError:
            raise SessionUnreadable("the stored session is not a browser session") from None
        if not isinstance(state, dict):
            raise SessionUnreadable("the stored session is not a browser session")
        return state

    async def get(self, account_id: str) -> StoredSession | None:
        """The account's session, None when it has none; SessionUnreadable when the
        stored one cannot be opened (another key, damaged)."""
        raw: dict[Any, Any] = await call(self.redis.hgetall(self.keys.session(account_id)))
        blob = raw.get(b"blob")
        if not blob:
            return None
        try:
            version = int(raw.get(b"version", b"0"))
        except ValueError:
            version = 0
        return StoredSession(self.open(account_id, blob), version)

    async def put(self, account_id: str, state: dict[str, Any]) -> int:
        """Store the account's session; returns its new version."""
        key = self.keys.session(account_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"blob": self.seal(account_id, state), "by": self.worker_id})
            pipe.hincrby(key, "version", 1)
            _n, version = await call(pipe.execute())
        log.info("account %s: session saved (version %d)", account_id, version)
        return int(version)
