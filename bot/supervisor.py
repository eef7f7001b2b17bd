"""Supervised job workers: restart after outages, heartbeats, graceful stop.

arq's ``Worker.main()`` ends on the first Redis error. :class:`SupervisedWorker`
runs it again (same worker, so jobs already running carry on) with exponential
backoff and jitter once Redis answers, logging each outage once, not each retry.
Every ``heartbeat_seconds`` it renews its running jobs' leases
(:class:`bot.jobs.JobLeases`) and publishes ``sophie:workers:<id>`` with a short
TTL, which ``/readyz`` counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from arq.worker import Worker

from bot.jobs import QUEUE, JobLeases
from bot.metrics import QUEUE_DEPTH, WORKER_JOBS_RUNNING, WORKER_RESTARTS, WORKER_UP, WORKERS_ALIVE
from bot.startup_checks import lease_problem

log = logging.getLogger("sophie.worker")

WORKERS = "sophie:workers"  # sorted set: worker id → when its heartbeat expires (ms)
WORKERS_PREFIX = "sophie:workers:"  # one key per worker, its status, with a short TTL
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 2.0
SHUTDOWN_GRACE_SECONDS = 10.0
CHECK_SECONDS = 2.0
# A restarted worker that fails again within this long is still in the same outage
# (no new log line, the backoff keeps growing).
STABLE_SECONDS = 5.0
# A worker counts as alive while its heartbeat key lives: this many heartbeats.
HEARTBEAT_TTL_BEATS = 3

OUTAGES = (
    ConnectionError,
    TimeoutError,
    OSError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def check_timings(heartbeat_seconds: float, lease_seconds: float) -> None:
    """Refuse timings under which a live job's lease could lapse between two renewals."""
    problem = lease_problem(heartbeat_seconds, lease_seconds)
    if problem:
        raise ValueError(problem)


