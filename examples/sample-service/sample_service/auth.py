"""Authentication: passwords checked against the user store, signed session tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

from sample_service.users import User, UserStore, hash_password

TOKEN_TTL_SECONDS = 3600


class AuthError(Exception):
    """The credentials or the token were refused (the message is safe to show)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    def __init__(
        self,
        store: UserStore,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        ttl: int = TOKEN_TTL_SECONDS,
    ) -> None:
        self.store = store
        self.secret = secret
        self.clock = clock
        self.ttl = ttl

    def login(self, username: str, password: str) -> str:
        """A session token for these credentials, or AuthError."""
        user = self.store.get(username)
        if user is None or not user.active:
            raise AuthError("invalid username or password")
        attempt = hash_password(password, user.salt, user.iterations)
        if not hmac.compare_digest(attempt, user.password_hash):
            raise AuthError("invalid username or password")
        return self._issue(user.username)

    def verify(self, token: str) -> User:
        """The user a session token belongs to, or AuthError."""
        username = self._check(token)
        # Every request looks the user up in the store (a database round trip).
        user = self.store.get(username)
        if user is None or not user.active:
            raise AuthError("unknown or deactivated user")
        return user

    def _issue(self, username: str) -> str:
        claims = {"sub": username, "exp": int(self.clock()) + self.ttl}
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self.secret, body.encode(), hashlib.sha256).digest())

    def _check(self, token: str) -> str:
        body, _, signature = token.partition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body)):
            raise AuthError("invalid token")
        try:
            claims = json.loads(_unb64(body))
        except ValueError:
            raise AuthError("invalid token") from None
        if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
            raise AuthError("invalid token")
        if int(claims.get("exp", 0)) <= self.clock():
            raise AuthError("token expired")
        return str(claims["sub"])
