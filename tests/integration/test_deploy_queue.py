"""One deploy per repo@environment, locks by command, from outside: signed Slack requests
to a running app, runs on the fake GitHub (whose concurrency group would cancel a pending
run: SOPHIE must never let two runs for one environment be queued at GitHub at once)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.redis_store import RedisStore
from roles.records import PlanStatus
from tests import slack_requests as sr
from tests.harness import eventually
from tests.integration.conftest import ALICE, BOB, CHANNEL, DAVE, Fakes
from tests.integration.test_end_to_end import _buttons, _text, dispatched_inputs
from tests.integration.test_execution import Runner
from tests.integration.test_home_privacy import home_of

RESPOND = "https://hooks.slack.test/respond"


@pytest.fixture()
async def runner(fakes: Fakes, redis_url: str, tmp_path: Path) -> AsyncIterator[Runner]:
    started = Runner(fakes, redis_url, tmp_path)
    yield started
    if started.app is not None:
        await started.app.close()


def _plan_id(card: Any) -> str:
    return str(_buttons(card.blocks)["sophie_view_plan"]["value"].split("|")[0])


async def test_a_second_approved_deploy_waits_in_line(runner: Runner, fakes: Fakes) -> None:
    app = await runner.start()
    first = await runner.approved("deploy auth to staging")
    (one,) = await eventually(lambda: dispatched_inputs(fakes), what="the first dispatch")
    second = await runner.approved("deploy auth to staging, the second time")
    told = await eventually(
        lambda: "Queued behind" in runner.thread_text(second), what="the queue notice"
    )
    assert told and f"behind {_plan_id(first)} — 1 ahead" in runner.thread_text(second)
    assert len(dispatched_inputs(fakes)) == 1  # never two runs queued at GitHub at once
    done = await eventually(lambda: runner.result(first), within=20, what="the first result")
    ended = time.monotonic()
    await eventually(lambda: len(dispatched_inputs(fakes)) == 2, within=20, what="the next")
    print(f"\nrun's end seen → next queued deploy dispatched: {time.monotonic() - ended:.3f} s")
    assert dispatched_inputs(fakes)[1]["plan_id"] == _plan_id(second)
    assert done is not None and one["plan_id"] == _plan_id(first)
    await eventually(lambda: runner.result(second), within=20, what="the second result")
    record = await app.rt.store.load(_plan_id(second))
    assert record is not None and record.status == PlanStatus.SUCCEEDED


async def test_lock_and_unlock_by_command(runner: Runner, fakes: Fakes) -> None:
    app = await runner.start()
    # Not an approver: refused, nothing locked.
    resp = await app.command(sr.command_body("lock staging auth", DAVE, CHANNEL, RESPOND))
    assert resp.status == 200
    assert (await app.rt.store.locks()) == {}
    resp = await app.command(
        sr.command_body("lock staging auth release testing", BOB, CHANNEL, RESPOND)
    )
    assert resp.status == 200
    assert list(await app.rt.store.locks()) == ["acme/auth-service@staging"]
    card = await runner.approved("deploy auth to staging")
    await eventually(
        lambda: "locked by" in runner.thread_text(card), what="the lock notice in the thread"
    )
    assert "release testing" in runner.thread_text(card)
    assert dispatched_inputs(fakes) == []

    # The card says where the plan waits; App Home shows the lock.
    def card_says_it_waits() -> bool:
        shown = fakes.slack.message(CHANNEL, card.ts)
        return shown is not None and "⏳ Waiting" in _text(shown.blocks)

    assert await eventually(card_says_it_waits, what="the card's wait line")
    home = await home_of(app, fakes, ALICE)
    assert "🔒 `acme/auth-service` → *staging*" in " ".join(home.values())
    await app.command(sr.command_body("unlock staging auth", ALICE, CHANNEL, RESPOND))
    (inputs,) = await eventually(lambda: dispatched_inputs(fakes), what="dispatch after unlock")
    assert inputs["plan_id"] == _plan_id(card)
    audited = [
        e async for e in _audit_kinds(app.rt.store) if e.startswith(("deploys.", "decision.ref"))
    ]
    assert audited == ["decision.refused", "deploys.locked", "deploys.unlocked"]


async def _audit_kinds(store: RedisStore) -> AsyncIterator[str]:
    for _, fields in await store.r.xrange("sophie:audit"):
        yield json.loads(fields[b"body"])["kind"]
