from __future__ import annotations

import json
import threading
import unittest
import urllib.error
import urllib.request
from typing import Any

from sample_service.auth import Authenticator
from sample_service.server import make_server
from sample_service.users import UserStore


class ServerTest(unittest.TestCase):
    def setUp(self) -> None:
        store = UserStore()
        store.add("alice", "correct horse", "Alice", iterations=1000)
        self.server = make_server(Authenticator(store, b"k" * 32))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def tearDown(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def call(self, path: str, body: object = None, token: str = "") -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def test_health(self) -> None:
        self.assertEqual(self.call("/healthz"), (200, {"ok": True}))

    def test_login_then_me(self) -> None:
        status, body = self.call("/login", {"username": "alice", "password": "correct horse"})
        self.assertEqual(status, 200)
        status, me = self.call("/me", token=body["token"])
        self.assertEqual((status, me["username"]), (200, "alice"))

    def test_bad_credentials_and_missing_tokens_get_401(self) -> None:
        status, _ = self.call("/login", {"username": "alice", "password": "nope"})
        self.assertEqual(status, 401)
        self.assertEqual(self.call("/me")[0], 401)
        self.assertEqual(self.call("/me", token="forged.token")[0], 401)

    def test_malformed_login_gets_400(self) -> None:
        self.assertEqual(self.call("/login", ["not", "an", "object"])[0], 400)

    def test_public_profiles(self) -> None:
        self.assertEqual(self.call("/users/alice")[1]["name"], "Alice")
        self.assertEqual(self.call("/users/nobody")[0], 404)


if __name__ == "__main__":
    unittest.main()