class SupervisedWorker:
    def __init__(
        self,
        worker: Worker,
        redis: aioredis.Redis,
        *,
        heartbeat_seconds: float,
        lease_seconds: float,
    ) -> None:
        check_timings(heartbeat_seconds, lease_seconds)
        self.worker = worker
        self.redis = redis
        self.heartbeat_seconds = heartbeat_seconds
        self.leases = JobLeases(worker, lease_seconds, heartbeat_seconds)
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.key = WORKERS_PREFIX + self.id
        self.started = datetime.now(UTC).replace(microsecond=0)
        self.restarts = 0
        self.up = False
        self.last_beat = 0.0
        self._stalled = False
        self._up_since = 0.0
        self._wake = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None

    # --- state ---------------------------------------------------------------------

    @property
    def ttl_seconds(self) -> float:
        return self.heartbeat_seconds * HEARTBEAT_TTL_BEATS

    @property
    def running(self) -> bool:
        """Liveness: the supervisor itself has not ended (it ends only when stopped)."""
        return self._run_task is not None and not self._run_task.done()

    @property
    def alive(self) -> bool:
        """Readiness: polling the queue, with a heartbeat recent enough to be seen."""
        fresh = time.monotonic() - self.last_beat < self.ttl_seconds
        return self.running and self.up and fresh

    def status(self) -> dict[str, Any]:
        w = self.worker
        return {
            "id": self.id,
            "pid": os.getpid(),
            "host": self.host,
            "started": self.started.isoformat(),
            "up": self.up,
            "jobs_running": len(self.leases.running()),
            "jobs_complete": w.jobs_complete,
            "jobs_failed": w.jobs_failed,
            "jobs_retried": w.jobs_retried,
            "restarts": self.restarts,
        }

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._run_task = asyncio.create_task(self._supervise(), name=f"worker {self.id}")
        self._beat_task = asyncio.create_task(self._heartbeats(), name=f"heartbeat {self.id}")

    async def stop(self, grace_seconds: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Take no new jobs, let running ones finish (bounded, leases still renewed), close.

        A job still running after the grace period is cancelled; arq leaves it queued
        and another worker runs it again, so nothing is lost, only delayed.
        """
        if self._run_task is not None:
            self._run_task.cancel()  # also cancels arq's main task, which it awaits
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._run_task
        self._set_up(False)
        running = [t for t in self.worker.tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=grace_seconds)
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._beat_task
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key)
                pipe.zrem(WORKERS, self.id)
                await asyncio.wait_for(pipe.execute(), CHECK_SECONDS)
        try:
            await asyncio.wait_for(self.worker.close(), grace_seconds)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves: do not swallow it
        except Exception as exc:  # Redis gone at shutdown: nothing left to tidy
            log.info("worker %s closed without tidying up (%s)", self.id, _describe(exc))

    def _set_up(self, up: bool) -> None:
        if up and not self.up:
            self._up_since = time.monotonic()
        self.up = up
        WORKER_UP.set(1 if up else 0)

    # --- the restart loop ----------------------------------------------------------

    async def _supervise(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        outage_began: float | None = None  # the first failure of the current outage
        back = False  # this outage's recovery has been logged
        started = 0.0
        cause = ""
        while True:
            try:
                if outage_began is not None:
                    await asyncio.wait_for(self.redis.ping(), CHECK_SECONDS)
                    if not back:
                        back = True
                        log.warning(
                            "worker %s: %s after %.1f s; worker restarted",
                            self.id,
                            "Redis answers again" if cause == "redis" else "restarting",
                            time.monotonic() - outage_began,
                        )
                    self.restarts += 1
                    WORKER_RESTARTS.inc()
                    self._reap_finished_jobs()
                    self._wake.set()  # publish the heartbeat now
                self._set_up(True)
                started = time.monotonic()
                await self.worker.async_run()
                raise RuntimeError("arq's main loop returned")
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or current.cancelling() or not self._stalled:
                    raise  # stop() cancelled us
                exc: BaseException = TimeoutError("the worker stalled (no heartbeat)")
            except Exception as error:
                exc = error
            self._stalled = False
            self._set_up(False)
            now = time.monotonic()
            if outage_began is not None and back and now - started >= STABLE_SECONDS:
                outage_began = None  # the last outage ended; this is a new one
            if outage_began is None:
                outage_began, back, delay = now, False, BACKOFF_FIRST_SECONDS
                cause = "redis" if isinstance(exc, OUTAGES) else "error"
                if cause == "redis":
                    log.warning(
                        "worker %s lost Redis (%s); jobs wait in the queue; reconnecting "
                        "with backoff",
                        self.id,
                        _describe(exc),
                    )
                else:
                    log.error(
                        "worker %s stopped on an error; restarting it",
                        self.id,
                        exc_info=exc,
                    )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(BACKOFF_CAP_SECONDS, delay * 2)

    def _watchdog(self) -> None:
        """Restart a worker that looks up but cannot reach Redis (a hung connection:
        arq's client has no read timeout, so a blackholed Redis stalls it silently)."""
        main = self.worker.main_task
        silent = time.monotonic() - max(self.last_beat, self._up_since)
        if self.up and silent > self.ttl_seconds and main is not None and not main.done():
            log.warning("worker %s: no heartbeat for %.1f s; restarting it", self.id, silent)
            self._stalled = True
            main.cancel()

    def _reap_finished_jobs(self) -> None:
        """Forget job tasks that ended during the outage (arq re-raises their errors)."""
        for job_id, task in list(self.worker.tasks.items()):
            if task.done():
                del self.worker.tasks[job_id]
                if not task.cancelled() and task.exception() is not None:
                    log.info(
                        "job %s did not finish cleanly during the outage (%s); it runs "
                        "again from the queue",
                        job_id,
                        _describe(task.exception()),
                    )

    # --- heartbeats ----------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._beat(), max(self.heartbeat_seconds, 1.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the restart loop reports outages
                log.debug("worker %s heartbeat failed: %s", self.id, _describe(exc))
                self._watchdog()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_seconds)

    async def _beat(self) -> None:
        WORKER_JOBS_RUNNING.set(len(self.leases.running()))
        await self.leases.renew()
        ttl_ms = int(self.ttl_seconds * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key, json.dumps(self.status()), px=ttl_ms)
            pipe.zadd(WORKERS, {self.id: int(time.time() * 1000) + ttl_ms})
            await pipe.execute()
        self.last_beat = time.monotonic()
        await queue_depth(self.redis)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def live_workers(redis: aioredis.Redis) -> list[dict[str, Any]]:
    """The workers whose heartbeat has not expired (any process, any host)."""
    await redis.zremrangebyscore(WORKERS, "-inf", int(time.time() * 1000))
    ids = await redis.zrange(WORKERS, 0, -1)
    found: list[dict[str, Any]] = []
    if ids:
        keys = [WORKERS_PREFIX + (i.decode() if isinstance(i, bytes) else str(i)) for i in ids]
        for raw in await redis.mget(keys):
            if raw is not None:
                with contextlib.suppress(ValueError):
                    found.append(json.loads(raw))
    WORKERS_ALIVE.set(len(found))
    return found


async def queue_depth(redis: aioredis.Redis) -> dict[str, int]:
    """Jobs due now (waiting or running) and deferred to later."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(QUEUE, "-inf", now_ms)
        pipe.zcount(QUEUE, f"({now_ms}", "+inf")
        due, deferred = await pipe.execute()
    QUEUE_DEPTH.labels(state="due").set(due)
    QUEUE_DEPTH.labels(state="deferred").set(deferred)
    return {"due": int(due), "deferred": int(deferred)}
