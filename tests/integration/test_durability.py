"""Nothing is lost, nothing happens twice: Slack 429/5xx, a queue that refuses a job, GitHub
5xx on dispatch and on the run lookup, a retried planning job, a model that hangs, a job
that fails for good and a plan that is gone, each tried from outside against the real app
over HTTP, a real Redis and the fakes.

Waits are shortened through the documented settings (SOPHIE_*), never by sleeping in the
app: a one-second dispatch settle, a reconciler that sweeps every second and moves on a
plan left for a second, a one-second model timeout.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.deadlines import planning_deadline
from handlers import blocks as kit
from tests import slack_requests as sr
from tests.fakes import llm_api
from tests.fakes.llm_plans import planning_model
from tests.harness import App, eventually, settings_for, start_app
from tests.integration.conftest import ALICE, CHANNEL, DAVE, STAGING_URL, Fakes
from tests.integration.test_end_to_end import (
    SEED,
    _buttons,
    _text,
    cards,
    click,
    dispatched_inputs,
    response_to,
)

MODEL = "openai/gpt-4o-mini"
QUICK = {
    "SOPHIE_DISPATCH_SETTLE_SECONDS": "1",
    "SOPHIE_STATUS_EDIT_SECONDS": "0.05",
    "SOPHIE_RECONCILE_SECONDS": "1",
    "SOPHIE_STUCK_SECONDS": "1",
}
# After the outcome, how long nothing more may happen (no second card, dispatch, result).
QUIET = 1.5


class Bot:
    """The running app, and the steps a person takes in Slack."""

    def __init__(self, fakes: Fakes, redis_url: str, tmp_path: Path) -> None:
        self.fakes, self.redis_url, self.tmp = fakes, redis_url, tmp_path
        self.app: App | None = None

    async def start(self, llm: bool = False, **overrides: str) -> App:
        env: dict[str, Any] = {**QUICK, **overrides}
        settings = settings_for(
            self.redis_url,
            self.tmp / "data",
            slack_url=self.fakes.slack_server.url,
            github_url=self.fakes.github_server.url,
            llm_url=self.fakes.llm_server.url if llm else None,
            **env,
        )
        self.app = await start_app(settings)
        return self.app

    async def directive(self, text: str = "deploy auth to staging") -> str:
        assert self.app is not None
        event = sr.mention_event(text, DAVE, CHANNEL)
        assert (await self.app.event(event)).status == 200
        return str(event["event"]["ts"])

    async def card(self, thread_ts: str, within: float = 15) -> Any:
        (card,) = await eventually(
            lambda: cards(self.fakes.slack, thread_ts), within=within, what="the card"
        )
        return copy.deepcopy(card)

    async def approve(self, card: Any, rid: str = "ok") -> dict[str, Any]:
        assert self.app is not None
        value = _buttons(card.blocks)[kit.APPROVE]["value"]
        await self.app.interact(click(self.fakes, kit.APPROVE, value, ALICE, card.ts, rid))
        reply: dict[str, Any] = await eventually(
            lambda: response_to(self.fakes.slack, rid), what="the approver's answer"
        )
        return reply

    def results(self, thread_ts: str) -> list[Any]:
        return [
            m
            for m in self.fakes.slack.thread(CHANNEL, thread_ts)
            if "plan `" in _text(m.blocks)
            and ("completed" in (m.text or "") or "failed" in (m.text or ""))
        ]

    def thread_text(self, thread_ts: str) -> str:
        return " ".join(
            (m.text or "") + _text(m.blocks) for m in self.fakes.slack.thread(CHANNEL, thread_ts)
        )

    async def result(self, thread_ts: str, within: float = 20) -> Any:
        (final,) = await eventually(lambda: self.results(thread_ts), within=within, what="result")
        return final


@pytest.fixture()
async def bot(fakes: Fakes, redis_url: str, tmp_path: Path) -> AsyncIterator[Bot]:
    b = Bot(fakes, redis_url, tmp_path)
    yield b
    if b.app is not None:
        await b.app.close()


def statuses(fakes: Fakes, method: str) -> list[int]:
    return [c.status for c in fakes.slack.calls_to(method)]


async def test_a_rate_limited_card_is_posted_once_after_retry_after(bot: Bot, fakes: Fakes) -> None:
    await bot.start()
    fakes.slack.rate_limit_next("chat.postMessage", retry_after=1)
    started = time.monotonic()
    thread_ts = await bot.directive()
    card = await bot.card(thread_ts)
    waited = time.monotonic() - started
    await asyncio.sleep(QUIET)
    assert len(cards(fakes.slack, thread_ts)) == 1
    assert statuses(fakes, "chat.postMessage")[:2] == [429, 200]
    assert waited >= 1.0  # Retry-After was honoured, not hammered
    assert _buttons(card.blocks)[kit.APPROVE]
    assert fakes.slack.rejections == []


async def test_a_server_error_on_the_result_message_still_delivers_it_once(
    bot: Bot, fakes: Fakes
) -> None:
    fakes.github.auto_advance = False  # the run moves only when the test says so
    await bot.start()
    thread_ts = await bot.directive()
    await bot.approve(await bot.card(thread_ts))
    (run_id,) = await eventually(lambda: list(fakes.github.runs), what="the dispatch")
    await eventually(
        lambda: any(
            (m.text or "").startswith("Workflow run")
            for m in fakes.slack.thread(CHANNEL, thread_ts)
        ),
        what="the status message",
    )
    fakes.slack.http_error_next("chat.postMessage", status=500)  # the next post: the result
    fakes.github.advance(run_id, 3)
    final = await bot.result(thread_ts)
    await asyncio.sleep(QUIET)
    assert STAGING_URL in _text(final.blocks)
    assert len(bot.results(thread_ts)) == 1
    assert 500 in statuses(fakes, "chat.postMessage")


async def test_an_approval_whose_dispatch_the_queue_refused_is_dispatched_by_the_reconciler(
    bot: Bot, fakes: Fakes
) -> None:
    app = await bot.start()
    scheduler = app.rt.sophie.scheduler
    enqueue = scheduler.enqueue
    refused: list[str] = []

    async def refuse_once(
        job: str, key: str, payload: dict[str, Any], delay_seconds: float = 0
    ) -> None:
        if job == "dispatch" and not refused:  # Redis fails between approval and enqueue
            refused.append(key)
            raise ConnectionError("Redis went away")
        await enqueue(job, key, payload, delay_seconds)

    scheduler.enqueue = refuse_once  # type: ignore[method-assign]
    thread_ts = await bot.directive()
    card = await bot.card(thread_ts)
    reply = await bot.approve(card)
    assert reply["text"] == "Approved and signed."  # recorded and signed; the dispatch follows
    assert refused == [f"dispatch:{plan_of(card)}"]
    final = await bot.result(thread_ts)
    await asyncio.sleep(QUIET)
    assert STAGING_URL in _text(final.blocks)
    assert len(fakes.github.dispatches) == 1 and len(bot.results(thread_ts)) == 1


def plan_of(card: Any) -> str:
    return str(_buttons(card.blocks)[kit.APPROVE]["value"]).split("|")[0]


async def test_two_server_errors_on_dispatch_then_it_completes_once(bot: Bot, fakes: Fakes) -> None:
    await bot.start()
    fakes.github.fail_next("POST", r"/dispatches$", status=502, times=2)
    thread_ts = await bot.directive()
    await bot.approve(await bot.card(thread_ts))
    final = await bot.result(thread_ts, within=30)
    await asyncio.sleep(QUIET)
    assert STAGING_URL in _text(final.blocks)
    assert len(fakes.github.dispatches) == 1 and len(bot.results(thread_ts)) == 1
    answers = [r.status for r in fakes.github.requests if r.path.endswith("/dispatches")]
    assert answers[:2] == [502, 502] and len(answers) == 3 and answers[2] < 300


async def test_a_lookup_error_after_a_lost_dispatch_reply_is_retried_and_the_run_tracked(
    bot: Bot, fakes: Fakes
) -> None:
    await bot.start()
    # GitHub starts the run but the reply is lost; then the run list answers 502 more times
    # than the HTTP client retries, so the lookup error reaches the job.
    fakes.github.fail_next("POST", r"/dispatches$", status=502, after=True)
    fakes.github.fail_next("GET", r"/actions/workflows/[^/]+/runs$", status=502, times=4)
    thread_ts = await bot.directive()
    await bot.approve(await bot.card(thread_ts))
    final = await bot.result(thread_ts, within=30)
    await asyncio.sleep(QUIET)
    assert STAGING_URL in _text(final.blocks)
    assert len(fakes.github.dispatches) == 1 and len(bot.results(thread_ts)) == 1


async def test_a_retried_planning_job_opens_one_thread_and_asks_the_model_once(
    bot: Bot, fakes: Fakes
) -> None:
    app = await bot.start(llm=True)
    store = app.rt.sophie.store
    save_new = store.save_new
    failed: list[str] = []

    async def fail_once(record: Any) -> None:
        if not failed:  # after the thread and the model's answer: Redis refuses the plan
            failed.append(record.plan.id)
            raise ConnectionError("Redis went away")
        await save_new(record)

    store.save_new = fail_once  # type: ignore[method-assign]
    body = sr.command_body(SEED, DAVE, CHANNEL, f"{fakes.slack_server.url}/respond/cmd")
    assert (await app.command(body)).status == 200

    def opened() -> list[Any]:
        return [m for m in fakes.slack.channel_messages(CHANNEL, True) if SEED in (m.text or "")]

    (parent,) = await eventually(opened, what="the thread SOPHIE opens")
    await bot.card(parent.ts)
    await asyncio.sleep(QUIET)
    assert failed, "the first try did fail"
    assert len(opened()) == 1 and len(cards(fakes.slack, parent.ts)) == 1
    assert len(fakes.llm.completions(MODEL)) == 1


async def test_a_model_that_hangs_is_reported_within_the_planning_deadline(
    bot: Bot, fakes: Fakes
) -> None:
    fakes.llm.default = llm_api.slow(60, planning_model())  # never answers in time
    await bot.start(llm=True, SOPHIE_LLM_TIMEOUT="1", SOPHIE_LLM_RETRIES="1")
    deadline = planning_deadline(1, 1, 1)
    started = time.monotonic()
    thread_ts = await bot.directive()
    told = await eventually(
        lambda: "Nothing will run" in bot.thread_text(thread_ts), within=deadline + 5
    )
    elapsed = time.monotonic() - started
    assert told and elapsed <= deadline + 1.0, (elapsed, deadline)
    assert "could not" in bot.thread_text(thread_ts) and cards(fakes.slack, thread_ts) == []


async def test_a_provider_that_asks_to_wait_too_long_is_cut_off_at_the_deadline(
    bot: Bot, fakes: Fakes
) -> None:
    # The client honours Retry-After (up to a minute): only the flow's deadline bounds it.
    fakes.llm.default = llm_api.error(429, "slow down", retry_after=30)
    await bot.start(llm=True, SOPHIE_LLM_TIMEOUT="1", SOPHIE_LLM_RETRIES="1")
    deadline = planning_deadline(1, 1, 1)
    started = time.monotonic()
    thread_ts = await bot.directive()
    await eventually(
        lambda: "I could not plan this within" in bot.thread_text(thread_ts), within=deadline + 5
    )
    assert time.monotonic() - started <= deadline + 1.0
    assert cards(fakes.slack, thread_ts) == []


async def test_a_job_that_fails_for_good_tells_the_thread_and_the_card_follows(
    bot: Bot, fakes: Fakes
) -> None:
    # Every try of the planning job fails on the card; the reconciler waits longer than
    # the tries take, then posts it.
    await bot.start(SOPHIE_STUCK_SECONDS="8")
    fakes.slack.fail_next("chat.postMessage", "internal_error", times=3)
    thread_ts = await bot.directive()
    await eventually(
        lambda: "could not finish posting it" in bot.thread_text(thread_ts),
        within=15,
        what="the failure told in the thread",
    )
    assert "internal_error" in bot.thread_text(thread_ts)
    card = await bot.card(thread_ts, within=20)
    await asyncio.sleep(QUIET)
    assert len(cards(fakes.slack, thread_ts)) == 1
    reply = await bot.approve(card)
    assert reply["text"] == "Approved and signed."
    await bot.result(thread_ts)


async def test_a_card_whose_plan_is_gone_says_so_and_loses_its_buttons(
    bot: Bot, fakes: Fakes
) -> None:
    app = await bot.start()
    thread_ts = await bot.directive()
    card = await bot.card(thread_ts)
    plan_id = plan_of(card)
    await app.rt.redis.delete(
        f"sophie:plan:{plan_id}", f"sophie:plan:{plan_id}:decisions", f"sophie:plan:{plan_id}:order"
    )
    value = _buttons(card.blocks)[kit.APPROVE]["value"]
    await app.interact(click(fakes, kit.APPROVE, value, ALICE, card.ts, "gone"))

    def updated() -> Any:
        message = fakes.slack.message(CHANNEL, card.ts)
        return message if message is not None and message.edits else None

    message = await eventually(updated, what="the card updated")
    assert "no longer exists" in (message.text or "") + _text(message.blocks)
    assert _buttons(message.blocks) == {}
    await asyncio.sleep(0.3)
    assert response_to(fakes.slack, "gone") is None  # no "I have no record of that plan."
    assert dispatched_inputs(fakes) == [] and fakes.slack.rejections == []


async def test_a_card_posted_whose_record_was_lost_is_found_not_posted_again(
    bot: Bot, fakes: Fakes
) -> None:
    app = await bot.start()
    store = app.rt.sophie.store
    set_card = store.set_card
    lost: list[str] = []

    async def lose_once(plan_id: str, card_ts: str) -> None:
        if not lost:  # the card is in the thread; Redis fails before the plan records it
            lost.append(card_ts)
            raise ConnectionError("Redis went away")
        await set_card(plan_id, card_ts)

    store.set_card = lose_once  # type: ignore[method-assign]
    thread_ts = await bot.directive()
    card = await bot.card(thread_ts)
    await eventually(lambda: len(lost) == 1, what="the lost record")
    assert card.ts == lost[0]

    async def recorded() -> bool:  # the job's retry finds the card in the thread
        record = await store.load(plan_of(card))
        return record is not None and record.card_ts == card.ts

    await eventually(recorded, what="the card recorded by the retry")
    reply = await bot.approve(card)  # the plan knows its card: the click is bound to it
    assert reply["text"] == "Approved and signed."
    await bot.result(thread_ts)
    assert len(cards(fakes.slack, thread_ts)) == 1
