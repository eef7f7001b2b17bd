"""The users "database": every lookup is a round trip, counted so tests can see it."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

ITERATIONS = 100_000


def hash_password(password: str, salt: bytes, iterations: int = ITERATIONS) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


@dataclass(frozen=True)
class User:
    username: str
    name: str
    salt: bytes
    password_hash: bytes
    iterations: int = ITERATIONS
    active: bool = True

    def public(self) -> dict[str, object]:
        return {"username": self.username, "name": self.name, "active": self.active}


class UserStore:
    """In memory, standing in for a database: ``get`` waits ``delay`` seconds and is counted
    in ``lookups``; whoever subscribes is told the username of every user that changes."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lookups = 0
        self._users: dict[str, User] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()

    def add(
        self, username: str, password: str, name: str = "", iterations: int = ITERATIONS
    ) -> User:
        salt = secrets.token_bytes(16)
        digest = hash_password(password, salt, iterations)
        user = User(username, name or username, salt, digest, iterations)
        with self._lock:
            self._users[username] = user
        self._changed(username)
        return user

    def get(self, username: str) -> User | None:
        with self._lock:
            self.lookups += 1
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            return self._users.get(username)

    def deactivate(self, username: str) -> None:
        with self._lock:
            user = self._users.get(username)
            if user is None:
                raise KeyError(username)
            self._users[username] = replace(user, active=False)
        self._changed(username)

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(username)`` whenever a user is added, changed or deactivated."""
        self._listeners.append(listener)

    def _changed(self, username: str) -> None:
        for listener in list(self._listeners):
            listener(username)
