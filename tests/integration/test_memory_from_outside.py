"""Ψ from outside: through signed Slack requests to the running app, a real redis-server
and the fake GitHub — precedent appears on the second similar plan, the outcome is
counted in /metrics, and autonomy is refused below the trust floor."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from handlers import blocks as kit
from roles import memory
from roles.records import PlanStatus
from tests import slack_requests as sr
from tests.harness import App, eventually, settings_for, start_app
from tests.integration.conftest import ALICE, CHANNEL, DAVE, REPO, Fakes
from tests.integration.test_end_to_end import _buttons, _text, cards, click

ROOT = Path(__file__).resolve().parents[2]


async def _card(app: App, fakes: Fakes, text: str) -> Any:
    event = sr.mention_event(text, DAVE, CHANNEL)
    await app.event(event)
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    return copy.deepcopy(card)


async def _ended(app: App, plan_id: str) -> PlanStatus:
    async def final() -> PlanStatus | None:
        record = await app.rt.store.load(plan_id)
        return record.status if record is not None and record.status.final else None

    status: PlanStatus | None = None
    for _ in range(400):
        status = await final()
        if status is not None:
            return status
        import asyncio

        await asyncio.sleep(0.05)
    raise AssertionError(f"{plan_id} did not end")


async def test_the_second_similar_plan_shows_its_precedent_and_metrics_count_it(
    app: App, fakes: Fakes
) -> None:
    first = await _card(app, fakes, "deploy auth to staging")
    value = _buttons(first.blocks)[kit.APPROVE]["value"]
    plan_id = value.split("|")[0]
    assert "Before this" not in _text(first.blocks)
    await app.interact(click(fakes, kit.APPROVE, value, ALICE, first.ts, "a"))
    assert await _ended(app, plan_id) == PlanStatus.SUCCEEDED
    await eventually(
        lambda: any(plan_id in o for o in [str(fakes.slack.thread(CHANNEL, first.thread_ts))]),
        what="the thread",
    )
    second = await _card(app, fakes, "deploy auth to staging again please")
    shown = _text(second.blocks)
    assert "Before this" in shown and f"similar change to `{REPO}` in staging" in shown
    assert plan_id in shown and "1 succeeded" in shown
    # The outcome and its timings are Prometheus metrics of the process that kept it.
    body = await (await app.session.get(f"{app.url}/metrics")).text()
    assert 'sophie_plan_outcomes_total{environment="staging",result="succeeded"}' in body
    assert 'sophie_plan_step_seconds_count{environment="staging",step="lead_time"}' in body


async def test_autonomy_is_refused_below_the_trust_floor_through_slack(
    fakes: Fakes, redis_url: str, tmp_path: Path
) -> None:
    doc = yaml.safe_load((ROOT / "constitution.yml").read_text())
    doc["policies_dir"] = str(ROOT / "policies")
    doc["environments"]["development"]["approval"] = "autonomous"
    path = tmp_path / "constitution.yml"
    path.write_text(yaml.safe_dump(doc))
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=None,
        constitution=path,
    )
    app = await start_app(settings)
    try:
        card = await _card(app, fakes, "deploy auth to development")
        shown = _text(card.blocks)
        assert "trust.below-floor" in shown and "below 0.80 for autonomy" in shown
        assert "notification" in shown  # a person may still veto it
        # Trust earned (as kept in Redis): the same directive runs autonomously.
        for key in memory.relevant_keys(REPO, "development", f"{sr.TEAM}/{DAVE}", []):
            await app.rt.store.set_trust(key, 0.95)
        again = await _card(app, fakes, "deploy auth to development now")
        assert "trust.below-floor" not in _text(again.blocks)
        assert "autonomous" in _text(again.blocks)
    finally:
        await app.close()
