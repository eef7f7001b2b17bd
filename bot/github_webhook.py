"""POST /github/webhook: run progress pushed by GitHub, so the thread moves without waiting
for the next poll. Polling stays on as the safety net for lost deliveries.

Verified with ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body), deduplicated on
``X-GitHub-Delivery``; the event itself only triggers a refresh through the API, so a
forged or reordered payload can never write state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from aiohttp import web

from roles.executor import Sophie

log = logging.getLogger("sophie.webhook")

HANDLED = ("workflow_run", "workflow_job", "deployment_status")
MAX_BODY = 5 * 1024 * 1024  # GitHub caps payloads at 25 MB; ours are small


def signature_ok(secret: str, body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


def run_id_of(event: str, payload: dict[str, Any]) -> int | None:
    if event == "workflow_run":
        run = payload.get("workflow_run") or {}
        return int(run["id"]) if run.get("id") else None
    if event == "workflow_job":
        job = payload.get("workflow_job") or {}
        return int(job["run_id"]) if job.get("run_id") else None
    if event == "deployment_status":
        # Deployments made by an Actions job link back to the run in target_url/log_url.
        status = payload.get("deployment_status") or {}
        for url in (status.get("log_url"), status.get("target_url")):
            if url and "/actions/runs/" in url:
                tail = url.split("/actions/runs/", 1)[1].split("/", 1)[0]
                if tail.isdigit():
                    return int(tail)
    return None


def handler(sophie: Sophie, secret: str | None) -> Any:
    async def github_webhook(request: web.Request) -> web.StreamResponse:
        if not secret:
            return web.json_response({"error": "GITHUB_WEBHOOK_SECRET is not set"}, status=503)
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.json_response({"error": "payload too large"}, status=413)
        if not signature_ok(secret, body, request.headers.get("X-Hub-Signature-256", "")):
            log.warning("webhook with a bad signature refused")
            return web.json_response({"error": "bad signature"}, status=401)
        event = request.headers.get("X-GitHub-Event", "")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if not delivery:
            return web.json_response({"error": "missing X-GitHub-Delivery"}, status=400)
        if event == "ping":
            return web.json_response({"ok": True, "pong": True})
        if event not in HANDLED:
            return web.json_response({"ok": True, "ignored": event})
        try:
            payload = json.loads(body)
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not await sophie.store.claim_delivery(delivery):
            return web.json_response({"ok": True, "duplicate": True})
        run_id = run_id_of(event, payload)
        if run_id is not None:
            # A job, so the answer goes back to GitHub at once and any worker refreshes.
            await sophie.scheduler.enqueue("run_event", f"run_event:{delivery}", {"run_id": run_id})
        return web.json_response({"ok": True, "run_id": run_id})

    return github_webhook
