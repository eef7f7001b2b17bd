"""Workers that survive outages, from outside: real processes, a real redis-server killed
and restarted, SIGKILLed workers, and the health and metrics they serve.

Each test prints the figure it measures (recovery after a Redis blip, a killed
worker's job resumed), so `pytest -s` shows them.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.embedded_redis import EmbeddedRedis
from bot.redis_health import check_persistence, describe_persistence
from bot.settings import Settings
from bot.supervisor import check_timings
from handlers import blocks as kit
from tests import slack_requests as sr
from tests.fakes import llm_api
from tests.fakes.llm_plans import planning_model
from tests.harness import App, env_for, eventually, start_app
from tests.integration.conftest import ALICE, CHANNEL, DAVE, Fakes
from tests.integration.test_end_to_end import SEED, _buttons, cards, click
from tests.processes import WorkerProcess
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "openai/gpt-4o-mini"
# Short leases and heartbeats, through the documented settings, where a test measures
# something else than the production figure.
QUICK = {"SOPHIE_WORKER_HEARTBEAT_SECONDS": "0.5", "SOPHIE_JOB_LEASE_SECONDS": "2"}


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF, so a kill loses nothing), on its own port."""
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


def _env(
    fakes: Fakes, redis_url: str, data: Path, llm: bool, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = env_for(
        redis_url,
        data,
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=fakes.llm_server.url if llm else None,
    )
    return {**env, **(extra or {})}


async def _app(
    fakes: Fakes,
    redis_url: str,
    data: Path,
    *,
    worker: bool,
    llm: bool = False,
    extra: dict[str, str] | None = None,
) -> App:
    return await start_app(
        Settings.from_env(_env(fakes, redis_url, data, llm, extra)), worker=worker
    )


@pytest.fixture()
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture()
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with http.get(url) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()
    except aiohttp.ClientError:
        return 0, None


async def _status(http: aiohttp.ClientSession, url: str, want: int) -> Any:
    status, body = await _get(http, url)
    return body if status == want else None


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def _metrics(http: aiohttp.ClientSession, base: str) -> str:
    status, text = await _get(http, f"{base}/metrics")
    assert status == 200, text
    return str(text)


async def _metric_is(http: aiohttp.ClientSession, base: str, name: str, value: float) -> bool:
    return _metric(await _metrics(http, base), name) == value


async def _directive(app: App, fakes: Fakes) -> tuple[str, float]:
    """Post a directive as Slack would; returns its thread and when it was posted."""
    event = sr.mention_event(SEED, DAVE, CHANNEL)
    posted = time.monotonic()
    resp = await app.event(event)
    assert resp.status == 200
    return str(event["event"]["ts"]), posted


async def test_the_in_process_worker_survives_a_redis_blip(
    fakes: Fakes, own_redis: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    app = await _app(fakes, own_redis.url, tmp_path / "data", worker=True, extra=QUICK)
    try:
        ready = await eventually(
            lambda: _status(http, f"{app.url}/readyz", 200), what="ready at start"
        )
        assert ready["checks"] == {"redis": True, "workers": True}
        assert ready["slack"] is True and ready["workers"]["this_process"]["up"] is True
        restarts = _metric(await _metrics(http, app.url), "sophie_worker_restarts_total")

        own_redis.kill()
        outage = time.monotonic()
        down = await eventually(
            lambda: _status(http, f"{app.url}/readyz", 503), what="unready during the outage"
        )
        assert down["checks"] == {"redis": False, "workers": False}
        assert (await _get(http, f"{app.url}/healthz"))[0] == 200  # alive all the same
        await asyncio.sleep(max(0.0, 2 - (time.monotonic() - outage)))
        own_redis.start()  # same port, same AOF
        back = time.monotonic()

        thread, _ = await _directive(app, fakes)
        await eventually(lambda: cards(fakes.slack, thread), within=15, what="the card")
        resumed = time.monotonic() - back
        await eventually(lambda: _status(http, f"{app.url}/readyz", 200), what="ready again")
        after = _metric(await _metrics(http, app.url), "sophie_worker_restarts_total")
        assert after >= restarts + 1
        print(f"\nRedis down {back - outage:.1f} s; in-process worker: card {resumed:.2f} s later")
    finally:
        await app.close()


async def test_a_slack_outage_does_not_make_the_pod_unready(
    fakes: Fakes, redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/api/"  # Slack unreachable
    extra = {**QUICK, "SLACK_API_URL": nowhere}
    app = await _app(fakes, redis_url, tmp_path / "data", worker=True, extra=extra)
    try:
        ready = await eventually(lambda: _status(http, f"{app.url}/readyz", 200))
        assert ready["checks"] == {"redis": True, "workers": True} and ready["slack"] is False
        assert (await _get(http, f"{app.url}/.well-known/sophie/keys"))[0] == 200
    finally:
        await app.close()


async def test_a_worker_process_survives_a_redis_blip_and_serves_its_health(
    fakes: Fakes,
    own_redis: RedisServer,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    workers: list[WorkerProcess],
) -> None:
    env = _env(fakes, own_redis.url, tmp_path / "data", llm=False, extra=QUICK)
    web = await _app(fakes, own_redis.url, tmp_path / "data", worker=False, extra=QUICK)
    try:
        # No worker anywhere: the web process is alive but not ready.
        status, body = await _get(http, f"{web.url}/readyz")
        assert status == 503 and body["checks"] == {"redis": True, "workers": False}
        assert (await _get(http, f"{web.url}/healthz"))[0] == 200

        worker = WorkerProcess(env, tmp_path / "worker.log", port=free_port())
        workers.append(worker)
        health = await eventually(
            lambda: _status(http, f"{worker.url}/healthz", 200), within=30, what="worker up"
        )
        ready = await eventually(lambda: _status(http, f"{worker.url}/readyz", 200))
        assert ready["checks"] == {"redis": True, "workers": True}
        assert ready["workers"]["this_process"]["id"] == health["worker"]
        text = await _metrics(http, worker.url)
        assert _metric(text, "sophie_worker_up") == 1
        assert _metric(text, "sophie_worker_restarts_total") == 0
        assert 'sophie_queue_depth{state="due"}' in text
        web_ready = await eventually(lambda: _status(http, f"{web.url}/readyz", 200))
        assert web_ready["workers"]["alive"] == 1 and web_ready["queue"] is not None

        before_outage = len(worker.output())
        own_redis.kill()
        outage = time.monotonic()
        await eventually(lambda: _status(http, f"{worker.url}/readyz", 503), what="unready")
        await eventually(lambda: _status(http, f"{web.url}/readyz", 503), what="web unready")
        assert (await _get(http, f"{worker.url}/healthz"))[0] == 200  # liveness holds
        await eventually(
            lambda: _metric_is(http, worker.url, "sophie_worker_up", 0), what="worker down"
        )
        await asyncio.sleep(max(0.0, 2 - (time.monotonic() - outage)))
        own_redis.start()
        back = time.monotonic()

        thread, _ = await _directive(web, fakes)
        await eventually(lambda: cards(fakes.slack, thread), within=15, what="the card")
        resumed = time.monotonic() - back
        await eventually(lambda: _status(http, f"{worker.url}/readyz", 200), what="ready again")
        await eventually(lambda: _status(http, f"{web.url}/readyz", 200), what="web ready")
        text = await _metrics(http, worker.url)
        assert _metric(text, "sophie_worker_restarts_total") >= 1
        assert _metric(text, "sophie_worker_up") == 1
        assert worker.proc.poll() is None
        # Once per outage, not once per retry (a blip at start-up is another outage).
        log = worker.output()[before_outage:]
        assert log.count("lost Redis") == 1, log
        assert log.count("Redis answers again") == 1, log
        print(f"\nRedis down {back - outage:.1f} s; worker process: card {resumed:.2f} s later")
    finally:
        await web.close()


async def test_a_killed_workers_job_resumes_within_15_seconds(
    fakes: Fakes,
    redis_url: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    workers: list[WorkerProcess],
) -> None:
    # Production lease and heartbeat: this measures the real figure.
    body = {"messages": [{"role": "user", "content": f"<directive>{SEED}</directive>"}]}
    fakes.llm.script(MODEL, llm_api.slow(60, planning_model()(MODEL, body)))
    env = _env(fakes, redis_url, tmp_path / "data", llm=True)
    web = await _app(fakes, redis_url, tmp_path / "data", worker=False, llm=True)
    try:
        first = WorkerProcess(env, tmp_path / "worker-1.log", port=free_port())
        workers.append(first)
        await eventually(lambda: _status(http, f"{web.url}/readyz", 200), within=30)
        thread, _ = await _directive(web, fakes)
        await eventually(lambda: fakes.llm.completions(MODEL), what="the job running")
        await asyncio.sleep(3)  # the job has renewed its lease at least once
        _, ready = await _get(http, f"{first.url}/readyz")
        assert ready["workers"]["this_process"]["jobs_running"] == 1
        first.kill()
        killed = time.monotonic()
        second = WorkerProcess(env, tmp_path / "worker-2.log")
        workers.append(second)
        await eventually(lambda: cards(fakes.slack, thread), within=20, what="the card")
        resumed = time.monotonic() - killed
        print(f"\nworker SIGKILLed mid-job: the job finished {resumed:.2f} s later")
        assert resumed < 15
        assert len(cards(fakes.slack, thread)) == 1
        assert len(fakes.llm.completions(MODEL)) == 2  # the killed try, and the one that ran
        # The suite's Redis keeps nothing on disk: the worker said so when it started.
        assert "Redis has NO persistence" in first.output()
    finally:
        await web.close()


async def test_a_job_longer_than_its_lease_runs_once(
    fakes: Fakes, redis_url: str, tmp_path: Path
) -> None:
    # Two workers poll one queue; the job runs for three leases.
    body = {"messages": [{"role": "user", "content": f"<directive>{SEED}</directive>"}]}
    fakes.llm.script(MODEL, llm_api.slow(6, planning_model()(MODEL, body)))
    one = await _app(fakes, redis_url, tmp_path / "data", worker=True, llm=True, extra=QUICK)
    two = await _app(fakes, redis_url, tmp_path / "data", worker=True, llm=True, extra=QUICK)
    try:
        thread, posted = await _directive(one, fakes)
        await eventually(lambda: cards(fakes.slack, thread), within=20, what="the card")
        assert time.monotonic() - posted > 6
        await asyncio.sleep(1)
        assert len(fakes.llm.completions(MODEL)) == 1  # nobody else took the running job
        assert len(cards(fakes.slack, thread)) == 1
    finally:
        await one.close()
        await two.close()


async def test_a_job_that_cannot_renew_its_lease_stops_and_runs_again_once(
    fakes: Fakes, own_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis goes away for longer than a lease while a job runs: the job's key will have
    # expired when Redis is back, so its worker stops it rather than let it run twice.
    body = {"messages": [{"role": "user", "content": f"<directive>{SEED}</directive>"}]}
    fakes.llm.script(MODEL, llm_api.slow(4, planning_model()(MODEL, body)))
    app = await _app(fakes, own_redis.url, tmp_path / "data", worker=True, llm=True, extra=QUICK)
    try:
        thread, _ = await _directive(app, fakes)
        await eventually(lambda: fakes.llm.completions(MODEL), what="the job running")
        own_redis.kill()
        await asyncio.sleep(3)  # > SOPHIE_JOB_LEASE_SECONDS
        own_redis.start()
        await eventually(lambda: cards(fakes.slack, thread), within=20, what="the card")
        await asyncio.sleep(1)
        assert len(cards(fakes.slack, thread)) == 1
        assert len(fakes.llm.completions(MODEL)) == 2  # the stopped try and the new one
        assert "its lease could not be renewed" in caplog.text
    finally:
        await app.close()


def _redis_without_config(workdir: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server that refuses CONFIG, as managed services do."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
            *("--save", "", "--rename-command", "CONFIG", "", *args),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"redis://127.0.0.1:{port}/0"


async def _persistence_warning(url: str) -> str | None:
    client = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.ping()
                break
            except aioredis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
        return await check_persistence(client)
    finally:
        await client.aclose()


async def test_redis_persistence_is_checked(tmp_path: Path) -> None:
    none = RedisServer(tmp_path / "none").start()  # no AOF, no snapshots
    aof = RedisServer(tmp_path / "aof", persistent=True).start()
    managed_aof, managed_aof_url = _redis_without_config(tmp_path / "m1", "--appendonly", "yes")
    managed_off, managed_off_url = _redis_without_config(tmp_path / "m2")
    embedded = EmbeddedRedis(tmp_path / "embedded")
    try:
        warning = await _persistence_warning(none.url)
        assert warning is not None and "NO persistence" in warning
        assert await _persistence_warning(aof.url) is None
        # CONFIG refused: INFO persistence says AOF is on; that is enough.
        assert await _persistence_warning(managed_aof_url) is None
        # CONFIG refused and AOF off: snapshots cannot be seen, so "unknown", no crash.
        warning = await _persistence_warning(managed_off_url)
        assert warning is not None and "unknown" in warning
        # The embedded Redis: AOF, fsync every second.
        client = aioredis.Redis.from_url(await embedded.start())
        try:
            found = await describe_persistence(client)
            assert (found.aof, found.fsync, found.warning) == (True, "everysec", None)
        finally:
            await client.aclose()
    finally:
        none.stop()
        aof.stop()
        await embedded.stop()
        for proc in (managed_aof, managed_off):
            proc.terminate()
            proc.wait(10)


def test_timings_that_would_let_a_live_lease_lapse_are_refused() -> None:
    check_timings(2, 10)  # the defaults
    with pytest.raises(ValueError, match="at least three"):
        check_timings(2, 5)
    with pytest.raises(ValueError, match="positive"):
        check_timings(0, 10)


async def test_a_worker_process_exports_the_outcomes_it_keeps(
    fakes: Fakes,
    own_redis: RedisServer,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    workers: list[WorkerProcess],
) -> None:
    """Ψ's metrics come from the process that does the work: here a separate worker
    (the web process runs none), scraped at its own --port."""
    env = _env(fakes, own_redis.url, tmp_path / "data", llm=False, extra=QUICK)
    web = await _app(fakes, own_redis.url, tmp_path / "data", worker=False, extra=QUICK)
    try:
        worker = WorkerProcess(env, tmp_path / "worker.log", port=free_port())
        workers.append(worker)
        await worker.ready()
        event = sr.mention_event("deploy auth to staging", DAVE, CHANNEL)
        await web.event(event)
        (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), within=20)
        value = _buttons(card.blocks)[kit.APPROVE]["value"]
        await web.interact(click(fakes, kit.APPROVE, value, ALICE, card.ts, "ok"))

        async def counted() -> str | None:
            text = await _metrics(http, worker.url)
            line = 'sophie_plan_outcomes_total{environment="staging",result="succeeded"}'
            return text if line in text else None

        text = await eventually(counted, within=30, what="the outcome in the worker's metrics")
        assert 'sophie_plan_step_seconds_count{environment="staging",step="lead_time"} 1.0' in text
    finally:
        await web.close()
