"""``POST /slack/events``: read the body (1 MB at most), check it (bot.slack_guard), hand it
to Bolt. Every way a request can go wrong is answered deliberately: 413 too large, 401
unsigned, 400 malformed, 415 not JSON or a form, and a log line; never an unhandled 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import redis.exceptions
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot import slack_guard
from bot.request_body import TooLarge, close_after_response, read_whole

log = logging.getLogger("sophie.slack")

# What a listener raises when the payload is not the shape it expects.
MALFORMED = (KeyError, IndexError, TypeError, AttributeError, ValueError, RecursionError)
# What a listener raises when Redis or a service is away for a moment: Slack retries events.
UNAVAILABLE = (ConnectionError, TimeoutError, asyncio.TimeoutError, redis.exceptions.RedisError)


def _refuse(request: web.Request, status: int, reason: str, size: int) -> web.Response:
    log.warning(
        "refused a Slack request from %s: %d %s (%d bytes, Content-Type %.60r)",
        request.remote,
        status,
        reason,
        size,
        request.headers.get("Content-Type", ""),
    )
    return web.json_response({"ok": False, "error": reason}, status=status)


async def handle(request: web.Request, bolt: AsyncApp, secret: str) -> web.StreamResponse:
    try:
        body = await read_whole(request, slack_guard.MAX_BODY)
    except TooLarge:
        close_after_response(request)
        return _refuse(request, 413, "body larger than 1 MB", request.content_length or 0)
    outcome = slack_guard.check(request.headers, body, secret, time.time())
    if isinstance(outcome, slack_guard.Rejected):
        return _refuse(request, outcome.status, outcome.reason, len(body))
    try:
        bolt_req = AsyncBoltRequest(
            body=outcome.text,
            query=request.query_string,
            headers=request.headers,  # type: ignore[arg-type]  # as Bolt's aiohttp adapter
        )
        if outcome.content_type == slack_guard.FORM and bolt_req.body != outcome.body:
            # Bolt reads any form body containing the word "payload" as an interaction and
            # finds nothing (e.g. `/sophie show payload`); use the body as parsed here.
            bolt_req.body = outcome.body
            bolt_req.context = build_async_context(AsyncBoltContext({}), outcome.body)
    except MALFORMED as exc:
        return _refuse(request, 400, f"malformed request ({type(exc).__name__})", len(body))
    try:
        response = await bolt.async_dispatch(bolt_req)
    except Exception:  # Bolt answers listener errors itself; this is the last resort.
        log.exception("Slack request failed in dispatch")
        return web.json_response({"ok": False, "error": "internal error"}, status=500)
    return await to_aiohttp_response(response)


async def listener_error(error: Exception, response: BoltResponse | None) -> BoltResponse | None:
    """Bolt's error handler: a deliberate status for anything a listener raises."""
    if isinstance(error, UNAVAILABLE):
        log.warning("Slack request deferred: %s: %.200s", type(error).__name__, error)
        status, reason = 503, "temporarily unavailable; retry"
    elif isinstance(error, MALFORMED):
        log.warning("Slack request refused: %s: %.200s", type(error).__name__, error)
        status, reason = 400, "malformed request"
    else:
        log.error("Slack listener failed", exc_info=error)
        status, reason = 500, "internal error"
    if response is None:  # already acknowledged: nothing left to answer
        return None
    return BoltResponse(
        status=status,
        body=json.dumps({"ok": False, "error": reason}),
        headers={"content-type": "application/json"},
    )
