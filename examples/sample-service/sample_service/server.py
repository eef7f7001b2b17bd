"""The HTTP API (standard library only).

GET  /healthz          liveness
POST /login            {"username", "password"} -> {"token"}
GET  /me               Authorization: Bearer <token> -> the signed-in user
GET  /users/<name>     a user's public profile
"""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sample_service.auth import Authenticator, AuthError

MAX_BODY = 16 * 1024


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet in tests; a real service would log here

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        auth = self.server.authenticator
        if self.path == "/healthz":
            self._send(HTTPStatus.OK, {"ok": True})
        elif self.path == "/me":
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            if scheme != "Bearer" or not token:
                self._send(HTTPStatus.UNAUTHORIZED, {"error": "missing bearer token"})
                return
            try:
                user = auth.verify(token)
            except AuthError as exc:
                self._send(HTTPStatus.UNAUTHORIZED, {"error": str(exc)})
                return
            self._send(HTTPStatus.OK, user.public())
        elif self.path.startswith("/users/"):
            user = auth.store.get(self.path.removeprefix("/users/"))
            if user is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": "no such user"})
            else:
                self._send(HTTPStatus.OK, user.public())
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/login":
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            username, password = str(body["username"]), str(body["password"])
        except (ValueError, KeyError, TypeError):
            self._send(HTTPStatus.BAD_REQUEST, {"error": "send JSON with username and password"})
            return
        try:
            token = self.server.authenticator.login(username, password)
        except AuthError as exc:
            self._send(HTTPStatus.UNAUTHORIZED, {"error": str(exc)})
            return
        self._send(HTTPStatus.OK, {"token": token})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], authenticator: Authenticator) -> None:
        super().__init__(address, Handler)
        self.authenticator = authenticator


def make_server(authenticator: Authenticator, host: str = "127.0.0.1", port: int = 0) -> Server:
    return Server((host, port), authenticator)
