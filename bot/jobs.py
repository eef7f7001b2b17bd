"""Durable background work on a Redis-backed queue (arq).

Planning, dispatch, run tracking, card refreshes and veto windows are jobs, so
any replica's worker picks them up. Jobs are JSON, not pickles: a queue entry is data.

Leases: arq marks a running job with ``arq:in-progress:<job_id>`` and no worker
starts a job while that key exists; once it has expired, the next worker to poll
runs the job again (``job_try`` + 1, up to ``max_tries``). arq sets that key for
the longest job timeout + 10 s, so a dead worker's job waited over two minutes.
Here the key lives only ``lease_seconds`` (10 s) and :class:`JobLeases` renews it
every heartbeat while the job runs, so a job whose worker died runs again within
about ``lease_seconds``, and a live job's lease never lapses. A worker that cannot
renew a lease (Redis unreachable for most of a lease) stops the job rather than
risk it running twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from arq.cron import CronJob, cron
from arq.worker import Function, Retry, Worker, func

from bot.metrics import JOBS, LEASES_LOST
from roles import jobs as job_table
from roles.flows.context import JOB_ID
from roles.sophie import Sophie

log = logging.getLogger("sophie.jobs")

QUEUE = "sophie:queue"
JOB_TIMEOUT_SECONDS = 120
JOB_LEASE_SECONDS = 10.0
IN_PROGRESS_PREFIX = "arq:in-progress:"  # arq.constants.in_progress_key_prefix


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
        for _ in range(3):
            queued = await self.pool.enqueue_job(
                job, _job_id=key, _queue_name=QUEUE, _defer_by=delay_seconds or None, **payload
            )
            if queued is not None:
                return
            # arq answers None both for a job that exists and for a connection lost while
            # it watched the job's key (redis-py turns that into a WatchError): look.
            if await self.pool.exists(job_key_prefix + key, result_key_prefix + key):
                log.info("job %s already queued or done; not queued again", key)
                return
        raise ConnectionError(f"job {key} could not be queued")


MAX_TRIES = 3
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


def retry_delay(job_try: int) -> float:
    """Backoff with jitter before try ``job_try + 1``: about 1 s, 2 s, 4 s… at most 30 s."""
    base = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2.0 ** (job_try - 1))
    return base * random.uniform(0.5, 1.5)


def _report_margin(timeout: float) -> float:
    """The end of a job's time kept for saying that it failed (arq cancels at ``timeout``)."""
    return min(5.0, timeout * 0.2)


def _job(name: str, timeout: float, max_tries: int = MAX_TRIES) -> Function:
    """A job from the job table. Any error is retried with backoff and jitter (arq retries
    only on ``Retry``); on the last try the thread is told what failed (``job_failed``).
    The job stops itself a little before arq's timeout, so that is reported too."""
    margin = _report_margin(timeout)

    async def wrapper(ctx: dict[str, Any], **payload: Any) -> None:
        sophie: Sophie = ctx["sophie"]
        try:
            job = job_table.parse(name, payload)
        except job_table.BadJob:
            JOBS.labels(job=name, outcome="error").inc()
            log.exception("job %s refused: not in the job table", name)
            raise
        JOB_ID.set(str(ctx.get("job_id") or ""))  # leases this job takes are its own
        try:
            await asyncio.wait_for(sophie.run(job), timeout - margin)
        except Exception as exc:
            JOBS.labels(job=name, outcome="error").inc()
            tries = int(ctx.get("job_try") or 1)
            if tries < max_tries:
                delay = retry_delay(tries)
                log.warning(
                    "job %s failed (try %d), retrying in %.1f s: %r", name, tries, delay, exc
                )
                raise Retry(defer=delay) from exc
            log.exception("job %s failed for good (try %d of %d)", name, tries, max_tries)
            error = "it took too long" if isinstance(exc, TimeoutError) else _error_text(exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sophie.job_failed(job, error), margin * 0.8)
            raise
        JOBS.labels(job=name, outcome="ok").inc()

    wrapper.__qualname__ = wrapper.__name__ = f"{name}_job"
    return func(wrapper, name=name, timeout=timeout, max_tries=max_tries)


def _error_text(exc: Exception) -> str:
    """What failed, short and safe for a Slack thread (no URLs, no response bodies)."""
    response = getattr(exc, "response", None)
    slack_error = response.get("error") if isinstance(response, Mapping) else None
    if slack_error is None and response is not None and hasattr(response, "data"):
        data = getattr(response, "data", None)  # slack_sdk's SlackResponse
        slack_error = data.get("error") if isinstance(data, dict) else None
    if isinstance(slack_error, str):
        return f"Slack answered {slack_error[:80]}"
    status = getattr(exc, "status", None)  # PyGithub's GithubException
    if isinstance(status, int):
        return f"GitHub answered HTTP {status}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def reconcile_cron(every_seconds: int, timeout: float) -> CronJob:
    """The reconciler (roles/flows/reconciling.py) every ``every_seconds``
    (SOPHIE_RECONCILE_SECONDS, 1–60): one run per tick across every worker (arq's unique
    cron job id), a lease against overlapping sweeps, and idempotent moves."""
    every = max(1, min(60, every_seconds))
    return cron(
        _job("reconcile", timeout, max_tries=1).coroutine,
        name="reconcile",
        second=set(range(0, 60, every)),
        unique=True,
        run_at_startup=True,
        timeout=timeout,
        max_tries=1,
    )


