"""POST /github/webhook: run progress pushed by GitHub, so the thread moves without waiting
for the next poll. Polling stays on as the safety net for lost deliveries.

The body is read whole (up to GitHub's cap: "Payloads are capped at 25 MB",
https://docs.github.com/en/webhooks/webhook-events-and-payloads#payload-cap) before it is
verified with ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body). Deliveries are
deduplicated on ``X-GitHub-Delivery`` and on the sha256 of the body, so a signed body replayed
under a fresh delivery id costs nothing; the event itself only triggers a refresh through the
API, so a forged or reordered payload can never write state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from aiohttp import web

from bot.request_body import TooLarge, close_after_response, read_whole
from roles import jobs
from roles.integrator import correlation_in
from roles.sophie import Sophie

log = logging.getLogger("sophie.webhook")

HANDLED = ("workflow_run", "workflow_job", "deployment_status")
MAX_BODY = 25 * 1024 * 1024  # GitHub's cap (module docstring): a larger body is not GitHub's
# How long a delivery id or a body digest is remembered (GitHub redelivers within days).
DEDUPE_TTL_SECONDS = 7 * 86400


class Malformed(ValueError):
    """A signed payload whose fields are not the shape GitHub documents."""


def signature_ok(secret: str, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


def _id(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Malformed("run id is not a number")
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise Malformed("run id is not a number")
    number = int(value)
    if not 0 < number < 2**63:
        raise Malformed("run id out of range")
    return number


def _section(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed(f"{key} is not an object")
    return value


def run_id_of(event: str, payload: dict[str, Any]) -> int | None:
    """The Actions run an event is about; Malformed when its fields are the wrong shape."""
    if event == "workflow_run":
        return _id(_section(payload, "workflow_run").get("id"))
    if event == "workflow_job":
        return _id(_section(payload, "workflow_job").get("run_id"))
    if event == "deployment_status":
        # Deployments made by an Actions job link back to the run in target_url/log_url.
        status = _section(payload, "deployment_status")
        for url in (status.get("log_url"), status.get("target_url")):
            if isinstance(url, str) and "/actions/runs/" in url:
                tail = url.split("/actions/runs/", 1)[1].split("/", 1)[0]
                if tail.isascii() and tail.isdigit():
                    return _id(tail)
    return None


def correlation_of(event: str, payload: dict[str, Any]) -> str:
    """The correlation id in a workflow run's name (the template's ``run-name``), if any.

    The same parser as the gateway's ``find_run``: it lets a run whose id SOPHIE does not
    know yet (GitHub Enterprise Server) move its thread at once.
    """
    if event != "workflow_run":
        return ""
    title = _section(payload, "workflow_run").get("display_title")
    return correlation_in(title) if isinstance(title, str) else ""


def _refuse(status: int, reason: str, delivery: str = "") -> web.Response:
    log.warning("webhook refused: %d %s (delivery %.64r)", status, reason, delivery)
    return web.json_response({"error": reason}, status=status)


def handler(sophie: Sophie, secret: str | None) -> Any:
    async def github_webhook(request: web.Request) -> web.StreamResponse:
        if not secret:
            return web.json_response({"error": "GITHUB_WEBHOOK_SECRET is not set"}, status=503)
        # Whole body first: an HMAC over part of it never matches (aiohttp's app-wide
        # client_max_size does not apply to this stream; the limit here is GitHub's).
        try:
            body = await read_whole(request, MAX_BODY)
        except TooLarge:
            close_after_response(request)
            return _refuse(413, "payload larger than 25 MB")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if not signature_ok(secret, body, request.headers.get("X-Hub-Signature-256", "")):
            return _refuse(401, "bad signature", delivery)
        event = request.headers.get("X-GitHub-Event", "")
        if not delivery:
            return _refuse(400, "missing X-GitHub-Delivery")
        if event == "ping":
            return web.json_response({"ok": True, "pong": True})
        if event not in HANDLED:
            return web.json_response({"ok": True, "ignored": event})
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return _refuse(400, "body is not JSON", delivery)
        if not isinstance(payload, dict):
            return _refuse(400, "body is not a JSON object", delivery)
        try:
            run_id = run_id_of(event, payload)
            correlation_id = correlation_of(event, payload)
        except Malformed as exc:
            return _refuse(400, str(exc), delivery)
        # GitHub redelivers under the same id; a replay of a captured body under a fresh id
        # has the same digest. Either way: answered, nothing enqueued.
        digest = hashlib.sha256(body).hexdigest()
        fresh_delivery = await sophie.store.claim_delivery(delivery)
        fresh_body = await sophie.store.claim_event(f"webhook-body:{digest}", DEDUPE_TTL_SECONDS)
        if not (fresh_delivery and fresh_body):
            log.info("webhook delivery %.64r is a duplicate; ignored", delivery)
            return web.json_response({"ok": True, "duplicate": True})
        if run_id is not None:
            # A job, so the answer goes back to GitHub at once and any worker refreshes.
            await sophie.enqueue(jobs.RunEvent(run_id, correlation_id), f"run_event:{delivery}")
        return web.json_response({"ok": True, "run_id": run_id})

    return github_webhook
