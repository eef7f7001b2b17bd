"""Ψ at scale: precedent lookup with 1k, 10k and 100k stored outcomes in a real Redis.

Outcomes are spread over 20 repo@environment pairs (as a platform team's history
would be); each lookup reads the pair's newest outcomes (roles.precedent.CANDIDATES)
and ranks them, as the card and the planner do. The baseline, measured in the same
run against the same server, is one Redis round trip (HGET of one outcome): the least
any lookup can cost. Nothing passes or fails on time; the figures are printed.

    .venv/bin/python bench/bench_memory.py --sizes 1000,10000,100000 --lookups 200
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench.common import redis, summary  # noqa: E402
from bot.redis_store import RedisStore  # noqa: E402
from roles import precedent  # noqa: E402
from roles.outcomes import Outcome  # noqa: E402

WORDS = (
    "cache auth login session token redis database index migration frontend button "
    "payment invoice queue worker retry timeout header cookie search feature flag "
    "dependency upgrade config limit rate metrics logging tracing docker image"
).split()
PAIRS = [(f"acme/service-{n}", env) for n in range(10) for env in ("staging", "production")]
RESULTS = ["succeeded"] * 17 + ["failed", "rolled_back", "vetoed"]


def outcome(n: int, rng: random.Random, now: float) -> Outcome:
    repo, env = PAIRS[n % len(PAIRS)]
    words = sorted(set(rng.sample(WORDS, 6)))
    return Outcome(
        plan_id=f"plan_{n:016x}",
        repo=repo,
        environment=env,
        intent=rng.choice(["feature", "fix", "deploy"]),
        action="deploy",
        result=rng.choice(RESULTS),  # type: ignore[arg-type]
        summary=" ".join(words),
        requester="T1/U1",
        steps=rng.sample(["code_change", "build", "test", "deploy", "smoke_test"], 3),
        words=words,
        ended_at=now - (100_000 - n) * 60.0,
    )


async def fill(store: RedisStore, size: int, start: int, rng: random.Random, now: float) -> None:
    for first in range(start, size, 2000):
        chunk = range(first, min(size, first + 2000))
        await asyncio.gather(*(store.record_outcome(outcome(n, rng, now)) for n in chunk))


async def lookups(store: RedisStore, count: int, rng: random.Random, now: float) -> list[float]:
    samples = []
    for _ in range(count):
        repo, env = rng.choice(PAIRS)
        probe = precedent.Probe(
            "plan_new", "feature", frozenset(rng.sample(WORDS, 5)), frozenset({"build"})
        )
        t0 = time.perf_counter()
        history = await store.outcomes_in(repo, env, precedent.CANDIDATES)
        precedent.find(repo, env, probe, history, now)
        samples.append(time.perf_counter() - t0)
    return samples


async def baseline(client: aioredis.Redis, count: int) -> list[float]:
    samples = []
    for n in range(count):
        t0 = time.perf_counter()
        await client.hget("sophie:outcome", f"plan_{n:016x}")  # type: ignore[misc]
        samples.append(time.perf_counter() - t0)
    return samples


async def main(sizes: list[int], count: int) -> None:
    rng = random.Random(1)
    now = datetime.now(UTC).timestamp()
    with redis() as server:
        client = aioredis.Redis.from_url(server.url)
        store = RedisStore(client)
        filled = 0
        print(f"precedent lookup ({count} lookups per size; {len(PAIRS)} repo@environments)")
        print(f"{'outcomes':>10}{'lookup p50':>13}{'p99':>10}{'1 RTT p50':>12}{'ratio':>8}")
        for size in sizes:
            t0 = time.perf_counter()
            await fill(store, size, filled, rng, now)
            filled = size
            fill_s = time.perf_counter() - t0
            looked = await lookups(store, count, rng, now)
            base = await baseline(client, count)
            l50, l99, _ = summary(looked)
            b50, _, _ = summary(base)
            print(
                f"{size:>10}{l50:>11.2f}ms{l99:>8.2f}ms{b50:>10.3f}ms{l50 / b50:>8.1f}"
                f"   (stored in {fill_s:.1f} s)"
            )
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.lookups))