# How often every worker checks whether the scheduled digest is due (seconds, 1–60).
DIGEST_CHECK_SECONDS = 60


def digest_check_seconds(environ: Mapping[str, str] | None = None) -> int:
    """``SOPHIE_DIGEST_CHECK_SECONDS`` (1–60; default 60): how often a worker looks for a
    due digest slot. A slot is posted within about this long after it begins; tests
    shorten it to see a digest in seconds."""
    raw = (os.environ if environ is None else environ).get("SOPHIE_DIGEST_CHECK_SECONDS", "")
    try:
        value = int(raw.strip() or DIGEST_CHECK_SECONDS)
    except ValueError:
        log.warning("SOPHIE_DIGEST_CHECK_SECONDS=%r is not a whole number: using 60", raw)
        value = DIGEST_CHECK_SECONDS
    return max(1, min(60, value))


def digest_cron(every_seconds: int, timeout: float) -> CronJob:
    """The scheduled digest's check (roles/flows/digesting.py) every ``every_seconds`` on
    every worker, and at start-up (a worker that starts late still posts a due slot).
    arq's unique cron id makes most ticks run once across workers; the slot's claim in
    Redis is what guarantees one digest per slot (ticks started at start-up, retries and
    crashed workers included). One try per tick: the next tick is the retry."""
    every = max(1, min(60, every_seconds))
    return cron(
        _job("digest", timeout, max_tries=1).coroutine,
        name="digest",
        second=set(range(0, 60, every)),
        unique=True,
        run_at_startup=True,
        timeout=timeout,
        max_tries=1,
    )


# A signed audit checkpoint every five minutes (arq's unique cron: one per slot across
# every worker); it is skipped when nothing was appended since the last one.
AUDIT_CHECKPOINT_MINUTES = set(range(0, 60, 5))


async def audit_checkpoint(ctx: dict[str, Any]) -> None:
    from bot.audit_log import take_checkpoint
    from bot.redis_store import RedisStore

    store = ctx["sophie"].store
    if isinstance(store, RedisStore):
        await take_checkpoint(store.audit_log)


def cron_jobs() -> list[CronJob]:
    return [
        cron(
            audit_checkpoint,
            name="audit_checkpoint",
            minute=AUDIT_CHECKPOINT_MINUTES,
            second=0,
            unique=True,
            run_at_startup=False,
        )
    ]


def make_worker(
    pool: ArqRedis,
    sophie: Sophie,
    poll_delay: float,
    job_timeout: float = JOB_TIMEOUT_SECONDS,
    lease_seconds: float = JOB_LEASE_SECONDS,
) -> Worker:
    """A worker whose jobs hold a ``lease_seconds`` lease (renew it with :class:`JobLeases`)."""
    worker = Worker(
        functions=[_job(name, job_timeout) for name in job_table.NAMES],
        cron_jobs=[
            *cron_jobs(),
            reconcile_cron(sophie.tuning.reconcile_seconds, job_timeout),
            digest_cron(digest_check_seconds(), job_timeout),
        ],
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
    # arq's default is the longest job timeout + 10 s; start_jobs() reads this attribute
    # when it claims a job (SET arq:in-progress:<id> PX <lease>).
    worker.in_progress_timeout_s = lease_seconds
    return worker


class JobLeases:
    """Renews the in-progress key of every job a worker is running.

    Call :meth:`renew` every heartbeat (a third of the lease or less). A key that
    has vanished is taken again if no other worker holds it; a job whose lease
    cannot be renewed in time, or that another worker has taken, is cancelled
    (arq then leaves it queued for a new try) so one job never runs twice at once.
    """

    def __init__(self, worker: Worker, lease_seconds: float, renew_every: float) -> None:
        self.worker = worker
        self.lease_ms = int(lease_seconds * 1000)
        # Stop a job that has gone this long without a renewal: its key may expire
        # before the next heartbeat could renew it.
        self.give_up_after = lease_seconds - 2 * renew_every
        self.renewed: dict[str, float] = {}

    def running(self) -> list[str]:
        return [job_id for job_id, task in self.worker.job_tasks.items() if not task.done()]

    async def renew(self) -> None:
        now = time.monotonic()
        running = self.running()
        for job_id in list(self.renewed):
            if job_id not in running:
                del self.renewed[job_id]
        for job_id in running:
            self.renewed.setdefault(job_id, now)  # its worker claimed it a moment ago
        if not running:
            return
        try:
            async with self.worker.pool.pipeline(transaction=False) as pipe:
                for job_id in running:
                    pipe.pexpire(IN_PROGRESS_PREFIX + job_id, self.lease_ms)
                held = await pipe.execute()
            for job_id, ok in zip(running, held, strict=True):
                if ok or await self.worker.pool.set(
                    IN_PROGRESS_PREFIX + job_id, b"1", px=self.lease_ms, nx=True
                ):
                    self.renewed[job_id] = time.monotonic()
                else:
                    self._lost(job_id, "another worker holds it")
        finally:
            now = time.monotonic()
            for job_id in running:
                if now - self.renewed.get(job_id, now) > self.give_up_after:
                    self._lost(job_id, "its lease could not be renewed")

    def _lost(self, job_id: str, why: str) -> None:
        task = self.worker.job_tasks.get(job_id)
        self.renewed.pop(job_id, None)
        if task is None or task.done():
            return
        LEASES_LOST.inc()
        log.warning("stopping job %s: %s (it runs again from the queue)", job_id, why)
        task.cancel()
