"""The requester hears what became of their plan (issue 13): here, a veto and its reason."""

from __future__ import annotations

from roles.records import Actor
from tests.flows.test_flows import ALICE, BOB, DAVE, TEAM, Loop


async def test_the_requester_is_told_of_a_veto_and_why() -> None:
    loop = Loop()
    await loop.say("deploy auth to staging", who=DAVE)
    await loop.run()
    record = await loop.plan()
    reply = await loop.sophie.decide(
        record.plan.id, record.plan.digest, Actor(TEAM, BOB, "bob"), "veto", "incident open"
    )
    assert reply.ok
    (told,) = [p for p in loop.notifier.of("ephemeral")]
    assert told.text == (
        f"Your plan {record.plan.id} was vetoed by bob: incident open. Nothing will run."
    )


async def test_a_deploy_result_knows_what_rollback_would_deploy() -> None:
    loop = Loop()
    loop.ci.history[("acme/auth-service", "staging")] = [("c" * 40, "main")]
    await loop.say("deploy auth to staging", who=DAVE)
    await loop.run()
    record = await loop.plan()
    await loop.click(record, ALICE)
    await loop.run()
    loop.clock.advance(10)
    await loop.run()
    done = await loop.store.load(record.plan.id)
    assert done is not None and done.run is not None
    assert done.run.rollback_to == "main@cccccccccccc"
