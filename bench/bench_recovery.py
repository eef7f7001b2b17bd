"""Recovery times, measured from outside: how long until work resumes after a fault.

Real redis-server (append-only file, killed and restarted on the same port), the
fake Slack and GitHub over loopback, SOPHIE in-process and as `sophie worker`
processes. Every figure is set against a baseline measured in the same run, the
same directive reaching its card with no fault:

* Redis blip: redis-server killed, restarted 2 s later; from the restart until a
  new directive has its card (Slack redelivers an event that got no 2xx).
* Worker killed: a `sophie worker` SIGKILLed in the middle of a planning job (the
  plan made, not yet saved) while a second worker runs; from the kill until the card
  is posted by the other one,
  with the production lease and heartbeat (SOPHIE_JOB_LEASE_SECONDS=10,
  SOPHIE_WORKER_HEARTBEAT_SECONDS=2) and with the fault suite's (2 s, 0.5 s).
* Slack 429: the card's chat.postMessage is rate limited with Retry-After: 1;
  from the directive until the card is posted.

Nothing passes or fails on time; the figures and ratios are printed.

    .venv/bin/python bench/bench_recovery.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import USERS  # noqa: E402
from tests.fakes.github_rest import FakeGitHub  # noqa: E402
from tests.fakes.llm_api import FakeLLM  # noqa: E402
from tests.fakes.server import ThreadedServer  # noqa: E402
from tests.fakes.slack_api import FakeSlack  # noqa: E402
from tests.faults.scene import Scene, cards  # noqa: E402
from tests.faults.tcp_proxy import RedisProxy  # noqa: E402
from tests.harness import BOT_TOKEN, GITHUB_TOKEN, LLM_KEY  # noqa: E402
from tests.integration.conftest import REPO, STAGING_URL, Fakes  # noqa: E402
from tests.redis_server import RedisServer, free_port  # noqa: E402

OUTAGE_SECONDS = 2.0
# Each round restarts Redis and processes; other benchmarks' --rounds (hundreds) are capped.
MAX_ROUNDS = 10
RETRY_AFTER = 1
PRODUCTION_LEASE = {"SOPHIE_JOB_LEASE_SECONDS": "10", "SOPHIE_WORKER_HEARTBEAT_SECONDS": "2"}
SUITE_LEASE = {"SOPHIE_JOB_LEASE_SECONDS": "2", "SOPHIE_WORKER_HEARTBEAT_SECONDS": "0.5"}
# Where the worker is killed: mid planning job, the plan made, not yet saved or posted.
PLAN_SAVE = r"^HSET sophie:plan:\S+ doc "


def fakes() -> tuple[Fakes, list[ThreadedServer]]:
    slack = FakeSlack(token=BOT_TOKEN, users=USERS, usergroups={"S0SRETEAM1": []})
    github = FakeGitHub(token=GITHUB_TOKEN, repos=(REPO,), environment_url=STAGING_URL)
    llm = FakeLLM(keys=(LLM_KEY,))
    servers = [ThreadedServer(x.app).start() for x in (slack, github, llm)]
    return Fakes(slack, github, llm, *servers), servers


class Stage:
    """A fresh Redis, proxy and scene for one measurement."""

    def __init__(self, tmp: Path, fakes: Fakes) -> None:
        self.redis = RedisServer(tmp / "redis", persistent=True).start()
        self.proxy = RedisProxy(self.redis.port).start()
        self.scene = Scene(fakes, self.redis, self.proxy, tmp)

    async def close(self) -> None:
        self.proxy.clear()
        if self.redis.proc is None:
            self.redis.start()
        await self.scene.close()
        self.proxy.stop()
        self.redis.stop()


async def until_card(scene: Scene, thread_ts: str, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not cards(scene.slack, thread_ts):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no card within {within:g} s")
        await asyncio.sleep(0.002)


async def directive_to_card(scene: Scene) -> float:
    start = time.perf_counter()
    thread_ts = await scene.directive()
    await until_card(scene, thread_ts)
    return time.perf_counter() - start


async def measure(
    rounds: int, tmp: Path, fakes: Fakes, one: Callable[[Stage, Path], Awaitable[float]]
) -> list[float]:
    samples = []
    for n in range(rounds):
        stage = Stage(tmp / f"{one.__name__}-{n}", fakes)
        try:
            samples.append(await one(stage, tmp / f"{one.__name__}-{n}"))
        finally:
            await stage.close()
    return samples


# --- one round of each ----------------------------------------------------------------


async def baseline_in_process(stage: Stage, _: Path) -> float:
    await stage.scene.start()
    await directive_to_card(stage.scene)  # warm: the first card pays for imports
    return await directive_to_card(stage.scene)


async def redis_blip(stage: Stage, _: Path) -> float:
    await stage.scene.start()
    await directive_to_card(stage.scene)
    stage.redis.kill()
    await asyncio.sleep(OUTAGE_SECONDS)
    stage.redis.start()
    back = time.perf_counter()
    thread_ts = await stage.scene.directive()
    await until_card(stage.scene, thread_ts)
    return time.perf_counter() - back


async def slack_429_on_card(stage: Stage, _: Path) -> float:
    await stage.scene.start()
    await directive_to_card(stage.scene)
    stage.scene.slack.fail_matching(
        "chat.postMessage",
        lambda p: any(b.get("type") == "header" for b in p.get("blocks") or []),
        status=429,
        retry_after=RETRY_AFTER,
    )
    return await directive_to_card(stage.scene)


async def _workers(stage: Stage, lease: dict[str, str], kill: bool) -> float:
    scene = stage.scene
    await scene.start(worker=False, direct=True)
    first = scene.worker(port=free_port(), extra=lease)
    await first.ready()
    await directive_to_card(scene)  # warm
    if not kill:
        return await directive_to_card(scene)
    rule = scene.proxy.hold_at(PLAN_SAVE)
    thread_ts = await scene.directive()
    if not await rule.landed(within=60):
        raise RuntimeError("the worker never reached the plan's save")
    second = scene.worker(port=free_port(), extra=lease)
    await second.ready()
    first.kill()
    killed = time.perf_counter()
    scene.proxy.release(rule, forward=False)
    await until_card(scene, thread_ts)  # the other worker ran the job again
    return time.perf_counter() - killed


async def baseline_worker_process(stage: Stage, _: Path) -> float:
    return await _workers(stage, SUITE_LEASE, kill=False)


async def worker_killed_production_lease(stage: Stage, _: Path) -> float:
    return await _workers(stage, PRODUCTION_LEASE, kill=True)


async def worker_killed_suite_lease(stage: Stage, _: Path) -> float:
    return await _workers(stage, SUITE_LEASE, kill=True)


# --- report ------------------------------------------------------------------------------


def row(name: str, samples: list[float], base: list[float]) -> str:
    p50 = statistics.median(samples) * 1000
    worst = max(samples) * 1000
    ratio = p50 / (statistics.median(base) * 1000)
    return f"{name:<58}{p50:>10.0f}ms{worst:>10.0f}ms{ratio:>10.1f}×"


async def run(rounds: int) -> None:
    # The faults are deliberate: keep SOPHIE's warnings about them out of the figures.
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore", ResourceWarning)
    found, servers = fakes()
    try:
        with tempfile.TemporaryDirectory(prefix="sophie-bench-recovery-") as tmp:
            t = Path(tmp)
            base = await measure(rounds, t, found, baseline_in_process)
            blip = await measure(rounds, t, found, redis_blip)
            limited = await measure(rounds, t, found, slack_429_on_card)
            base_proc = await measure(rounds, t, found, baseline_worker_process)
            killed_suite = await measure(rounds, t, found, worker_killed_suite_lease)
            killed_prod = await measure(rounds, t, found, worker_killed_production_lease)
    finally:
        for server in servers:
            server.stop()
    print(f"Recovery from outside, {rounds} rounds each (p50, worst, p50 / baseline p50)")
    print(f"{'':<58}{'p50':>12}{'worst':>12}{'ratio':>11}")
    print(row("baseline: directive → card (in-process worker)", base, base))
    print(row(f"Redis killed {OUTAGE_SECONDS:g} s: restart → new directive's card", blip, base))
    print(row(f"Slack 429 (Retry-After {RETRY_AFTER} s) on the card → card", limited, base))
    print(row("baseline: directive → card (worker processes)", base_proc, base_proc))
    print(row("worker SIGKILLed mid-job → done elsewhere (lease 2 s)", killed_suite, base_proc))
    print(row("worker SIGKILLed mid-job → done elsewhere (lease 10 s)", killed_prod, base_proc))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    # scripts/bench passes its arguments to every benchmark: ignore the others' options.
    args, _ = parser.parse_known_args(argv)
    asyncio.run(run(max(1, min(args.rounds, MAX_ROUNDS))))


if __name__ == "__main__":
    main()
