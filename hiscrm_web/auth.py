"""Console users and sessions, kept in Redis under the key prefix.

A user is a name and an argon2 hash (argon2-cffi). A session is a random token in an
HttpOnly, SameSite=Strict cookie; Redis holds only its SHA-256 (so a Redis dump lets no
one sign in), the user and the session's CSRF token, with a TTL renewed on use. Failed
sign-ins are counted per address; past the limit the address waits."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from hiscrm_bus.connection import call, text
from hiscrm_bus.errors import ConfigurationError
from hiscrm_bus.keys import Keys
from hiscrm_bus.limits import utcnow

USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 12
_hasher = PasswordHasher()


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    csrf: str
    token_hash: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _generation() -> str:
    """A new password generation: random, so a user removed and made again with the
    same name does not bring its old sessions back."""
    return secrets.token_hex(8)


class Users:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        ttl_s: int = 12 * 3600,
        max_age_s: int = 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.max_age_s = max_age_s
        self.clock = clock

    async def add(self, name: str, password: str, *, replace: bool = False) -> bool:
        """Create (or with ``replace``, reset) a user; False when it exists already.
        A reset ends every session the user had (they carry the old generation)."""
        if not USER_NAME.match(name):
            raise ConfigurationError(
                f"user name {name!r}: 1 to 64 letters, digits, and _ . @ - only"
            )
        if len(password) < MIN_PASSWORD:
            raise ConfigurationError(f"a password needs at least {MIN_PASSWORD} characters")
        key = self.keys.web_user(name)
        exists: Any = await call(self.redis.exists(key))
        if not replace and exists:
            return False
        hashed = _hasher.hash(password)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "password": hashed,
                    "generation": _generation(),
                    "created_at": utcnow().isoformat(),
                },
            )
            pipe.sadd(self.keys.web_users, name)
            await call(pipe.execute())
        return True

    async def remove(self, name: str) -> bool:
        """Delete a user, which ends its sessions; False when there was none."""
        if not USER_NAME.match(name):
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.web_user(name))
            pipe.srem(self.keys.web_users, name)
            deleted, _ = await call(pipe.execute())
        return bool(deleted)

    async def names(self) -> list[str]:
        members: Any = await call(self.redis.smembers(self.keys.web_users))
        return sorted(text(m) for m in members)

    async def check(self, name: str, password: str) -> bool:
        """Whether ``password`` is the user's (the same work for an unknown user)."""
        return await self.authenticate(name, password) is not None

    async def authenticate(self, name: str, password: str) -> str | None:
        """The user's password generation when ``password`` is the user's, else None
        (the same work for an unknown user). The generation is read with the hash, so a
        session started with it ends if the password changed meanwhile."""
        stored: Any = [None, None]
        if USER_NAME.match(name):
            key = self.keys.web_user(name)
            stored = await call(self.redis.hmget(key, ["password", "generation"]))
        hashed, generation = stored
        try:
            right = _hasher.verify(text(hashed) if hashed else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            return None
        # a user made before generations has none: "" until its next password
        return text(generation or "") if right and hashed else None

    async def too_many_attempts(self, who: str, limit: int) -> bool:
        count: Any = await call(self.redis.get(self.keys.web_attempts(who)))
        return int(count or 0) >= limit

    async def failed(self, who: str, window_s: int) -> None:
        key = self.keys.web_attempts(who)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_s, nx=True)
            await call(pipe.execute())

    async def start(self, user: str, generation: str) -> tuple[str, Session]:
        """A new session of ``user`` at its password ``generation`` (from
        ``authenticate``): (the cookie's token, the session)."""
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), _digest(token))
        key = self.keys.web_session(session.token_hash)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "user": user,
                    "csrf": session.csrf,
                    "generation": generation,
                    "started_at": repr(self.clock()),
                },
            )
            pipe.expire(key, min(self.ttl_s, self.max_age_s))
            await call(pipe.execute())
        return token, session

    async def session(self, token: str | None) -> Session | None:
        """The session of a cookie's token, its TTL renewed; None when unknown, ended,
        older than ``max_age_s``, or its user is gone or has a new password (such a
        session is deleted)."""
        if not token or len(token) > 200:
            return None
        digest = _digest(token)
        key = self.keys.web_session(digest)
        raw: Any = await call(self.redis.hgetall(key))
        data = {text(k): text(v) for k, v in raw.items()}
        user, csrf, generation = data.get("user"), data.get("csrf"), data.get("generation")
        try:
            left = self.max_age_s - (self.clock() - float(data.get("started_at", "")))
        except ValueError:
            left = 0
        if not (user and csrf and generation is not None and USER_NAME.match(user) and left > 0):
            if raw:
                await call(self.redis.delete(key))
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.web_user(user), ["password", "generation"])
            pipe.expire(key, max(1, min(self.ttl_s, int(left))), xx=True)
            (hashed, current), _ = await call(pipe.execute())
        if not hashed or text(current or "") != generation:
            await call(self.redis.delete(key))
            return None
        return Session(user, csrf, digest)

    async def end(self, session: Session) -> None:
        await call(self.redis.delete(self.keys.web_session(session.token_hash)))


_DUMMY = _hasher.hash(secrets.token_urlsafe(16))
