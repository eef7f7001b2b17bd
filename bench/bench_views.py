"""App Home render and digest generation with 1k, 10k and 100k stored plans.

A real redis-server holds N plan records and their N outcomes (spread over 70 days and
20 repo@environment pairs). Measured, as the product runs them:

* the App Home of one approver (handlers/home.build: the newest plans, outcomes, slots,
  locks, trust and the 7-day headline, then the Block Kit view), Slack's
  users.conversations answered locally;
* the digest (Sophie.digest: outcomes of the period, pending plans, trust; the report),
  then its blocks and chart PNG.

The baseline, in the same run against the same server, is one Redis round trip. Nothing
passes or fails on time; the figures are printed.

    .venv/bin/python bench/bench_views.py --sizes 1000,10000,100000 --rounds 30
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402
from slack_sdk.web.async_client import AsyncWebClient  # noqa: E402

from bench.bench_memory import PAIRS, RESULTS, WORDS  # noqa: E402
from bench.common import CHANNEL, redis, summary  # noqa: E402
from bot import chart  # noqa: E402
from bot.redis_store import RedisStore  # noqa: E402
from bot.signer import KeyRing  # noqa: E402
from handlers import digest_blocks, home  # noqa: E402
from roles import diff_engine, integrator, navigator  # noqa: E402
from roles.constitution import load_constitution  # noqa: E402
from roles.offline_planner import OfflinePlanner  # noqa: E402
from roles.outcomes import Outcome  # noqa: E402
from roles.plan import Plan  # noqa: E402
from roles.records import Actor, PlanRecord, PlanStatus, Thread  # noqa: E402
from roles.sophie import Sophie  # noqa: E402
from roles.testing import (  # noqa: E402
    ManualClock,
    ManualScheduler,
    RecordingNotifier,
    ScriptedCI,
    StaticDirectory,
)

TEAM, APPROVER = "T0SOPHIE01", "U0ALICE001"
STATUSES = [PlanStatus.SUCCEEDED] * 8 + [PlanStatus.FAILED, PlanStatus.PENDING]


class LocalSlack:
    """users.conversations, answered here (the viewer is in the deploys channel)."""

    async def users_conversations(self, **_: Any) -> dict[str, Any]:
        return {"channels": [{"id": CHANNEL}], "response_metadata": {"next_cursor": ""}}


async def template() -> Plan:
    constitution = load_constitution(ROOT / "constitution.yml")
    reading = navigator.interpret("deploy auth to staging", constitution)
    proposal = await OfflinePlanner().propose(reading, constitution, [])
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, proposal.confidence)
    return integrator.assemble(
        "plan_template",
        datetime.now(UTC),
        reading,
        Actor(TEAM, "U0DAVE0004"),
        proposal,
        verdict,
        constitution,
    )


async def fill(store: RedisStore, plan: Plan, start: int, size: int, now: float) -> None:
    rng = random.Random(start)
    for first in range(start, size, 1000):
        chunk = range(first, min(size, first + 1000))
        records, outcomes = [], []
        for n in chunk:
            at = now - (size - n) * (70 * 86400 / max(size, 1))
            status = rng.choice(STATUSES) if n < size - 50 else PlanStatus.PENDING
            pid = f"plan_{n:016x}"
            p = plan.model_copy(update={"id": pid, "created_at": datetime.fromtimestamp(at, UTC)})
            records.append(PlanRecord(plan=p, status=status, thread=Thread(CHANNEL, f"{at:.6f}")))
            repo, env = PAIRS[n % len(PAIRS)]
            if status != PlanStatus.PENDING:
                outcomes.append(
                    Outcome(
                        plan_id=pid,
                        repo=repo,
                        environment=env,
                        intent="deploy",
                        action="deploy",
                        result=rng.choice(RESULTS),  # type: ignore[arg-type]
                        summary="deploy",
                        requester=f"{TEAM}/U0DAVE0004",
                        words=rng.sample(WORDS, 5),
                        directive_at=at - 300,
                        card_at=at - 290,
                        decided_at=at - 200,
                        dispatched_at=at - 190,
                        ended_at=at,
                    )
                )
        await asyncio.gather(*(store.save_new(r) for r in records))
        await asyncio.gather(*(store.record_outcome(o) for o in outcomes))


async def main(sizes: list[int], rounds: int) -> None:
    now = datetime.now(UTC).timestamp()
    plan = await template()
    constitution = load_constitution(ROOT / "constitution.yml")
    with redis() as server:
        client = aioredis.Redis.from_url(server.url)
        store = RedisStore(client)
        sophie = Sophie(
            constitution=lambda: constitution,
            planner=OfflinePlanner(),
            store=store,
            signer=KeyRing(SigningKey.generate(), {}),
            ci=ScriptedCI(),
            notifier=RecordingNotifier(),
            scheduler=ManualScheduler(ManualClock(datetime.now(UTC))),
            directory=StaticDirectory({}),
        )
        slack = cast(AsyncWebClient, LocalSlack())
        viewer = Actor(TEAM, APPROVER)
        print(f"App Home and digest ({rounds} rounds per size)")
        print(
            f"{'plans':>8}{'home p50':>11}{'p99':>9}{'digest p50':>12}{'p99':>9}"
            f"{'blocks+chart':>14}{'1 RTT':>9}"
        )
        filled = 0
        for size in sizes:
            t0 = time.perf_counter()
            await fill(store, plan, filled, size, now)
            filled = size
            stored = time.perf_counter() - t0
            homes, digests, renders, rtts = [], [], [], []
            for _ in range(rounds):
                t = time.perf_counter()
                view = await home.build(sophie, slack, viewer)
                homes.append(time.perf_counter() - t)
                assert view["type"] == "home"
                t = time.perf_counter()
                report, _ = await sophie.digest()
                digests.append(time.perf_counter() - t)
                t = time.perf_counter()
                digest_blocks.digest(report, detail=True, chart=True)
                chart.render(report.days)
                renders.append(time.perf_counter() - t)
                t = time.perf_counter()
                await client.ping()
                rtts.append(time.perf_counter() - t)
            h50, h99, _ = summary(homes)
            d50, d99, _ = summary(digests)
            r50, _, _ = summary(renders)
            b50, _, _ = summary(rtts)
            print(
                f"{size:>8}{h50:>9.1f}ms{h99:>7.1f}ms{d50:>10.1f}ms{d99:>7.1f}ms"
                f"{r50:>12.1f}ms{b50:>7.2f}ms   (stored in {stored:.0f} s)"
            )
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.rounds))
