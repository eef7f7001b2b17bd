"""Shared set-up for the benchmarks: real Redis, fake Slack/LLM, SOPHIE on loopback."""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/bench_x.py` from anywhere
    sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

APPROVER = "U0ALICE001"
REQUESTER = "U0DAVE0004"
CHANNEL = "C0DEPLOYS1"
USERS = {APPROVER: "alice", REQUESTER: "dave", "U0BOBBY002": "bob", "U0MALLORY9": "mallory"}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: list[float]) -> tuple[float, float, float]:
    """p50, p99 and mean, in milliseconds."""
    ms = [s * 1000 for s in samples]
    return percentile(ms, 50), percentile(ms, 99), statistics.fmean(ms)


@contextmanager
def redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="sophie-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            yield server
        finally:
            server.stop()


def table(
    title: str, rows: list[tuple[str, list[float], list[float]]], labels: tuple[str, str]
) -> str:
    """Rows of (what, samples_a, samples_b) with the ratio a / b."""
    a, b = labels
    out = [
        title,
        f"{'':<16}{a + ' p50':>14}{a + ' p99':>14}{b + ' p50':>14}{b + ' p99':>14}"
        f"{'ratio p50':>11}{'ratio p99':>11}",
    ]
    for name, xs, ys in rows:
        x50, x99, _ = summary(xs)
        y50, y99, _ = summary(ys)
        out.append(
            f"{name:<16}{x50:>12.2f}ms{x99:>12.2f}ms{y50:>12.2f}ms{y99:>12.2f}ms"
            f"{x50 / y50:>11.2f}{x99 / y99:>11.2f}"
        )
    return "\n".join(out)
