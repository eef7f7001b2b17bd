"""App Home from outside: kept fresh without reopening it, and Approve from the Home tab.

Signed ``app_home_opened`` events and ``block_actions`` go to the running app over real
HTTP; the views SOPHIE publishes to the fake Slack are read back. A Home click is built
as Slack documents it for a Home tab: ``container`` {type "view", view_id}, the ``view``
with its ``private_metadata``, and no ``response_url`` or message
(https://docs.slack.dev/reference/interaction-payloads/block_actions-payload).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from typing import Any

import pytest

from handlers import blocks as kit
from handlers import home_blocks
from handlers.home import NO_RECORD, NOT_HOME, HomeRefresher
from roles.records import PlanStatus
from tests import slack_requests as sr
from tests.fakes.slack_api import FakeSlack
from tests.harness import App, eventually
from tests.integration.conftest import ALICE, BOB, CAROL, CHANNEL, DAVE, MALLORY, Fakes
from tests.integration.test_home_privacy import OTHER_TEAM, directive, home_of

DEBOUNCE = 0.4


@pytest.fixture()
def planner_url() -> None:
    """The offline planner: deterministic plans, no model."""
    return None


def fast(app: App) -> HomeRefresher:
    refresher = app.rt.sophie.home_changed
    assert isinstance(refresher, HomeRefresher)
    refresher.debounce_seconds = DEBOUNCE
    return refresher


def homes(slack: FakeSlack, user: str) -> list[dict[str, Any]]:
    return [v.view for v in list(slack.views) if v.action == "publish" and v.user_id == user]


def sections(view: dict[str, Any] | None) -> dict[str, str]:
    """A published Home as {section title: its text}."""
    out: dict[str, str] = {}
    title = "intro"
    for block in (view or {}).get("blocks", []):
        text = block.get("text", {}).get("text", "") if block["type"] == "section" else ""
        if text.startswith("*") and text.endswith("*") and len(text) < 60:
            title = text.strip("*")
            continue
        out[title] = out.get(title, "") + json.dumps(block, ensure_ascii=False)
    return out


def home_button(slack: FakeSlack, user: str, action: str, plan_id: str) -> dict[str, Any]:
    view = slack.home(user)
    assert view is not None
    for block in view["blocks"]:
        for element in [*block.get("elements", []), block.get("accessory") or {}]:
            if element.get("action_id") == f"{action}.{plan_id}":
                return dict(element)
    raise AssertionError(f"no {action} for {plan_id} in the Home of {user}")


def view_id_of(slack: FakeSlack, user: str) -> str:
    (view_id,) = {v.view_id for v in list(slack.views) if v.user_id == user}
    return view_id


def home_click(
    slack: FakeSlack,
    button: dict[str, Any],
    who: str,
    *,
    view_of: str | None = None,
    team: str = sr.TEAM,
    container: str = "view",
    value: str | None = None,
) -> dict[str, Any]:
    """A button press on a Home tab, as Slack posts it. ``view_of``: whose published Home
    view the payload carries (default the clicker's)."""
    owner = view_of or who
    view_id = view_id_of(slack, owner)
    published = slack.view(view_id)
    assert published is not None
    return {
        "type": "block_actions",
        "team": {"id": team, "domain": "sophie"},
        "user": {"id": who, "username": who.lower(), "name": who.lower(), "team_id": team},
        "api_app_id": "A0SOPHIEAPP",
        "token": "legacy-verification-token",
        "container": {"type": container, "view_id": view_id},
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}.abc",
        "is_enterprise_install": False,
        "enterprise": None,
        "view": {
            "id": view_id,
            "team_id": team,
            "type": "home",
            "blocks": published["blocks"],
            "private_metadata": published.get("private_metadata", ""),
            "callback_id": "",
            "state": {"values": {}},
            "hash": f"{view_id}.1",
            "root_view_id": view_id,
            "previous_view_id": None,
            "app_id": "A0SOPHIEAPP",
            "external_id": "",
            "bot_id": "B0SOPHIE01",
        },
        "actions": [
            {
                "action_id": button["action_id"],
                "block_id": "home",
                "text": button["text"],
                "value": value if value is not None else button["value"],
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


async def flash(app: App, fakes: Fakes, payload: dict[str, Any], who: str) -> str:
    """Post a Home click; what the clicker's republished Home says at its top."""
    before = len(homes(fakes.slack, who))
    assert (await app.interact(payload)).status == 200
    await eventually(lambda: len(homes(fakes.slack, who)) > before, what=f"{who}'s Home")
    return sections(fakes.slack.home(who))["intro"]


async def refusals(app: App, plan_id: str) -> list[dict[str, Any]]:
    entries = [json.loads(f[b"body"]) for _, f in await app.rt.store.r.xrange("sophie:audit")]
    return [
        e["detail"] for e in entries if e["kind"] == "decision.refused" and e["plan"] == plan_id
    ]


async def test_the_home_follows_a_plan_without_being_reopened(app: App, fakes: Fakes) -> None:
    fast(app)
    slack = fakes.slack
    slack.add_conversation(CHANNEL, [DAVE, MALLORY, BOB], name="deploys")
    bob = await home_of(app, fakes, BOB)
    assert "Nothing here" in bob["Waiting on you"]
    await home_of(app, fakes, MALLORY)
    mallory_views = len(homes(slack, MALLORY))

    # Watch BOB's Home being published, and when.
    stamps: list[float] = []
    # Counted here, before anything can publish: a watcher task starts later, and a
    # count taken there could already include the first publish (and miss it).
    before = len(homes(slack, BOB))

    async def watch() -> None:
        seen = before
        while True:
            now = len(homes(slack, BOB))
            if now != seen:
                stamps.extend([time.monotonic()] * (now - seen))
                seen = now
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        # A new plan: it waits on BOB, and his Home says so without being opened.
        plan_id = await directive(
            app, fakes, sr.mention_event("deploy auth to staging", DAVE, CHANNEL)
        )
        await eventually(
            lambda: plan_id in sections(slack.home(BOB)).get("Waiting on you", ""),
            what="the plan in BOB's Home",
        )
        assert home_button(slack, BOB, home_blocks.HOME_APPROVE, plan_id)

        # ALICE approves on the card in the channel; the plan runs and succeeds.
        record = await app.rt.store.load(plan_id)
        assert record is not None and record.card_ts is not None
        url = f"{fakes.slack_server.url}/respond/alice"
        approve = sr.block_action(
            kit.APPROVE, kit.button_value(record.plan), ALICE, CHANNEL, record.card_ts, url
        )
        assert (await app.interact(approve)).status == 200

        def deployed() -> bool:
            shown = sections(slack.home(BOB))
            recent = shown.get("Recent deploys", "")
            return (
                plan_id not in shown.get("Waiting on you", "")
                and plan_id in recent
                and "succeeded" in recent
            )

        await eventually(deployed, within=20, what="the deploy in BOB's Home")
    finally:
        watcher.cancel()

    shown = sections(slack.home(BOB))
    assert (
        "/actions/runs/" in shown["Recent deploys"] and f"<#{CHANNEL}>" in shown["Recent deploys"]
    )
    assert "*1* deploy" in shown["Last 7 days"] and "100%" in shown["Last 7 days"]
    assert "`acme/auth-service` → *staging*" in shown["Trust"]
    assert "below the autonomy floor" in shown["Trust"]  # one success is not yet 0.8
    # Debounced: change-driven publishes to BOB at most one per window.
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # (The two waits above already proved two publishes of different contents; under a
    # loaded machine the watcher may see fewer, so only the spacing is asserted here.)
    assert stamps and all(g >= DEBOUNCE - 0.1 for g in gaps), gaps
    # Only remembered people the plan concerns: not MALLORY (no role), not CAROL (an
    # approver who never opened her Home), not DAVE (the requester, likewise).
    assert len(homes(slack, MALLORY)) == mallory_views
    assert homes(slack, CAROL) == [] and homes(slack, DAVE) == []
    assert slack.rejections == []


async def test_approve_from_the_home_is_bound_to_the_viewers_own_home(
    app: App, fakes: Fakes
) -> None:
    fast(app)
    slack = fakes.slack
    slack.add_conversation(CHANNEL, [CAROL, MALLORY, ALICE], name="deploys")
    plan_id = await directive(
        app, fakes, sr.mention_event("deploy auth to staging", CAROL, CHANNEL)
    )
    record = await app.rt.store.load(plan_id)
    assert record is not None
    for who in (ALICE, MALLORY, CAROL):
        await home_of(app, fakes, who)
    button = home_button(slack, ALICE, home_blocks.HOME_APPROVE, plan_id)
    assert button["value"] == kit.button_value(record.plan)
    # Only those who may approve get the button; the others' Homes do not carry it.
    for who in (MALLORY, CAROL):  # no role; the requester (an approver, not of her own)
        with pytest.raises(AssertionError):
            home_button(slack, who, home_blocks.HOME_APPROVE, plan_id)

    # Someone who may not approve, pressing the button's value from their own Home.
    said = await flash(app, fakes, home_click(slack, button, MALLORY), MALLORY)
    assert "not an approver" in said
    said = await flash(app, fakes, home_click(slack, button, CAROL), CAROL)
    assert "separation of duties" in said
    # An approver's click carrying someone else's Home view, or not from a Home view.
    said = await flash(app, fakes, home_click(slack, button, ALICE, view_of=MALLORY), ALICE)
    assert NOT_HOME in said
    said = await flash(app, fakes, home_click(slack, button, ALICE, container="message"), ALICE)
    assert NOT_HOME in said
    # A forged digest, and the same approver from another workspace.
    stale = f"{plan_id}|{'0' * 64}"
    said = await flash(app, fakes, home_click(slack, button, ALICE, value=stale), ALICE)
    assert NO_RECORD in said
    # A click from another workspace on this workspace's Home view does not hold; from
    # her Home in the other workspace (where the plan is not hers to see) it is refused.
    said = await flash(app, fakes, home_click(slack, button, ALICE, team=OTHER_TEAM), ALICE)
    assert NOT_HOME in said
    await home_of(app, fakes, ALICE, team=OTHER_TEAM)
    said = await flash(app, fakes, home_click(slack, button, ALICE, team=OTHER_TEAM), ALICE)
    assert "another Slack workspace" in said
    await home_of(app, fakes, ALICE)

    after = await app.rt.store.load(plan_id)
    assert after is not None and after.status == PlanStatus.PENDING and after.decisions == []
    reasons = [r["reason"] for r in await refusals(app, plan_id)]
    assert len(reasons) >= 7, reasons
    assert sum(r == NOT_HOME for r in reasons) == 3

    # View plan from the Home: ALICE may open it; MALLORY (not hers to decide) may not.
    view = home_button(slack, ALICE, home_blocks.HOME_VIEW_PLAN, plan_id)
    opened = len([v for v in slack.views if v.action == "open"])
    said = await flash(app, fakes, home_click(slack, view, MALLORY), MALLORY)
    assert "only open plans" in said
    assert (await app.interact(home_click(slack, view, ALICE))).status == 200
    modals = await eventually(
        lambda: [v for v in slack.views if v.action == "open"][opened:], what="the plan modal"
    )
    assert plan_id in json.dumps(modals[0].view)

    # ALICE, from her own Home: approved and signed as her, and the plan runs.
    said = await flash(app, fakes, home_click(slack, button, ALICE), ALICE)
    assert "Approved and signed" in said
    approved = await app.rt.store.load(plan_id)
    assert approved is not None and [d.actor.user_id for d in approved.approvals] == [ALICE]
    assert approved.status != PlanStatus.PENDING
    assert slack.rejections == []
