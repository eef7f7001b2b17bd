"""Flow tests over in-memory ports: every branch of the loop, in milliseconds, no sleeps.

The same flows run in production over Redis, arq, Slack and GitHub; here they run
over roles/testing.py's ports, which keep the store's atomic rules and the queue's
once-per-key rule, with a manual clock and scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from nacl.signing import SigningKey

from bot.signer import KeyRing
from roles import jobs
from roles.constitution import parse_constitution
from roles.flows.intake import EventInFlight, Intake
from roles.offline_planner import OfflinePlanner
from roles.plan import ApprovalLevel
from roles.records import Actor, Directive, PlanRecord, PlanStatus, Thread
from roles.sophie import Sophie
from roles.testing import (
    ManualClock,
    ManualScheduler,
    MemoryStore,
    RecordingNotifier,
    ScriptedCI,
    StaticDirectory,
    constant,
)

ROOT = Path(__file__).resolve().parents[2]
TEAM = "T0SOPHIE01"
ALICE, BOB, CAROL, DAVE = "U0ALICE001", "U0BOBBY002", "U0CAROL003", "U0DAVE0004"
GOOD = "a" * 40
Edit = Callable[[dict[str, Any]], None]


class Loop:
    """SOPHIE over in-memory ports, and a person-shaped way to drive it."""

    def __init__(self, edit: Edit | None = None) -> None:
        doc = yaml.safe_load((ROOT / "constitution.yml").read_text())
        doc.pop("policies_dir")
        if edit:
            edit(doc)
        self.constitution = parse_constitution(yaml.safe_dump(doc))
        self.clock = ManualClock()
        self.store = MemoryStore(self.clock)
        self.scheduler = ManualScheduler(self.clock)
        self.notifier = RecordingNotifier()
        self.ci = ScriptedCI()
        self.sophie = Sophie(
            constitution=constant(self.constitution),
            planner=OfflinePlanner(),
            store=self.store,
            signer=KeyRing(SigningKey.generate(), {}),
            ci=self.ci,
            notifier=self.notifier,
            scheduler=self.scheduler,
            directory=StaticDirectory({"S0SRETEAM1": {"U0ERIN0005"}}),
            clock=self.clock,
        )
        self.events = 0

    async def say(self, text: str, who: str = DAVE, kind: str = "directive") -> Intake:
        self.events += 1
        directive = Directive(
            text=text,
            requester=Actor(TEAM, who),
            thread=Thread("C0DEPLOYS1", f"1700000000.{self.events:06d}"),
            source="mention",
            event_id=f"Ev{self.events}",
            kind=kind,  # type: ignore[arg-type]
        )
        return await self.sophie.receive(directive)

    async def run(self) -> list[str]:
        return await self.scheduler.run_due(self.sophie)

    async def plan(self) -> PlanRecord:
        (card,) = self.notifier.of("card")[-1:]
        record = await self.store.load(card.plan_id)
        assert record is not None
        return record

    async def click(self, record: PlanRecord, who: str, decision: str = "approve") -> str:
        reply = await self.sophie.decide(
            record.plan.id,
            record.plan.digest,
            Actor(TEAM, who),
            decision,  # type: ignore[arg-type]
        )
        return reply.text


async def test_seed_directive_to_a_successful_run() -> None:
    loop = Loop()
    assert await loop.say("Add caching to the auth service and deploy to staging") == (
        Intake.ACCEPTED
    )
    assert await loop.run() == ["plan"]
    record = await loop.plan()
    assert record.status == PlanStatus.PENDING
    assert record.plan.approval.level == ApprovalLevel.APPROVAL
    assert "not an approver" in await loop.click(record, DAVE)
    assert await loop.click(record, ALICE) == "Approved and signed."
    assert "dispatch" in await loop.run()
    loop.clock.advance(10)  # the first look at the run, one poll interval later
    assert "track" in await loop.run()
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status == PlanStatus.SUCCEEDED
    assert len(loop.ci.dispatched) == 1 and loop.ci.dispatched[0]["action"] == "deploy"
    assert len(loop.notifier.of("result")) == 1


async def test_a_duplicate_event_and_a_queue_outage() -> None:
    loop = Loop()
    loop.scheduler.failures = 1
    with pytest.raises(ConnectionError):
        await loop.say("deploy auth to staging")
    # The claim was released, so Slack's retry of the same event is accepted once.
    loop.events -= 1
    assert await loop.say("deploy auth to staging") == Intake.ACCEPTED
    loop.events -= 1
    assert await loop.say("deploy auth to staging") == Intake.DUPLICATE
    assert loop.scheduler.names() == ["plan"]


async def test_a_claim_left_pending_asks_slack_to_try_again() -> None:
    loop = Loop()
    # A delivery claimed the event and died before queuing it (and before releasing it).
    loop.store.claims["event:Ev1"] = "pending"
    with pytest.raises(EventInFlight):
        await loop.say("deploy auth to staging")
    loop.store.claims.pop("event:Ev1")  # the pending claim expires
    loop.events -= 1
    assert await loop.say("deploy auth to staging") == Intake.ACCEPTED


async def test_rate_limits_count_per_person() -> None:
    loop = Loop(lambda d: d.update(rate_limits={"per_user": 2, "per_channel": 10}))
    outcomes = [await loop.say(f"deploy auth to staging {n}") for n in range(4)]
    assert outcomes == [Intake.ACCEPTED] * 2 + [Intake.RATE_LIMITED] * 2
    assert await loop.say("deploy auth to staging", who=CAROL) == Intake.ACCEPTED
    loop.clock.advance(61)
    assert await loop.say("deploy auth to staging 5") == Intake.ACCEPTED


async def test_notification_runs_after_its_window_unless_vetoed() -> None:
    loop = Loop()
    await loop.say("deploy auth to development")
    await loop.run()
    record = await loop.plan()
    assert record.plan.approval.level == ApprovalLevel.NOTIFICATION
    assert await loop.run() == []  # the window is open
    loop.clock.advance(121)
    assert "veto_window" in await loop.run()
    assert len(loop.ci.dispatched) == 1
    # A second plan, vetoed inside its window, never runs.
    await loop.say("deploy auth to development again")
    await loop.run()
    second = await loop.plan()
    assert "Vetoed" in await loop.click(second, ALICE, "veto")
    loop.clock.advance(121)
    await loop.run()
    assert len(loop.ci.dispatched) == 1


async def test_supervision_needs_two_people_and_the_groups() -> None:
    loop = Loop()
    await loop.say("deploy auth to production")
    await loop.run()
    record = await loop.plan()
    assert record.plan.approval.quorum == 2
    assert "more approvals" in await loop.click(record, ALICE)
    assert "already decided" in await loop.click(await loop.plan(), ALICE)
    assert await loop.click(await loop.plan(), BOB) == "Approved and signed."
    await loop.run()
    assert len(loop.ci.dispatched) == 1


async def test_a_stranger_and_another_workspace_are_refused() -> None:
    loop = Loop()
    await loop.say("deploy auth to staging")
    await loop.run()
    record = await loop.plan()
    assert "not an approver" in await loop.click(record, "U0MALLORY9")
    reply = await loop.sophie.decide(
        record.plan.id, record.plan.digest, Actor("T0OTHERORG", ALICE), "approve"
    )
    assert "another Slack workspace" in reply.text
    partial = await loop.sophie.decide(
        record.plan.id, record.plan.digest[:16], Actor(TEAM, ALICE), "approve"
    )
    assert "out of date" in partial.text
    refused = [a for a in loop.store.audit_log if a[0] == "decision.refused"]
    assert len(refused) == 2


async def test_dispatch_looks_before_it_retries_and_reports_refusals() -> None:
    loop = Loop()
    loop.ci.failures = ["5xx", "429"]
    await loop.say("deploy auth to staging")
    await loop.run()
    await loop.click(await loop.plan(), ALICE)
    await loop.run()
    loop.clock.advance(11)  # the re-check after an uncertain dispatch
    await loop.run()
    loop.clock.advance(50)  # past the settle time: nothing was found, dispatch again
    await loop.run()
    loop.clock.advance(2)  # the rate limit's retry-after
    await loop.run()
    assert len(loop.ci.dispatched) == 1
    texts = " ".join(loop.notifier.texts())
    assert "did not confirm" in texts and "rate limit" in texts
    loop.clock.advance(10)  # the run ends and frees staging for the next deploy
    await loop.run()
    # A refusal (4xx) ends in the thread, not in silence.
    loop.ci.failures = ["4xx"]
    await loop.say("deploy auth to staging once more")
    await loop.run()
    await loop.click(await loop.plan(), ALICE)
    await loop.run()
    assert (await loop.plan()).status == PlanStatus.ERROR
    assert "Dispatch failed" in loop.notifier.texts()[-1]


async def test_the_dispatch_gate_refuses_a_changed_constitution() -> None:
    loop = Loop()
    await loop.say("deploy auth to staging")
    await loop.run()
    await loop.click(await loop.plan(), ALICE)
    loop.sophie.constitution = constant(
        loop.constitution.model_copy(update={"version": loop.constitution.version + 1})
    )
    await loop.run()
    assert (await loop.plan()).status == PlanStatus.STALE
    assert loop.ci.dispatched == []


async def test_expiry_voids_a_pending_plan() -> None:
    loop = Loop()
    await loop.say("deploy auth to production")
    await loop.run()
    record = await loop.plan()
    await loop.click(record, ALICE)
    assert await loop.run() == ["card"]
    loop.clock.advance(record.plan.approval.ttl_seconds - 3000)
    assert await loop.run() == ["remind"]
    loop.clock.advance(3001)
    assert await loop.run() == ["expire"]
    assert (await loop.plan()).status == PlanStatus.EXPIRED
    assert "expired" in await loop.click(await loop.plan(), BOB)


async def test_rollback_is_a_command_for_the_people_the_constitution_names() -> None:
    loop = Loop(lambda d: d["environments"]["staging"].update(rollback_by={"users": [CAROL]}))
    loop.ci.history[("acme/auth-service", "staging")] = [(GOOD, "main")]
    # The word does nothing special.
    await loop.say("roll back staging")
    await loop.run()
    assert (await loop.plan()).plan.target.action == "deploy"
    # The command: refused for an approver who is not in rollback_by …
    await loop.say("Roll back auth in staging", who=ALICE, kind="rollback")
    await loop.run()
    assert "Rollback refused" in loop.notifier.texts()[-1]
    # … and run (autonomously, by the rollback rule) for the one who is.
    await loop.say("Roll back auth in staging", who=CAROL, kind="rollback")
    await loop.run()
    (inputs,) = loop.ci.dispatched
    assert inputs["action"] == "rollback" and inputs["deploy_sha"] == GOOD
    record = await loop.plan()
    assert record.plan.approval.reasons[0].id == "environments.staging.rollback_approval"


async def test_every_job_payload_is_in_the_table() -> None:
    with pytest.raises(jobs.BadJob):
        jobs.parse("dispatch", {})
    with pytest.raises(jobs.BadJob):
        jobs.parse("format_disk", {"plan_id": "x"})
    loop = Loop()
    with pytest.raises(jobs.BadJob):
        await loop.scheduler.enqueue("plan", "k", {"directive": {"text": "x"}})


async def test_an_enterprise_directive_binds_its_decisions_to_the_org() -> None:
    loop = Loop()
    directive = Directive(
        text="deploy auth to staging",
        requester=Actor(TEAM, DAVE, enterprise_id="E0ACMECORP"),
        thread=Thread("C0DEPLOYS1", "1700000000.999999"),
        source="mention",
        event_id="EvOrg",
    )
    await loop.sophie.receive(directive)
    await loop.run()
    record = await loop.plan()
    assert record.plan.requester.enterprise_id == "E0ACMECORP"
    elsewhere = Actor(TEAM, ALICE, enterprise_id="E0OTHERORG")
    reply = await loop.sophie.decide(record.plan.id, record.plan.digest, elsewhere, "approve")
    assert "another Slack workspace" in reply.text
    same = Actor(TEAM, ALICE, enterprise_id="E0ACMECORP")
    reply = await loop.sophie.decide(record.plan.id, record.plan.digest, same, "approve")
    assert reply.text == "Approved and signed."
