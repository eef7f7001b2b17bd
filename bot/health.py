"""Liveness and readiness, shared by the web process and `sophie worker --port`.

Ready means work will get done: Redis answers and a worker is alive (this
process's own worker when it runs one; otherwise any worker's heartbeat).
Slack's reachability is reported by the web process but never makes it unready:
keys, bundles and the GitHub webhook do not need Slack.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.metrics import REGISTRY, WORKERS_ALIVE
from bot.supervisor import SupervisedWorker, live_workers, queue_depth

CHECK_TIMEOUT_SECONDS = 2.0


async def readiness(
    redis: aioredis.Redis, supervisor: SupervisedWorker | None
) -> tuple[bool, dict[str, Any]]:
    """``(ready, body)`` for ``GET /readyz``."""
    redis_ok = False
    workers: list[dict[str, Any]] = []
    queue: dict[str, int] | None = None
    try:
        redis_ok = bool(await asyncio.wait_for(redis.ping(), CHECK_TIMEOUT_SECONDS))
        workers = await asyncio.wait_for(live_workers(redis), CHECK_TIMEOUT_SECONDS)
        queue = await asyncio.wait_for(queue_depth(redis), CHECK_TIMEOUT_SECONDS)
    except Exception:
        if not redis_ok:
            WORKERS_ALIVE.set(0)
    # A worker that cannot reach Redis does no work, whatever it last reported.
    if supervisor is not None:
        workers_ok = redis_ok and supervisor.alive
    else:
        workers_ok = redis_ok and len(workers) > 0
    ready = redis_ok and workers_ok
    body: dict[str, Any] = {
        "ok": ready,
        "checks": {"redis": redis_ok, "workers": workers_ok},
        "workers": {
            "alive": len(workers),
            "this_process": supervisor.status() if supervisor is not None else None,
        },
        "queue": queue,
    }
    return ready, body


def metrics_response() -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def worker_web_app(redis: aioredis.Redis, supervisor: SupervisedWorker) -> web.Application:
    """``sophie worker --port``: /healthz (liveness), /readyz (readiness), /metrics."""

    async def healthz(_: web.Request) -> web.StreamResponse:
        ok = supervisor.running
        return web.json_response({"ok": ok, "worker": supervisor.id}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.StreamResponse:
        ready, body = await readiness(redis, supervisor)
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.StreamResponse:
        return metrics_response()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
