"""SOPHIE's processes are SIGKILLed in the middle of a step while another one runs: a
`sophie worker` at each step (planning, dispatching, tracking), and a `sophie serve`
web process while it records an approval. The other process must finish the step,
once.

The process is stopped at an exact command by the Redis proxy (it waits for a reply
that never comes), the other one is started and becomes ready, then the first is
killed. Nothing it was sending at that moment reaches Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import pytest

from handlers import blocks as kit
from tests import slack_requests as sr
from tests.faults.scene import DECIDE, RECORD_CARD, RECORD_RUN, REMEMBER, Scene, approve_value
from tests.harness import eventually
from tests.integration.conftest import ALICE, CHANNEL
from tests.redis_server import free_port


@dataclass(frozen=True)
class Step:
    id: str
    pattern: str  # where the first worker is killed (the command it is sending)


STEPS = [
    # The card is in the thread; the plan does not know it yet.
    Step("planning-card-posted", RECORD_CARD),
    # GitHub accepted the dispatch; the run is not recorded yet.
    Step("dispatching-accepted", RECORD_RUN),
    # The run ended and the plan is marked so; the result is not posted yet.
    Step("tracking-finished", REMEMBER),
]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.id)
async def test_a_worker_killed_at_each_step(scene: Scene, step: Step) -> None:
    rule = scene.proxy.hold_at(step.pattern)
    await scene.start(worker=False, direct=True)  # the web process; workers are processes
    first = scene.worker(port=free_port())
    await first.ready()

    thread_ts = await scene.directive()
    if step.id.startswith("planning"):
        await eventually(lambda: rule.hits, within=30, what=f"the first worker at {step.id}")
        card = None
    else:
        card = await scene.card(thread_ts)
        plan_id = await scene.approve(card)
        await eventually(lambda: rule.hits, within=30, what=f"the first worker at {step.id}")

    second = scene.worker(port=free_port())
    await second.ready()
    assert rule.holding == 1, "the first worker is no longer waiting at the step"
    first.kill()
    killed = time.monotonic()
    scene.proxy.release(rule, forward=False)

    if card is None:
        card = await scene.card(thread_ts)
        plan_id = await scene.approve(card)
    await scene.finished(card, plan_id)
    print(
        f"\nworker killed at {step.id}: the flow finished {time.monotonic() - killed:.1f} s later"
    )


async def test_a_web_process_killed_while_recording_an_approval(scene: Scene) -> None:
    """The approval is recorded, the web process dies before it queues the dispatch or
    answers the click; Slack shows Alice an error, she clicks again on another replica."""
    await scene.start(direct=True)  # the other replica, with the worker
    web = scene.web()
    await web.ready()
    thread_ts = await scene.directive()
    card = await scene.card(thread_ts)
    rule = scene.proxy.hold_at(DECIDE, when="after")
    respond = f"{scene.fakes.slack_server.url}/respond/first-click"
    click = sr.block_action(kit.APPROVE, approve_value(card), ALICE, CHANNEL, card.ts, respond)
    first = asyncio.create_task(web.interact(click))
    await eventually(lambda: rule.hits, within=15, what="the approval recorded by the web process")
    web.kill()
    killed = time.monotonic()
    scene.proxy.release(rule, forward=False)
    with contextlib.suppress(Exception):  # the click's connection died with the process
        await first
    plan_id = await scene.approve(card)  # on the other replica: "already decided"
    await scene.finished(card, plan_id)
    print(
        f"\nweb killed mid-approval: the run's result came {time.monotonic() - killed:.1f} s later"
    )
