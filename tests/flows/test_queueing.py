"""One deploy per repo@environment: the queue, locks and freezes, over in-memory ports."""

from __future__ import annotations

from datetime import timedelta

from roles.plan import ApprovalLevel
from roles.records import Actor, PlanStatus
from tests.flows.test_flows import ALICE, BOB, DAVE, TEAM, Loop


async def _approved(loop: Loop, text: str) -> str:
    await loop.say(text)
    await loop.run()
    record = await loop.plan()
    assert await loop.click(record, ALICE) == "Approved and signed."
    return record.plan.id


async def test_a_second_deploy_waits_for_the_first_and_starts_when_it_ends() -> None:
    loop = Loop()
    first = await _approved(loop, "deploy auth to staging")
    second = await _approved(loop, "deploy auth to staging again")
    await loop.run()
    assert len(loop.ci.dispatched) == 1 and loop.ci.dispatched[0]["plan_id"] == first
    told = [t for t in loop.notifier.texts() if "Queued behind" in t]
    assert told == [
        f"Queued behind {first} — 1 ahead. One deploy to staging runs at a time; "
        "this one starts when those before it end."
    ]
    assert (await loop.store.load(second)).status == PlanStatus.APPROVED  # type: ignore[union-attr]
    # The reconciler or a retried job asking again changes nothing and says nothing new.
    await loop.sophie.dispatch(second)
    assert len(loop.ci.dispatched) == 1 and len(loop.notifier.texts()) == 1
    # Another environment is not held up.
    await _approved(loop, "deploy the frontend to staging")
    await loop.run()
    assert len(loop.ci.dispatched) == 2
    loop.clock.advance(10)  # the first run ends …
    await loop.run()
    assert [d["plan_id"] for d in loop.ci.dispatched][-1] == second  # … and the next starts


async def test_a_lock_holds_deploys_until_unlocked() -> None:
    loop = Loop()
    refused = await loop.sophie.lock(Actor(TEAM, DAVE), "staging", "", "release testing")
    assert not refused.ok and "may not lock" in refused.text
    locked = await loop.sophie.lock(Actor(TEAM, BOB), "staging", "auth", "release testing")
    assert locked.ok
    again = await loop.sophie.lock(Actor(TEAM, ALICE), "staging", "auth", "")
    assert "already locked" in again.text
    plan_id = await _approved(loop, "deploy auth to staging")
    await loop.run()
    assert loop.ci.dispatched == []
    assert any("locked by <@U0BOBBY002> (release testing)" in t for t in loop.notifier.texts())
    unlocked = await loop.sophie.unlock(Actor(TEAM, ALICE), "staging", "auth")
    assert unlocked.ok and "next queued deploy starts" in unlocked.text
    await loop.run()
    assert [d["plan_id"] for d in loop.ci.dispatched] == [plan_id]
    assert not (await loop.sophie.unlock(Actor(TEAM, ALICE), "staging", "auth")).ok
    audited = [a[0] for a in loop.store.audit_log if a[0].startswith("deploys.")]
    assert audited == ["deploys.locked", "deploys.unlocked"]


def _freeze(effect: str, hours: float) -> dict[str, object]:
    start = Loop().clock()
    return {
        "id": "year-end",
        "environments": ["staging"],
        "reason": "year-end freeze",
        "start": (start - timedelta(hours=1)).isoformat(),
        "end": (start + timedelta(hours=hours)).isoformat(),
        "effect": effect,
    }


async def test_a_freeze_makes_deploys_wait_until_it_ends() -> None:
    loop = Loop(lambda d: d.update(deploys={"freezes": [_freeze("wait", 2)]}))
    plan_id = await _approved(loop, "deploy auth to staging")
    await loop.run()
    assert loop.ci.dispatched == []
    assert any("frozen (year-end freeze)" in t for t in loop.notifier.texts())
    loop.clock.advance(2 * 3600 + 5)
    await loop.run()
    assert [d["plan_id"] for d in loop.ci.dispatched] == [plan_id]


async def test_a_raising_freeze_raises_the_level() -> None:
    loop = Loop(lambda d: d.update(deploys={"freezes": [_freeze("raise", 2)]}))
    await loop.say("deploy auth to staging")
    await loop.run()
    record = await loop.plan()
    assert record.plan.approval.level == ApprovalLevel.SUPERVISION
    assert any(r.id == "deploys.freezes.year-end" for r in record.plan.approval.reasons)


async def test_a_slot_held_by_an_ended_plan_is_taken_over() -> None:
    loop = Loop()
    first = await _approved(loop, "deploy auth to staging")
    await loop.run()
    # The first run ended but its release was lost (a crash between the two writes).
    loop.store.plans[first].status = PlanStatus.FAILED
    second = await _approved(loop, "deploy auth to staging again")
    await loop.run()
    assert [d["plan_id"] for d in loop.ci.dispatched] == [first, second]
