"""Slack's Socket Mode on top of the fake Web API: apps.connections.open and a WebSocket.

``apps.connections.open`` takes the app-level token (``xapp-``) and returns a ws://
URL on the same server; the connected app gets ``hello`` and then the envelopes a
test pushes with :meth:`FakeSlackSocket.push`, which waits for the app's ack the way
Slack does (an envelope not acknowledged is redelivered by Slack; here it fails the
test).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.slack_api import FakeSlack


class FakeSlackSocket(FakeSlack):
    def __init__(self, *args: Any, app_token: str = "xapp-1-test-app-token", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app_token = app_token
        self.acks: dict[str, dict[str, Any]] = {}
        self.connections = 0
        self._sockets: list[web.WebSocketResponse] = []
        self._ack_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._envelopes = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.app.router.add_get("/socket", self._socket)
        self.app.on_startup.append(self._started)
        self.handlers["apps.connections.open"] = self._connections_open

    async def _started(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()

    def _token(self, request: web.Request, params: dict[str, Any]) -> str | None:
        token = super()._token(request, params)
        if request.match_info.get("method") != "apps.connections.open" or token is None:
            return token
        # This method takes the app-level token, and only that.
        return self.token if token == self.app_token else "invalid-for-this-method"

    def _connections_open(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"url": f"ws://{request.host}/socket"}

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections += 1
        self._sockets.append(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "connection_info": {"app_id": "A0SOPHIEAPP"},
                "debug_info": {"host": "fake", "approximate_connection_time": 3600},
            }
        )
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            ack = json.loads(msg.data)
            envelope_id = ack.get("envelope_id")
            if envelope_id:
                self.acks[envelope_id] = ack
                waiter = self._ack_waiters.pop(envelope_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(ack)
        self._sockets.remove(ws)
        return ws

    async def _push(self, kind: str, payload: dict[str, Any], within: float) -> dict[str, Any]:
        if not self._sockets:
            raise RuntimeError("no Socket Mode connection")
        envelope_id = f"env-{next(self._envelopes)}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._ack_waiters[envelope_id] = waiter
        await self._sockets[-1].send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind != "events_api",
                "retry_attempt": 0,
                "retry_reason": "",
            }
        )
        return await asyncio.wait_for(waiter, within)

    def push(self, kind: str, payload: dict[str, Any], timeout: float = 3) -> dict[str, Any]:
        """Send an envelope (``events_api``, ``interactive``, ``slash_commands``) from the
        test's thread and return the app's acknowledgement."""
        assert self._loop is not None, "serve the fake first"
        future = asyncio.run_coroutine_threadsafe(self._push(kind, payload, timeout), self._loop)
        return future.result(timeout + 1)
