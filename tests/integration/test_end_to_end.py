"""The seed example driven exactly as Slack would, against fake Slack, GitHub and LLM servers.

Signed HTTP requests go to the running app on loopback; state lives in a real
redis-server; the app reaches the fakes over TCP through the base-URL settings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from bot.chain import verify_chain
from bot.verify import PublicKeys
from handlers import blocks as kit
from roles.attestation import open_envelope
from roles.records import PlanStatus
from tests import slack_requests as sr
from tests.fakes.slack_api import FakeSlack
from tests.harness import App, eventually, settings_for, start_app
from tests.integration.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    DAVE,
    MALLORY,
    REPO,
    STAGING_URL,
    Fakes,
)

SEED = "Add caching to the user authentication system and deploy to staging"


def cards(slack: FakeSlack, thread_ts: str) -> list[Any]:
    return [m for m in slack.thread(CHANNEL, thread_ts) if _is_card(m)]


def _is_card(message: Any) -> bool:
    """A plan card, known by the metadata SOPHIE posts it with (not by its wording)."""
    return (message.metadata or {}).get("event_type") == "sophie_plan_card"


def _buttons(blocks: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    found = {}
    for block in blocks or []:
        if block.get("type") == "actions":
            for element in block["elements"]:
                found[element["action_id"]] = element
    return found


def _text(blocks: list[dict[str, Any]] | None) -> str:
    return json.dumps(blocks or [], ensure_ascii=False)


def click(fakes: Fakes, action: str, value: str, who: str, ts: str, rid: str) -> dict[str, Any]:
    """A button click as Slack posts it; the reply goes to the fake's response_url ``rid``."""
    url = f"{fakes.slack_server.url}/respond/{rid}"
    return sr.block_action(action, value, who, CHANNEL, ts, url)


def response_to(slack: FakeSlack, response_id: str) -> dict[str, Any] | None:
    for response in list(slack.responses):
        if response.id == response_id:
            return dict(response.body)
    return None


def dispatched_inputs(fakes: Fakes) -> list[dict[str, str]]:
    return [dict(d.inputs) for d in list(fakes.github.dispatches)]


