"""Console users and sessions, kept in Redis under the key prefix.

A user is a name and an argon2 hash (argon2-cffi). A session is a random token in an
HttpOnly, SameSite=Strict cookie; Redis holds only its SHA-256 (so a Redis dump lets no
one sign in), the user and the session's CSRF token, with a TTL renewed on use. Failed
sign-ins are counted per address; past the limit the address waits."""

from __future__ import annotations

import hashlib
import re
import secrets
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


class Users:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int = 12 * 3600) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s

    async def add(self, name: str, password: str, *, replace: bool = False) -> bool:
        """Create (or with ``replace``, reset) a user; False when it exists already."""
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
            pipe.hset(key, mapping={"password": hashed, "created_at": utcnow().isoformat()})
            pipe.sadd(self.keys.web_users, name)
            await call(pipe.execute())
        return True

    async def names(self) -> list[str]:
        members: Any = await call(self.redis.smembers(self.keys.web_users))
        return sorted(text(m) for m in members)

    async def check(self, name: str, password: str) -> bool:
        """Whether ``password`` is the user's (the same work for an unknown user)."""
        stored: Any = None
        if USER_NAME.match(name):
            stored = await call(self.redis.hget(self.keys.web_user(name), "password"))
        try:
            return _hasher.verify(text(stored) if stored else _DUMMY, password) and bool(stored)
        except (VerificationError, InvalidHashError):
            return False

    async def too_many_attempts(self, who: str, limit: int) -> bool:
        count: Any = await call(self.redis.get(self.keys.web_attempts(who)))
        return int(count or 0) >= limit

    async def failed(self, who: str, window_s: int) -> None:
        key = self.keys.web_attempts(who)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_s, nx=True)
            await call(pipe.execute())

    async def start(self, user: str) -> tuple[str, Session]:
        """A new session: (the cookie's token, the session)."""
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), _digest(token))
        key = self.keys.web_session(session.token_hash)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"user": user, "csrf": session.csrf})
            pipe.expire(key, self.ttl_s)
            await call(pipe.execute())
        return token, session

    async def session(self, token: str | None) -> Session | None:
        """The session of a cookie's token, its TTL renewed; None when unknown or ended."""
        if not token or len(token) > 200:
            return None
        digest = _digest(token)
        key = self.keys.web_session(digest)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.expire(key, self.ttl_s, xx=True)
            raw, _ = await call(pipe.execute())
        data = {text(k): text(v) for k, v in raw.items()}
        if not data.get("user") or not data.get("csrf"):
            return None
        return Session(data["user"], data["csrf"], digest)

    async def end(self, session: Session) -> None:
        await call(self.redis.delete(self.keys.web_session(session.token_hash)))


_DUMMY = _hasher.hash(secrets.token_urlsafe(16))
