"""App Home shows each viewer only what concerns them; nothing from a DM reaches others.

Plans are made over real HTTP in three places: a public channel, a private channel
and a direct message. Each viewer opens the Home tab (``app_home_opened``) and the
view SOPHIE publishes to the fake Slack is read back: exactly the plans they may
see, in the right sections, and never the text of someone else's DM.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from handlers import blocks as kit
from tests import slack_requests as sr
from tests.fakes.slack_api import FakeSlack
from tests.harness import App, eventually
from tests.integration.conftest import ALICE, BOB, CAROL, CHANNEL, DAVE, MALLORY, Fakes

PRIVATE = "G0PRIVATE1"  # CAROL and BOB; not MALLORY, not DAVE
DM = "D0DAVEDM01"  # DAVE and the bot
SECRET_WORD = "zebrafish"  # only in DAVE's DM directive
OTHER_TEAM = "T0EVILCORP"


@pytest.fixture()
def planner_url() -> None:
    """SOPHIE with the offline planner: its summaries quote the directive."""
    return None


def dm_event(text: str, user: str, channel: str) -> dict[str, Any]:
    """A ``message.im`` event: a directive sent to SOPHIE in a direct message."""
    payload = sr.mention_event(text, user, channel)
    payload["event"] = {
        "type": "message",
        "channel_type": "im",
        "user": user,
        "text": text,
        "ts": payload["event"]["ts"],
        "channel": channel,
        "event_ts": payload["event"]["ts"],
    }
    return payload


def home_opened(user: str, team: str = sr.TEAM) -> dict[str, Any]:
    ts = f"{time.time():.6f}"
    return {
        "token": "legacy-verification-token",
        "team_id": team,
        "api_app_id": "A0SOPHIEAPP",
        "event": {
            "type": "app_home_opened",
            "user": user,
            "channel": f"D0HOME{user[-4:]}",
            "tab": "home",
            "event_ts": ts,
        },
        "type": "event_callback",
        "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team, "user_id": sr.BOT_USER, "is_bot": True}],
    }


def plan_ids_in(slack: FakeSlack, channel: str, thread_ts: str) -> list[str]:
    found = []
    for message in slack.thread(channel, thread_ts):
        for block in message.blocks or []:
            for element in block.get("elements", []) if block.get("type") == "actions" else []:
                if element["action_id"] == kit.VETO:
                    found.append(element["value"].split("|")[0])
    return found


async def directive(app: App, fakes: Fakes, payload: dict[str, Any]) -> str:
    await app.event(payload)
    event = payload["event"]
    (plan_id,) = await eventually(
        lambda: plan_ids_in(fakes.slack, event["channel"], event["ts"]), what="the card"
    )
    return str(plan_id)


async def home_of(app: App, fakes: Fakes, user: str, team: str = sr.TEAM) -> dict[str, str]:
    """Open the Home tab; the published view as {section title: its text}."""
    before = len([v for v in fakes.slack.views if v.user_id == user])
    assert (await app.event(home_opened(user, team))).status == 200
    await eventually(
        lambda: len([v for v in fakes.slack.views if v.user_id == user]) > before,
        what=f"the Home tab of {user}",
    )
    view = fakes.slack.home(user)
    assert view is not None and view["type"] == "home"
    out: dict[str, str] = {}
    title = "intro"
    for block in view["blocks"]:
        text = json.dumps(block, ensure_ascii=False)
        if block["type"] == "section" and block["text"]["text"].startswith("*") and len(text) < 200:
            title = block["text"]["text"].strip("*")
            continue
        out[title] = out.get(title, "") + text
    return out


async def test_each_viewer_sees_only_what_concerns_them(app: App, fakes: Fakes) -> None:
    slack = fakes.slack
    slack.add_conversation(CHANNEL, [DAVE, MALLORY, BOB], name="deploys")
    slack.add_conversation(PRIVATE, [CAROL, BOB], kind="private_channel", name="secret")
    slack.add_conversation(DM, [DAVE], kind="im")

    public = await directive(app, fakes, sr.mention_event("deploy auth to staging", DAVE, CHANNEL))
    private = await directive(
        app, fakes, sr.mention_event("deploy the frontend to staging", CAROL, PRIVATE)
    )
    secret = f"Add a {SECRET_WORD} banner to the login page and deploy to staging"
    direct = await directive(app, fakes, dm_event(secret, DAVE, DM))
    every = {public, private, direct}

    # MALLORY: no role; in the public channel only.
    mallory = await home_of(app, fakes, MALLORY)
    assert mallory.keys() >= {"Waiting on you", "Your requests", "From your channels and decisions"}
    assert (
        "Nothing here" in mallory["Waiting on you"] and "Nothing here" in mallory["Your requests"]
    )
    shown = json.dumps(mallory)
    assert {p for p in every if p in shown} == {public}
    assert SECRET_WORD not in shown

    # DAVE: his two requests (one from his DM); not the private channel's plan.
    dave = await home_of(app, fakes, DAVE)
    assert public in dave["Your requests"] and direct in dave["Your requests"]
    assert SECRET_WORD in dave["Your requests"]
    assert private not in json.dumps(dave)

    # ALICE: an approver in no channel: all three wait on her, the DM one included.
    alice = await home_of(app, fakes, ALICE)
    assert {p for p in every if p in alice["Waiting on you"]} == every
    assert "Nothing here" in alice["From your channels and decisions"]

    # CAROL: an approver who requested the private plan: it is hers, not hers to approve.
    carol = await home_of(app, fakes, CAROL)
    assert private in carol["Your requests"] and private not in carol["Waiting on you"]
    assert {public, direct} <= {p for p in every if p in carol["Waiting on you"]}

    # Once ALICE approves the DM plan, it waits on nobody: BOB (an approver, in both
    # channels) no longer sees it; ALICE, who decided, still does; MALLORY never.
    record = await app.rt.store.load(direct)
    assert record is not None and record.card_ts is not None
    url = f"{fakes.slack_server.url}/respond/dm"
    approve = sr.in_thread(
        sr.block_action(kit.APPROVE, kit.button_value(record.plan), ALICE, DM, record.card_ts, url),
        record.thread.thread_ts,
    )
    assert (await app.interact(approve)).status == 200
    await eventually(lambda: any(r.id == "dm" for r in slack.responses), what="the approval")
    bob = await home_of(app, fakes, BOB)
    assert direct not in json.dumps(bob) and SECRET_WORD not in json.dumps(bob)
    assert public in bob["Waiting on you"] and private in bob["Waiting on you"]
    alice = await home_of(app, fakes, ALICE)
    assert direct in alice["From your channels and decisions"]
    assert direct not in alice["Waiting on you"]
    assert SECRET_WORD not in json.dumps(await home_of(app, fakes, MALLORY))

    # Channel membership was asked of Slack for each viewer, as the viewer, never DMs.
    asked = slack.calls_to("users.conversations")
    assert {c.params["user"] for c in asked} >= {MALLORY, DAVE, ALICE, BOB}
    assert all("im" not in str(c.params["types"]).split(",") for c in asked)
    assert slack.rejections == []


async def test_other_workspaces_and_unreadable_channels_show_nothing_extra(
    app: App, fakes: Fakes
) -> None:
    slack = fakes.slack
    slack.add_conversation(CHANNEL, [DAVE, MALLORY], name="deploys")
    public = await directive(app, fakes, sr.mention_event("deploy auth to staging", DAVE, CHANNEL))

    # The same approver's id, opening Home from another workspace: nothing of ours.
    foreign = await home_of(app, fakes, ALICE, team=OTHER_TEAM)
    assert public not in json.dumps(foreign)

    # Slack will not list MALLORY's channels: fail closed, and say so.
    slack.fail_next("users.conversations", "missing_scope")
    mallory = await home_of(app, fakes, MALLORY)
    assert public not in json.dumps(mallory)
    assert "could not read which channels" in json.dumps(mallory)
    # When Slack answers again, the channel's plan is back.
    assert public in json.dumps(await home_of(app, fakes, MALLORY))