async def test_seed_directive_from_mention_to_staging_url(app: App, fakes: Fakes) -> None:
    slack = fakes.slack
    event = sr.mention_event(SEED, DAVE, CHANNEL)
    thread_ts = event["event"]["ts"]

    resp = await app.event(event)
    assert resp.status == 200

    # The card arrives in the directive's thread.
    (card,) = await eventually(lambda: cards(slack, thread_ts), what="the plan card")
    text = _text(card.blocks)
    header = card.blocks[0]
    assert header["type"] == "header"
    assert header["text"]["text"] == "Change and deploy acme/auth-service → staging"
    for needed in ("code_change", "build", "test", "deploy", "smoke_test"):
        assert f"`{needed}`" in text, needed
    assert "What SOPHIE understood" in text and "*Confidence*" in text
    assert "*Risk" in text and "sensitive-component" in text
    assert "approval: one authorised approver" in text
    assert "*Rollback*" in text and "LLM: openai/gpt-4o-mini" in text
    buttons = _buttons(card.blocks)
    assert set(buttons) == {kit.APPROVE, kit.VETO, kit.REQUEST_CHANGES, kit.VIEW_PLAN}
    value = buttons[kit.APPROVE]["value"]
    plan_id = value.split("|")[0]

    # The full plan YAML is one click away, in a modal.
    await app.interact(
        click(fakes, kit.VIEW_PLAN, buttons[kit.VIEW_PLAN]["value"], BOB, card.ts, "v")
    )
    (modal,) = await eventually(lambda: slack.views, what="the plan modal")
    shown = _text(modal.view["blocks"])
    assert "apiVersion: sophie/v1" in shown and plan_id in shown

    # Slack retries the event (it thinks we missed it): still one plan, one card.
    retry = await app.event(event, extra={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "x"})
    assert retry.status == 200
    await asyncio.sleep(0.4)
    assert len(cards(slack, thread_ts)) == 1
    assert len(fakes.llm.completions()) == 1

    # Someone who is not an approver is refused, ephemerally.
    assert (
        await app.interact(click(fakes, kit.APPROVE, value, MALLORY, card.ts, "m1"))
    ).status == 200
    refusal = await eventually(lambda: response_to(slack, "m1"), what="the refusal")
    assert refusal["response_type"] == "ephemeral"
    assert "not an approver" in refusal["text"]
    record = await app.rt.store.load(plan_id)
    assert record is not None and record.status == PlanStatus.PENDING

    # Two approvers click at once, and Slack retries one click: one decision wins.
    clicks = [
        click(fakes, kit.APPROVE, value, who, card.ts, rid)
        for who, rid in ((ALICE, "a1"), (BOB, "b1"), (ALICE, "a2"))
    ]
    answers = await asyncio.gather(*(app.interact(c) for c in clicks))
    assert [a.status for a in answers] == [200, 200, 200]
    await eventually(lambda: dispatched_inputs(fakes), what="the dispatch")
    replies = [await eventually(partial(response_to, slack, r)) for r in ("a1", "b1", "a2")]
    assert sum("Approved and signed" in r["text"] for r in replies) == 1, replies

    # The card is updated in place: no buttons, who approved.
    def approved_card() -> Any:
        message = slack.message(CHANNEL, card.ts)
        return message if message and not _buttons(message.blocks) else None

    updated = await eventually(approved_card, what="the updated card")
    record = await app.rt.store.load(plan_id)
    assert record is not None and len(record.approvals) == 1
    approver = record.approvals[0].actor.user_id
    assert f"by <@{approver}>" in _text(updated.blocks)

    # The thread gets the run, then the staging URL, artifact links and outcome.
    def result() -> Any:
        return next(
            (m for m in slack.thread(CHANNEL, thread_ts) if STAGING_URL in _text(m.blocks)), None
        )

    final = await eventually(result, within=20, what="the final message")
    final_text = _text(final.blocks)
    # Two runs: the implement run wrote the change, the second deployed that commit.
    _, deploy_run = sorted(fakes.github.runs)
    branch = f"sophie/{plan_id}"
    commit = fakes.github.branch_head(REPO, branch)
    assert commit is not None and fakes.github.runs[deploy_run].head_sha == commit
    pull = fakes.github.pull_for(REPO, branch)
    assert pull is not None and pull.draft and pull.head_sha == commit
    assert f"https://github.com/{REPO}/actions/runs/{deploy_run}" in final_text
    assert f"/actions/runs/{deploy_run}/artifacts/" in final_text
    assert "completed" in final_text and f"plan `{plan_id}`" in final_text
    assert commit[:12] in final_text and pull.html_url in final_text
    thread = [_text(m.blocks) for m in slack.thread(CHANNEL, thread_ts)]
    (checked,) = [t for t in thread if "The change was checked" in t]
    assert pull.html_url in checked and "app/cache.py" in checked and "3 passed" in checked
    # The deployment GitHub recorded (and whose URL the thread shows) is of that commit.
    assert any(d.sha == commit and d.environment == "staging" for d in fakes.github.deployments)

    # Two dispatches: implement on main, then deploy of the checked commit on its branch.
    await asyncio.sleep(0.3)
    first, second = dispatched_inputs(fakes)
    assert [d.ref for d in fakes.github.dispatches] == ["main", branch]
    assert first["action"] == "implement" and "deploy_sha" not in first
    assert second["action"] == "deploy" and second["deploy_sha"] == commit
    for inputs in (first, second):
        assert inputs["plan_id"] == plan_id
        assert inputs["plan_digest"] == record.plan.digest
    keys_resp = await app.session.get(f"{app.url}/.well-known/sophie/keys")
    published = await keys_resp.json()
    verifier = PublicKeys([base64.b64decode(k["public_key_base64"]) for k in published["keys"]])
    (envelope,) = json.loads(base64.b64decode(second["envelopes"]))
    opened = open_envelope(envelope, verifier)
    assert opened.subject_digest == record.plan.digest
    assert opened.predicate["approver"]["userId"] == approver
    assert opened.predicate["approver"]["teamId"] == sr.TEAM

    # The chain from directive to artifact, as the pipeline's chain job uploads it,
    # is what `sophie verify --chain` accepts, offline.
    bundle = json.loads(base64.b64decode(second["bundle_url"].split(",", 1)[1]))
    chain = {
        "kind": "SophieChain",
        "version": 1,
        "plan": json.loads(base64.b64decode(second["plan"])),
        "envelopes": [envelope],
        "constitution": bundle["constitution"],
        "change": bundle["change"],
        "commit": commit,
        "run": f"https://github.com/{REPO}/actions/runs/{deploy_run}",
        "artifacts": [
            {"name": name, "digest": "sha256:" + fakes.github.artifact_digest(REPO, commit, name)}
            for name in second["artifacts"].split(",")
        ],
    }
    report = verify_chain(chain, verifier)
    assert report.ok, report.reason
    forged = {**chain, "commit": "0" * 40}
    assert "not this one" in verify_chain(forged, verifier).reason

    record = await app.rt.store.load(plan_id)
    assert record is not None and record.status == PlanStatus.SUCCEEDED
    assert slack.rejections == []
    assert fakes.github.rejections == []


async def test_bad_signatures_and_stale_requests_change_nothing(app: App, fakes: Fakes) -> None:
    event = sr.mention_event(SEED, DAVE, CHANNEL)
    calls_before = len(fakes.slack.calls)
    wrong = await app.event(event, secret="not-the-secret")
    stale = await app.event(event, timestamp=int(time.time()) - 6 * 60)
    unsigned = await app.session.post(
        f"{app.url}/slack/events",
        data=json.dumps(event),
        headers={"Content-Type": "application/json"},
    )
    assert (wrong.status, stale.status, unsigned.status) == (401, 401, 401)
    await asyncio.sleep(0.4)
    assert len(fakes.slack.calls) == calls_before
    assert fakes.llm.completions() == []
    assert await app.rt.store.recent(10) == []
    # And the same event, correctly signed, is then accepted once.
    assert (await app.event(event)).status == 200
    await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="the card")


