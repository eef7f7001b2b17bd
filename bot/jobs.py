"""Durable background work on a Redis-backed queue (arq).

Planning, dispatch, run tracking, card refreshes and veto windows are jobs, so
any replica's worker picks them up, and a job whose worker died is run again
once its lease expires. Jobs are JSON, not pickles: a queue entry is data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Function, Worker, func

from bot.metrics import JOBS
from roles.executor import Sophie, directive_from_payload

log = logging.getLogger("sophie.jobs")

QUEUE = "sophie:queue"
JOB_TIMEOUT_SECONDS = 120


def _dumps(job: dict[str, Any]) -> bytes:
    return json.dumps(job).encode()


def _loads(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw)
    return data


async def connect(redis_url: str) -> ArqRedis:
    pool: ArqRedis = await create_pool(
        RedisSettings.from_dsn(redis_url),
        default_queue_name=QUEUE,
        job_serializer=_dumps,
        job_deserializer=_loads,
    )
    return pool


class ArqScheduler:
    """Implements :class:`roles.ports.Scheduler`."""

    def __init__(self, pool: ArqRedis) -> None:
        self.pool = pool

    async def enqueue(
        self, job: str, key: str, payload: dict[str, Any], delay_seconds: float = 0
    ) -> None:
        queued = await self.pool.enqueue_job(
            job, _job_id=key, _queue_name=QUEUE, _defer_by=delay_seconds or None, **payload
        )
        if queued is None:
            log.info("job %s already queued or done; not queued again", key)


def _job(
    name: str, run: Callable[[Sophie, dict[str, Any]], Awaitable[Any]], timeout: float
) -> Function:
    async def wrapper(ctx: dict[str, Any], **payload: Any) -> None:
        try:
            await run(ctx["sophie"], payload)
        except Exception:
            JOBS.labels(job=name, outcome="error").inc()
            log.exception("job %s failed", name)
            raise
        JOBS.labels(job=name, outcome="ok").inc()

    wrapper.__qualname__ = wrapper.__name__ = f"{name}_job"
    return func(wrapper, name=name, timeout=timeout, max_tries=3)


JOBS_BY_NAME: dict[str, Callable[[Sophie, dict[str, Any]], Awaitable[Any]]] = {
    "plan": lambda s, p: s.plan(directive_from_payload(p["directive"])),
    "dispatch": lambda s, p: s.dispatch(p["plan_id"]),
    "track": lambda s, p: s.track(p["plan_id"]),
    "card": lambda s, p: s.refresh_card(p["plan_id"]),
    "veto_window": lambda s, p: s.veto_window_closed(p["plan_id"]),
    "expire": lambda s, p: s.expire(p["plan_id"]),
    "remind": lambda s, p: s.remind(p["plan_id"]),
    "revise": lambda s, p: s.revise(p["plan_id"], p["feedback"]),
    "run_event": lambda s, p: s.run_event(int(p["run_id"])),
}


def make_worker(
    pool: ArqRedis, sophie: Sophie, poll_delay: float, job_timeout: float = JOB_TIMEOUT_SECONDS
) -> Worker:
    """A worker; a job whose worker died runs again ``job_timeout`` + 10 s after it started."""
    return Worker(
        functions=[_job(name, run, job_timeout) for name, run in JOBS_BY_NAME.items()],
        queue_name=QUEUE,
        redis_pool=pool,
        ctx={"sophie": sophie},
        handle_signals=False,
        poll_delay=poll_delay,
        max_jobs=20,
        job_timeout=job_timeout,
        keep_result=3600,
        job_serializer=_dumps,
        job_deserializer=_loads,
    )
