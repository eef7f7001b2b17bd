"""Redis breaks at exact commands: the connection is cut before a step runs or after it
ran (its reply lost), or the server itself is killed there for two seconds.

Each fault lands at one command of the flow, named by a pattern over the commands
SOPHIE sends (tests/faults/scene.py, "where faults land"; tests/faults/tcp_proxy.py).
Whatever breaks, seen from outside: the directive gets one card, the approved plan one
dispatch, the run one result.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from tests.faults.scene import (
    DECIDE,
    ENQUEUE_DISPATCH,
    ENQUEUE_PLAN,
    RECORD_CARD,
    RECORD_POLL,
    RECORD_RUN,
    SAVE_PLAN,
    TO_DISPATCHING,
    TO_OUTCOME,
    Scene,
)
from tests.faults.tcp_proxy import When


@dataclass(frozen=True)
class Point:
    """Where in the flow a fault lands: a command pattern, before or after it runs."""

    id: str
    pattern: str
    when: When = "before"
    nth: int = 1


CLAIMED = Point("intake-claimed-not-queued", ENQUEUE_PLAN)
PLAN_SAVE = Point("planning-saving-the-plan", SAVE_PLAN)
CARD_POSTED = Point("planning-card-posted-not-recorded", RECORD_CARD)
DECIDING = Point("deciding-recording-the-decision", DECIDE)
DECIDED = Point("deciding-decision-recorded-reply-lost", DECIDE, "after")
APPROVED = Point("deciding-approved-dispatch-not-queued", ENQUEUE_DISPATCH)
DISPATCHING = Point("dispatch-moving-to-dispatching", TO_DISPATCHING)
DISPATCHED = Point("dispatch-accepted-run-not-recorded", RECORD_RUN)
POLLED = Point("tracking-recording-a-poll", RECORD_POLL)
FINISHING = Point("tracking-marking-the-outcome", TO_OUTCOME)
FINISHED = Point("tracking-outcome-marked-reply-lost", TO_OUTCOME, "after")

CUTS = [
    CLAIMED,
    PLAN_SAVE,
    CARD_POSTED,
    DECIDING,
    DECIDED,
    APPROVED,
    DISPATCHING,
    DISPATCHED,
    POLLED,
    FINISHING,
    FINISHED,
]
KILLS = [PLAN_SAVE, DECIDING, DISPATCHING, FINISHING]
OUTAGE_SECONDS = 2.0


async def test_no_fault(scene: Scene) -> None:
    """The baseline every cell is compared with: the whole flow through the proxy."""
    await scene.start()
    await scene.end_to_end()


@pytest.mark.parametrize("point", CUTS, ids=lambda p: p.id)
async def test_a_connection_cut_at_each_step(scene: Scene, point: Point) -> None:
    rule = scene.proxy.cut_at(point.pattern, when=point.when, nth=point.nth)
    await scene.start()
    try:
        await scene.end_to_end()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe connection was cut at: {rule.matched}") from None
    assert rule.hits == 1, f"the fault never landed: nothing sent {point.pattern!r}"
    assert len(rule.matched) == 1, rule.matched


@pytest.mark.parametrize("point", KILLS, ids=lambda p: p.id)
async def test_redis_killed_for_two_seconds_at_each_step(scene: Scene, point: Point) -> None:
    rule = scene.proxy.on_command(point.pattern, scene.redis.kill, when=point.when, nth=point.nth)
    await scene.start()

    async def outage() -> None:
        if not await rule.landed(within=60):
            return
        killed = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        scene.redis.start()  # same port, same append-only file
        print(f"\n{point.id}: Redis down {time.monotonic() - killed:.1f} s")

    restart = asyncio.create_task(outage())
    try:
        await scene.end_to_end()
    finally:
        if not restart.done():
            restart.cancel()
    assert rule.hits == 1, f"the fault never landed: nothing sent {point.pattern!r}"
    assert len(rule.matched) == 1, rule.matched


async def test_every_connection_cut_and_refused_for_two_seconds(scene: Scene) -> None:
    """A network blip between directives: every link reset, new ones refused for 2 s."""
    await scene.start()
    await scene.end_to_end()
    scene.proxy.refuse(OUTAGE_SECONDS)
    assert scene.proxy.cut_all() > 0
    await scene.end_to_end()
