"""python -m sample_service [--port N]: the service with two demo users."""

from __future__ import annotations

import argparse
import os
import secrets

from sample_service.auth import Authenticator
from sample_service.server import make_server
from sample_service.users import UserStore


def main() -> None:
    parser = argparse.ArgumentParser(prog="sample_service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args()
    store = UserStore(delay=0.02)  # a database round trip
    store.add("alice", "correct horse", "Alice")
    store.add("bob", "battery staple", "Bob")
    server = make_server(Authenticator(store, secrets.token_bytes(32)), args.host, args.port)
    print(f"listening on http://{args.host}:{server.server_address[1]}")
    server.serve_forever()


if __name__ == "__main__":
    main()
