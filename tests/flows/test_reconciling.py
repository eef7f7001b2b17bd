"""Nothing is lost, nothing happens twice: the reconciler, retried jobs, stalled dispatches
and jobs that fail for good, over the in-memory ports (milliseconds, no sleeps)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from roles import jobs
from roles.constitution import Constitution
from roles.navigator import Reading
from roles.offline_planner import OfflinePlanner
from roles.ports import CardContext, Proposal
from roles.records import Actor, Directive, PlanRecord, PlanStatus, Thread
from tests.flows.test_flows import ALICE, DAVE, TEAM, Loop

SEED = "Add caching to the auth service and deploy to staging"


async def approved(loop: Loop) -> PlanRecord:
    await loop.say(SEED)
    await loop.run()
    record = await loop.plan()
    return record


async def test_an_approval_whose_dispatch_the_queue_refused_is_dispatched_once() -> None:
    loop = Loop()
    record = await approved(loop)
    enqueue = loop.scheduler.enqueue

    async def refuse_dispatch(
        job: str, key: str, payload: dict[str, Any], delay_seconds: float = 0
    ) -> None:
        if job == "dispatch" and not refused:
            refused.append(key)
            raise ConnectionError("the queue is unreachable")
        await enqueue(job, key, payload, delay_seconds)

    refused: list[str] = []
    loop.scheduler.enqueue = refuse_dispatch  # type: ignore[method-assign]
    assert await loop.click(record, ALICE) == "Approved and signed."
    assert refused and "dispatch" not in loop.scheduler.names()
    assert await loop.sophie.reconcile() == {}  # not past its deadline yet
    loop.clock.advance(loop.sophie.tuning.stuck_seconds + 1)
    assert await loop.sophie.reconcile() == {"approved": 1}
    assert await loop.sophie.reconcile() == {"approved": 1}  # same bucket: merged
    assert loop.scheduler.names().count("dispatch") == 1
    await loop.run()
    assert len(loop.ci.dispatched) == 1
    loop.clock.advance(10)
    await loop.run()
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status == PlanStatus.SUCCEEDED
    assert len(loop.ci.dispatched) == 1 and len(loop.notifier.of("result")) == 1


class FlakyCards(Exception):
    pass


async def test_a_plan_left_without_a_card_gets_one_and_moves_on() -> None:
    loop = Loop()
    post_card = loop.notifier.post_card
    calls = 0

    async def failing(record: PlanRecord, context: CardContext) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise FlakyCards("Slack is down")
        return await post_card(record, context)

    loop.notifier.post_card = failing  # type: ignore[method-assign]
    await loop.say(SEED)
    with pytest.raises(FlakyCards):
        await loop.run()  # the planning job saved the plan, then failed on the card
    (plan_id,) = list(loop.store.plans)
    loop.clock.advance(loop.sophie.tuning.stuck_seconds + 1)
    assert await loop.sophie.reconcile() == {"pending": 1}
    await loop.run()
    assert len(loop.notifier.of("card")) == 1
    assert "expire" in loop.scheduler.names()  # the rest of planning happened too
    assert await loop.sophie.reconcile() == {}
    record = await loop.store.load(plan_id)
    assert record is not None and record.card_ts


async def test_two_uncertain_dispatches_do_not_stall_it() -> None:
    loop = Loop()
    record = await approved(loop)
    loop.ci.failures = ["5xx", "5xx"]
    await loop.click(record, ALICE)
    t = loop.sophie.tuning
    for _ in range(40):  # each look and attempt is its own job: none is dropped as "done"
        await loop.run()
        if loop.ci.dispatched:
            break
        loop.clock.advance(t.dispatch_recheck_seconds)
    assert len(loop.ci.dispatched) == 1
    loop.clock.advance(t.poll_seconds)
    await loop.run()
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status == PlanStatus.SUCCEEDED
    assert final.run is not None and final.run.attempts == 3


async def test_a_dead_tracking_chain_is_picked_up() -> None:
    loop = Loop()
    record = await approved(loop)
    await loop.click(record, ALICE)
    await loop.run()  # dispatched; the first look is queued a poll later
    loop.scheduler.queued.clear()  # …and lost
    t = loop.sophie.tuning
    loop.clock.advance(t.poll_seconds + t.dispatch_lease_seconds + t.stuck_seconds + 1)
    assert await loop.sophie.reconcile() == {"running": 1}
    await loop.run()
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status == PlanStatus.SUCCEEDED
    assert len(loop.notifier.of("result")) == 1 and len(loop.ci.dispatched) == 1


class CountingPlanner:
    offline = False

    def __init__(self) -> None:
        self.calls = 0

    async def propose(
        self, reading: Reading, constitution: Constitution, precedent: list[str]
    ) -> Proposal:
        self.calls += 1
        return replace(
            await OfflinePlanner().propose(reading, constitution, precedent), planner="llm"
        )


async def test_a_retried_planning_job_opens_one_thread_and_asks_the_model_once() -> None:
    loop = Loop()
    planner = CountingPlanner()
    loop.sophie.planner = planner
    save_new = loop.store.save_new
    failures = [ConnectionError("Redis went away")]

    async def flaky(record: PlanRecord) -> None:
        if failures:
            raise failures.pop()
        await save_new(record)

    loop.store.save_new = flaky  # type: ignore[method-assign]
    directive = Directive(
        text=SEED,
        requester=Actor(TEAM, DAVE),
        thread=Thread("C0DEPLOYS1", ""),  # /sophie: the job opens the thread
        source="command",
        event_id="Ev-command-1",
    )
    job = jobs.PlanDirective(directive)
    with pytest.raises(ConnectionError):
        await loop.sophie.run(job)
    record = await loop.sophie.run(job)  # what the queue does on the retry
    again = await loop.sophie.run(job)  # and once more: nothing new
    assert isinstance(record, PlanRecord) and isinstance(again, PlanRecord)
    assert planner.calls == 1
    assert len(loop.notifier.of("thread")) == 1 and len(loop.notifier.of("card")) == 1
    assert record.thread == loop.notifier.of("thread")[0].thread


async def test_a_slow_model_is_told_within_the_planning_deadline() -> None:
    import asyncio

    class Hanging:
        offline = False

        async def propose(self, *args: object) -> Proposal:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    loop = Loop()
    loop.sophie.planner = Hanging()
    loop.sophie.tuning = replace(loop.sophie.tuning, planning_deadline_seconds=0.05)
    await loop.say(SEED)
    await loop.run()
    (text,) = loop.notifier.texts()
    assert text.startswith("I could not plan this within 0 s") and "Nothing will run" in text


async def test_a_job_that_fails_for_good_tells_the_thread_and_is_audited() -> None:
    loop = Loop()
    record = await approved(loop)
    await loop.sophie.job_failed(jobs.OnPlan("dispatch", record.plan.id), "HTTP 502")
    (text,) = loop.notifier.texts()
    assert f"dispatch step of plan {record.plan.id} failed (HTTP 502)" in text
    assert "Nothing runs twice" in text
    assert loop.store.audit_log[-1][0] == "job.failed"
    directive = Directive(
        text="deploy auth to staging",
        requester=Actor(TEAM, DAVE),
        thread=Thread("C0DEPLOYS1", "1700000000.999999"),
        source="mention",
        event_id="Ev-never-planned",
    )
    await loop.sophie.job_failed(jobs.PlanDirective(directive), "TimeoutError")
    assert "I could not plan your directive (TimeoutError)" in loop.notifier.texts()[-1]


async def test_a_card_whose_plan_is_gone_says_so() -> None:
    loop = Loop()
    record = await approved(loop)
    await loop.sophie.card_gone(record.plan.id, "C0DEPLOYS1", record.card_ts or "")
    assert loop.notifier.of("card_gone") == []  # it still exists: nothing to say
    del loop.store.plans[record.plan.id]
    await loop.sophie.card_gone(record.plan.id, "C0DEPLOYS1", record.card_ts or "")
    (gone,) = loop.notifier.of("card_gone")
    assert gone.plan_id == record.plan.id


async def test_a_card_posted_but_not_recorded_is_found_in_the_thread() -> None:
    loop = Loop()
    set_card = loop.store.set_card
    failures = [ConnectionError("the reply was lost")]

    async def flaky(plan_id: str, card_ts: str) -> None:
        if failures:
            raise failures.pop()
        await set_card(plan_id, card_ts)

    loop.store.set_card = flaky  # type: ignore[method-assign]
    await loop.say(SEED)
    (queued,) = loop.scheduler.queued
    job = jobs.parse(queued.name, queued.payload)
    with pytest.raises(ConnectionError):
        await loop.sophie.run(job)  # the card is in the thread; the plan does not know it
    await loop.sophie.run(job)  # the queue's retry
    (card,) = loop.notifier.of("card")
    record = await loop.store.load(card.plan_id)
    assert record is not None and record.card_ts == card.text


async def test_an_outcome_marked_whose_reply_was_lost_is_still_reported_once() -> None:
    loop = Loop()
    record = await approved(loop)
    await loop.click(record, ALICE)
    await loop.run()
    transition = loop.store.transition
    lost: list[PlanStatus] = []

    async def reply_lost(
        plan_id: str, from_: set[PlanStatus], to: PlanStatus, note: str = ""
    ) -> bool:
        done = await transition(plan_id, from_, to, note)
        if to == PlanStatus.SUCCEEDED and not lost:
            lost.append(to)
            raise ConnectionError("the reply was lost")
        return done

    loop.store.transition = reply_lost  # type: ignore[method-assign]
    loop.clock.advance(10)
    with pytest.raises(ConnectionError):
        await loop.run()  # the run ended; the outcome is marked, the job fails
    job = jobs.OnPlan("track", record.plan.id)
    await loop.sophie.run(job)  # the queue's retry
    await loop.sophie.run(job)  # a late webhook: nothing more
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status == PlanStatus.SUCCEEDED
    assert len(loop.notifier.of("result")) == 1
    assert len(loop.store.outcomes) == 1  # Ψ remembered once
