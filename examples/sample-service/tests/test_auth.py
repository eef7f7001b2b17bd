from __future__ import annotations

import unittest

from sample_service.auth import Authenticator, AuthError
from sample_service.users import UserStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[UserStore, Authenticator, Clock]:
    store = UserStore()
    store.add("alice", "correct horse", "Alice", iterations=1000)
    clock = Clock()
    return store, Authenticator(store, b"k" * 32, clock=clock, ttl=60), clock


class LoginTest(unittest.TestCase):
    def test_the_right_password_gets_a_token_that_names_the_user(self) -> None:
        _, auth, _ = make()
        token = auth.login("alice", "correct horse")
        self.assertEqual(auth.verify(token).username, "alice")

    def test_a_wrong_password_or_unknown_user_is_refused_alike(self) -> None:
        _, auth, _ = make()
        for username, password in (("alice", "wrong"), ("mallory", "correct horse")):
            with self.assertRaisesRegex(AuthError, "invalid username or password"):
                auth.login(username, password)


class TokenTest(unittest.TestCase):
    def test_a_tampered_token_is_refused(self) -> None:
        _, auth, _ = make()
        body, _, signature = auth.login("alice", "correct horse").partition(".")
        with self.assertRaises(AuthError):
            auth.verify(body + "x." + signature)
        with self.assertRaises(AuthError):
            auth.verify("not-a-token")

    def test_a_token_expires(self) -> None:
        _, auth, clock = make()
        token = auth.login("alice", "correct horse")
        clock.now += 61
        with self.assertRaisesRegex(AuthError, "expired"):
            auth.verify(token)

    def test_a_deactivated_user_is_refused_at_once(self) -> None:
        store, auth, _ = make()
        token = auth.login("alice", "correct horse")
        self.assertTrue(auth.verify(token).active)
        store.deactivate("alice")
        with self.assertRaisesRegex(AuthError, "deactivated"):
            auth.verify(token)


if __name__ == "__main__":
    unittest.main()