async def test_slash_command_opens_a_thread_and_dry_run_is_labelled(
    fakes: Fakes, redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=None,  # no GITHUB_TOKEN: a dry run
        llm_url=None,  # no LLM key: the offline planner
    )
    app = await start_app(settings)
    try:
        body = sr.command_body(SEED, DAVE, CHANNEL, f"{fakes.slack_server.url}/respond/c1")
        resp = await app.command(body)
        assert resp.status == 200
        ack = await resp.json()
        assert ack["response_type"] == "ephemeral" and "Planning" in ack["text"]

        def opened() -> Any:
            parents = [m for m in fakes.slack.messages if m.thread_ts is None]
            return next((m for m in parents if SEED in (m.text or "")), None)

        parent = await eventually(opened, what="the thread SOPHIE opens")
        (card,) = await eventually(lambda: cards(fakes.slack, parent.ts), what="card")
        assert "offline planner" in _text(card.blocks)
        # No model: the change steps cannot be written, and the card says what runs.
        shown = _text(card.blocks)
        assert "The change steps cannot be implemented: no model is configured" in shown
        assert "deploy `main` as it is" in shown and "describes only" in shown
        value = _buttons(card.blocks)[kit.APPROVE]["value"]
        await app.interact(click(fakes, kit.APPROVE, value, ALICE, card.ts, "x"))

        def dry() -> Any:
            replies = fakes.slack.thread(CHANNEL, parent.ts)
            return next((m for m in replies if "Dry run complete" in (m.text or "")), None)

        await eventually(dry, what="the dry-run result")
        assert fakes.github.dispatches == []
        assert fakes.slack.rejections == []
    finally:
        await app.close()


async def test_restarting_the_bot_loses_nothing(
    fakes: Fakes, redis_url: str, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=fakes.llm_server.url,
    )
    first = await start_app(settings)
    event = sr.mention_event(SEED, DAVE, CHANNEL)
    await first.event(event)
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    await first.close()

    second = await start_app(settings)  # same Redis, same data dir (same signing key)
    try:
        value = _buttons(card.blocks)[kit.APPROVE]["value"]
        await second.interact(click(fakes, kit.APPROVE, value, ALICE, card.ts, "r"))
        await eventually(lambda: dispatched_inputs(fakes), what="dispatch after restart")
        # The retried event after the restart is still recognised.
        await second.event(event, extra={"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "x"})
        await asyncio.sleep(0.3)
        assert len(cards(fakes.slack, event["event"]["ts"])) == 1
    finally:
        await second.close()


async def test_health_and_a_redis_outage_lose_nothing(
    app: App, fakes: Fakes, redis_server: Any
) -> None:
    health = await app.session.get(f"{app.url}/healthz")
    ready = await app.session.get(f"{app.url}/readyz")
    assert health.status == 200 and ready.status == 200
    body = await ready.json()
    assert body["checks"] == {"redis": True, "workers": True} and body["slack"] is True

    redis_server.kill()
    try:
        event = sr.mention_event(SEED, DAVE, CHANNEL)
        refused = await app.event(event)
        # Not acknowledged, so Slack delivers it again; nothing was half-done.
        assert refused.status >= 500
        down = await app.session.get(f"{app.url}/readyz")
        assert down.status == 503 and (await down.json())["checks"]["redis"] is False
    finally:
        redis_server.start()
    retry = await app.event(event, extra={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "x"})
    assert retry.status == 200
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), within=20)
    assert _is_card(card)


async def test_the_ack_never_waits_for_a_slow_model(app: App, fakes: Fakes) -> None:
    from tests.fakes import llm_api
    from tests.fakes.llm_plans import planning_model

    body = {"messages": [{"role": "user", "content": f"<directive>{SEED}</directive>"}]}
    fakes.llm.script(
        "openai/gpt-4o-mini", llm_api.slow(1.5, planning_model()("openai/gpt-4o-mini", body))
    )
    event = sr.mention_event(SEED, DAVE, CHANNEL)
    resp = await app.event(event)
    assert resp.status == 200
    # Answered while the model is still thinking: the request is in, no card yet.
    await eventually(lambda: fakes.llm.completions(), what="the model call")
    assert cards(fakes.slack, event["event"]["ts"]) == []
    await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="the card, later")


async def test_app_home_lists_recent_plans(app: App, fakes: Fakes) -> None:
    event = sr.mention_event(SEED, DAVE, CHANNEL)
    await app.event(event)
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    plan_id = _buttons(card.blocks)[kit.APPROVE]["value"].split("|")[0]
    home_event = {
        **sr.mention_event("", ALICE, CHANNEL),
        "event": {"type": "app_home_opened", "user": ALICE, "channel": "D0ALICE001", "tab": "home"},
    }
    assert (await app.event(home_event)).status == 200
    published = await eventually(lambda: fakes.slack.home(ALICE), what="the Home tab")
    assert plan_id in _text(published["blocks"]) and "pending" in _text(published["blocks"])
    assert fakes.slack.rejections == []
