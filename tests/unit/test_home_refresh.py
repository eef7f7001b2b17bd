"""App Home is republished when a plan changes: for the remembered people it concerns, at
most once per person per window, and never at the cost of a flow."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from slack_sdk.web.async_client import AsyncWebClient

from handlers import home
from handlers.home import HomeRefresher
from roles.records import Actor, PlanRecord, PlanStatus
from tests.fakes.blockkit import view_problems
from tests.flows.test_flows import ALICE, BOB, DAVE, TEAM, Loop

MALLORY = "U0MALLORY9"
SEED = "Add caching to the auth service and deploy to staging"


class FakeClient:
    """The two Slack methods a Home needs; every view is checked as Slack would."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.fail = False

    async def users_conversations(self, **_: Any) -> dict[str, Any]:
        return {"channels": [{"id": "C0DEPLOYS1"}], "response_metadata": {"next_cursor": ""}}

    async def views_publish(self, user_id: str, view: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("slack is down")
        assert view_problems(view) == []
        self.published.append((user_id, view))
        return {"ok": True}

    def to(self, user: str) -> list[dict[str, Any]]:
        return [v for u, v in self.published if u == user]


class Gate:
    """A sleep that waits until the test opens the gate, then moves the manual clock."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.open = asyncio.Event()
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self.open.wait()
        self.loop.clock.advance(seconds)


async def settle() -> None:
    """Let background tasks (spawned publishes) run as far as they can."""
    for _ in range(200):
        await asyncio.sleep(0)


def waiting(view: dict[str, Any]) -> str:
    """The text of the Waiting on you section."""
    out, inside = [], False
    for block in view["blocks"]:
        text = block.get("text", {}).get("text", "") if block["type"] == "section" else ""
        if text.startswith("*") and text.endswith("*"):
            inside = text == "*Waiting on you*"
            continue
        if inside:
            out.append(json.dumps(block))
    return "".join(out)


def setup(debounce: float = 5.0) -> tuple[Loop, FakeClient, Gate, HomeRefresher]:
    loop = Loop()
    client = FakeClient()
    gate = Gate(loop)
    refresher = HomeRefresher(
        loop.sophie, cast(AsyncWebClient, client), debounce_seconds=debounce, sleep=gate
    )
    loop.sophie.home_changed = refresher
    return loop, client, gate, refresher


async def test_a_change_republishes_the_homes_it_concerns_debounced_per_person() -> None:
    loop, client, gate, _ = setup()
    for who in (ALICE, BOB, MALLORY):  # DAVE, the requester, never opened his Home
        await home.remember(loop.sophie, Actor(TEAM, who))

    # A new plan waits on the approvers: their Homes show it without being opened.
    await loop.say(SEED)
    await loop.run()
    await settle()
    record = await loop.plan()
    assert {u for u, _ in client.published} == {ALICE, BOB}
    assert record.plan.id in waiting(client.to(BOB)[-1])

    # ALICE approves on the card; the card job refreshes the card, and the Home. Inside
    # the window nothing is published yet: one publish per person waits for its end.
    assert await loop.click(record, ALICE) == "Approved and signed."
    await loop.run()
    await settle()
    assert len(client.published) == 2
    assert len(gate.asked) == 2  # one pending publish each for ALICE and BOB
    # More changes inside the window (dispatch, the run) add no publish and no wait.
    loop.clock.advance(1)
    await loop.run()
    await settle()
    assert len(client.published) == 2 and len(gate.asked) == 2

    # The window ends: each is published once more, showing the plan as it is now.
    gate.open.set()
    await settle()
    assert sorted(u for u, _ in client.published) == [ALICE, ALICE, BOB, BOB]
    assert record.plan.id not in waiting(client.to(BOB)[-1])
    assert client.to(MALLORY) == [] and client.to(DAVE) == []


async def test_a_change_right_after_the_tab_was_opened_waits_for_the_window() -> None:
    loop, client, gate, refresher = setup()
    bob = Actor(TEAM, BOB)
    await home.remember(loop.sophie, bob)
    await refresher.opened(bob)
    assert len(client.to(BOB)) == 1
    task = asyncio.create_task(refresher.republish(bob))
    await settle()
    assert len(client.to(BOB)) == 1 and gate.asked == [5.05]
    # A second change while one publish waits: it will be shown by that one.
    assert await refresher.republish(bob) is False
    gate.open.set()
    assert await task is True
    assert len(client.to(BOB)) == 2


async def test_a_publish_by_another_replica_in_the_meantime_is_enough() -> None:
    loop, client, _, refresher = setup()
    bob = Actor(TEAM, BOB)

    async def another_replica_publishes(seconds: float) -> None:
        loop.clock.advance(seconds)
        await loop.store.claim_lease(f"home:{TEAM}/{BOB}", "another-replica", 5.0)

    refresher.sleep = another_replica_publishes
    await refresher.opened(bob)
    assert await refresher.republish(bob) is False
    assert len(client.to(BOB)) == 1


async def test_the_home_never_holds_up_or_breaks_a_flow() -> None:
    loop, client, _, refresher = setup()
    bob = Actor(TEAM, BOB)
    await home.remember(loop.sophie, bob)
    client.fail = True
    assert await refresher.republish(bob) is False  # logged, not raised

    async def broken(record: PlanRecord) -> None:
        raise RuntimeError("the Home hook is broken")

    loop.sophie.home_changed = broken
    await loop.say(SEED)
    await loop.run()
    record = await loop.plan()
    assert await loop.click(record, ALICE) == "Approved and signed."
    await loop.run()
    loop.clock.advance(10)
    await loop.run()
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status == PlanStatus.SUCCEEDED


async def test_the_flows_call_the_hook_when_a_plan_waits_and_on_every_refresh() -> None:
    loop = Loop()
    seen: list[tuple[str, PlanStatus]] = []

    async def hook(record: PlanRecord) -> None:
        seen.append((record.plan.id, record.status))

    loop.sophie.home_changed = hook
    await loop.say(SEED)
    await loop.run()
    record = await loop.plan()
    assert seen == [(record.plan.id, PlanStatus.PENDING)]
    await loop.sophie.decide(record.plan.id, record.plan.digest, Actor(TEAM, BOB), "veto", "no")
    await loop.run()
    assert seen[-1] == (record.plan.id, PlanStatus.VETOED)
