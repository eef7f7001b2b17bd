"""Ψ: outcomes kept once with their timings, trust that moves with outcomes and grants
autonomy, rollbacks that lower the trust of what they undid, precedent on the card."""

from __future__ import annotations

from dataclasses import replace

from roles import memory, precedent
from roles.flows import remembering
from roles.flows.planning import card_context
from roles.plan import ApprovalLevel
from roles.records import Actor, PlanStatus
from tests.flows.test_flows import ALICE, BOB, CAROL, TEAM, Loop

SEED = "Add caching to the auth service and deploy to staging"
REPO_ENV = memory.trust_key("acme/auth-service", "staging")


async def _deployed(loop: Loop, text: str = SEED, who: str = ALICE) -> str:
    await loop.say(text)
    await loop.run()
    record = await loop.plan()
    assert await loop.click(record, who) == "Approved and signed."
    await loop.run()
    loop.clock.advance(10)
    await loop.run()
    return record.plan.id


async def test_an_outcome_is_kept_once_with_its_timings_and_trust_moves_once() -> None:
    loop = Loop()
    plan_id = await _deployed(loop)
    (outcome,) = loop.store.outcomes.values()
    assert outcome.plan_id == plan_id and outcome.result == "succeeded"
    assert outcome.approvers == [f"{TEAM}/{ALICE}"] and not outcome.autonomous
    assert 0 < outcome.dispatched_at < outcome.ended_at
    assert outcome.directive_at <= outcome.dispatched_at and outcome.decided_at > 0
    assert outcome.lead_seconds is not None and outcome.lead_seconds > 0
    rules = loop.sophie.constitution().trust
    after = memory.moved(rules.initial, "success", rules)
    kept = loop.store.trusts_kept
    assert kept[REPO_ENV] == after
    assert kept[memory.approver_key(f"{TEAM}/{ALICE}")] == after
    assert kept[memory.requester_key(f"{TEAM}/U0DAVE0004")] == after
    # A retried job, a late webhook, another replica: nothing moves twice.
    assert await remembering.ended(loop.sophie, plan_id) is None
    assert loop.store.trusts_kept == kept and len(loop.store.outcomes) == 1


async def test_a_veto_is_an_outcome_that_moves_no_trust() -> None:
    loop = Loop()
    await loop.say(SEED)
    await loop.run()
    record = await loop.plan()
    await loop.sophie.decide(record.plan.id, record.plan.digest, _actor(BOB), "veto", "no")
    await loop.run()
    (outcome,) = loop.store.outcomes.values()
    assert outcome.result == "vetoed" and loop.store.trusts_kept == {}


def _actor(user: str) -> Actor:
    return Actor(TEAM, user)


async def test_a_rollback_lowers_the_trust_of_what_it_undid_and_restores_the_environment() -> None:
    loop = Loop()
    loop.ci.distinct_shas = True
    good = await _deployed(loop)
    bad = await _deployed(loop, "Add caching to the auth service again and deploy to staging")
    good_sha = loop.store.outcomes[good].sha
    loop.ci.history[("acme/auth-service", "staging")] = [(good_sha, "main")]
    before = dict(loop.store.trusts_kept)
    await loop.say("Roll back auth in staging", who=CAROL, kind="rollback")
    await loop.run()
    loop.clock.advance(10)
    await loop.run()
    rollbacks = [o for o in loop.store.outcomes.values() if o.action == "rollback"]
    assert [o.result for o in rollbacks] == ["succeeded"]
    undone = loop.store.outcomes[bad]
    assert undone.result == "rolled_back" and undone.restored_at == rollbacks[0].ended_at
    assert loop.store.outcomes[good].result == "succeeded"
    rules = loop.sophie.constitution().trust
    # The approver of the undone deploy loses rollback_delta; CAROL (who rolled back)
    # gains for her successful rollback.
    alice = memory.approver_key(f"{TEAM}/{ALICE}")
    assert loop.store.trusts_kept[alice] == memory.moved(before[alice], "rollback", rules)


async def test_autonomy_is_refused_below_the_trust_floor_and_granted_above_it() -> None:
    def autonomous_dev(doc: dict[str, object]) -> None:
        envs = doc["environments"]
        assert isinstance(envs, dict)
        envs["development"]["approval"] = "autonomous"

    loop = Loop(autonomous_dev)
    await loop.say("deploy auth to development")
    await loop.run()
    record = await loop.plan()
    assert record.plan.approval.level == ApprovalLevel.NOTIFICATION
    (hit,) = [r for r in record.plan.approval.reasons if r.id == "trust.below-floor"]
    assert "below 0.80 for autonomy" in hit.message
    # Earned trust (every relevant score at the floor) keeps the environment's level.
    for key in memory.relevant_keys("acme/auth-service", "development", f"{TEAM}/U0DAVE0004", []):
        loop.store.trusts_kept[key] = 0.9
    await loop.say("deploy auth to development now")
    await loop.run()
    assert (await loop.plan()).plan.approval.level == ApprovalLevel.AUTONOMOUS


async def test_precedent_appears_on_the_second_similar_plan() -> None:
    loop = Loop()
    first = await _deployed(loop)
    await loop.say("Add caching to the auth service sessions and deploy to staging")
    await loop.run()
    record = await loop.plan()
    context = await card_context(loop.sophie, record)
    assert context.precedent is not None
    assert [o.plan_id for o in context.precedent.similar] == [first]
    assert context.precedent.counts() == {"succeeded": 1}
    # An unrelated change finds no precedent.
    unrelated = replace(
        precedent.Probe.of(record.plan),
        words=frozenset({"frontend", "colours"}),
        steps=frozenset(),
        intent="fix",
    )
    history = list(loop.store.outcomes.values())
    assert precedent.find("acme/auth-service", "staging", unrelated, history, 0.0).similar == []
    assert record.status == PlanStatus.PENDING
