"""A plan with change steps: implement → Δ checks the produced change → deploy that commit.

Over in-memory ports; the scripted CI answers implement runs with the report the
pipeline's implement job prints and compare with the change GitHub would list.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from roles import approvals, attestation
from roles.change_check import Change, ChangedFile
from roles.plan import Plan
from roles.records import Actor, DecisionRecord, PlanRecord, PlanStatus, ProducedChange
from tests.flows.test_flows import ALICE, BOB, CAROL, DAVE, TEAM, Loop

SEED = "Add caching to the user authentication system and deploy to staging"
BASE = "f" * 40  # the scripted CI's head sha: where the implement run started
COMMIT = "c" * 40


def _loop(model: bool = True) -> Loop:
    loop = Loop()
    loop.sophie.tuning = replace(loop.sophie.tuning, model_ready=model)
    return loop


def _patch(lines: list[str]) -> str:
    return f"@@ -0,0 +1,{len(lines)} @@\n" + "\n".join("+" + line for line in lines)


def _script(loop: Loop, plan_id: str, files: dict[str, list[str]], **report: Any) -> None:
    changed = tuple(
        ChangedFile(path=p, status="added", additions=len(ls), deletions=0, patch=_patch(ls))
        for p, ls in files.items()
    )
    loop.ci.changes[(BASE, COMMIT)] = Change("acme/auth-service", BASE, COMMIT, changed)
    fields: dict[str, Any] = {
        "branch": f"sophie/{plan_id}",
        "commit": COMMIT,
        "base": BASE,
        "pull_request": "https://github.com/acme/auth-service/pull/7",
        "files": len(files),
        "tests_command": "python -m pytest -q",
        "tests_passed": True,
        "tests_summary": "12 passed",
    }
    fields.update(report)
    loop.ci.change_report = ProducedChange(**fields)


async def _approved(loop: Loop, text: str = SEED, *people: str) -> PlanRecord:
    await loop.say(text)
    await loop.run()
    record = await loop.plan()
    for who in people or (ALICE,):
        await loop.click(await loop.plan(), who)
    return record


async def _runs(loop: Loop, rounds: int = 4) -> None:
    for _ in range(rounds):
        loop.clock.advance(10)
        await loop.run()


def _bundle(inputs: dict[str, str]) -> dict[str, Any]:
    url = inputs["bundle_url"]
    assert url.startswith("data:application/json;base64,")
    return dict(json.loads(base64.b64decode(url.split(",", 1)[1])))


async def _status(loop: Loop, plan_id: str) -> PlanStatus:
    record = await loop.store.load(plan_id)
    assert record is not None
    return record.status


async def test_the_seed_directive_is_implemented_checked_signed_and_deployed() -> None:
    loop = _loop()
    record = await _approved(loop)
    plan: Plan = record.plan
    assert plan.target.implement and plan.target.action == "deploy"
    _script(loop, plan.id, {"src/auth/cache.py": ["CACHE = {}"]})
    await _runs(loop)
    assert await _status(loop, plan.id) == PlanStatus.SUCCEEDED
    implement, deploy = loop.ci.dispatched
    assert implement["action"] == "implement" and "deploy_sha" not in implement
    assert loop.ci.refs == ["main", f"sophie/{plan.id}"]
    assert "change" not in _bundle(implement)
    # The deploy run builds the checked commit, with the signed change statement.
    assert deploy["action"] == "deploy" and deploy["deploy_sha"] == COMMIT
    assert implement["correlation_id"] == f"{plan.id}.1"
    assert deploy["correlation_id"] == f"{plan.id}.11"
    envelope = _bundle(deploy)["change"]
    opened = attestation.open_change_envelope(envelope, loop.sophie.signer)
    constitution = loop.sophie.constitution()
    assert (
        attestation.change_binding_problem(opened.statement, plan, constitution.digest_hex, COMMIT)
        == ""
    )
    assert [p.text for p in loop.notifier.of("change")] == ["checked"]
    audited = [a[0] for a in loop.store.audit_log if a[0].startswith("change.")]
    assert audited == ["change.checked"]
    final = await loop.store.load(plan.id)
    assert final is not None and final.run is not None and final.run.change is not None
    assert final.run.phase == "run" and final.run.change.file_list == [("src/auth/cache.py", 1, 0)]
    assert len(loop.notifier.of("result")) == 1


async def test_a_change_to_a_forbidden_path_is_refused_and_nothing_deploys() -> None:
    loop = _loop()
    record = await _approved(loop)
    _script(loop, record.plan.id, {".github/workflows/sophie-pipeline.yml": ["on: push"]})
    await _runs(loop)
    assert await _status(loop, record.plan.id) == PlanStatus.FAILED
    assert len(loop.ci.dispatched) == 1  # the implement run only
    assert [p.text for p in loop.notifier.of("change")] == ["refused"]
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.run is not None and final.run.change is not None
    assert ".github/workflows" in final.run.change.reason and "the change was refused" in final.note


async def test_failing_tests_stop_the_change() -> None:
    loop = _loop()
    record = await _approved(loop)
    _script(
        loop,
        record.plan.id,
        {"src/auth/cache.py": ["CACHE = {}"]},
        tests_passed=False,
        tests_summary="1 failed",
    )
    await _runs(loop)
    assert await _status(loop, record.plan.id) == PlanStatus.FAILED
    assert len(loop.ci.dispatched) == 1


async def test_a_job_that_names_another_base_or_branch_is_not_believed() -> None:
    for wrong in ({"base": "a" * 40}, {"branch": "main"}):
        loop = _loop()
        record = await _approved(loop)
        _script(loop, record.plan.id, {"src/auth/cache.py": ["x = 1"]}, **wrong)
        loop.ci.changes[("a" * 40, COMMIT)] = loop.ci.changes[(BASE, COMMIT)]
        await _runs(loop)
        assert await _status(loop, record.plan.id) == PlanStatus.FAILED
        assert len(loop.ci.dispatched) == 1
        audited = [a[0] for a in loop.store.audit_log if a[0].startswith("change.")]
        assert audited == ["change.refused"]  # audited like every other refusal


async def test_an_implement_job_that_fails_deploys_nothing_and_offers_no_rollback() -> None:
    loop = _loop()
    record = await _approved(loop)
    loop.ci.change_report = None  # the job failed: its reason, no report
    await _runs(loop)
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status == PlanStatus.FAILED
    assert len(loop.ci.dispatched) == 1
    assert final.run is not None and final.run.detail == loop.ci.implement_failure
    from handlers import blocks

    _, body = blocks.result(final)
    assert "Implementing the change failed" in body[0]["text"]["text"]
    assert not blocks.rollback_offered(final)


async def test_production_deploys_only_reviewed_code() -> None:
    loop = _loop()
    record = await _approved(loop, "Add caching to auth and deploy to production", ALICE, BOB)
    assert record.plan.target.environment == "production" and record.plan.target.implement
    _script(loop, record.plan.id, {"src/auth/cache.py": ["CACHE = {}"]})
    await _runs(loop)
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status == PlanStatus.REVIEW
    assert "only reviewed code" in final.note and len(loop.ci.dispatched) == 1
    assert [p.text for p in loop.notifier.of("change")] == ["checked"]
    # Merged after review (on the default branch): the same change deploys.
    loop2 = _loop()
    record2 = await _approved(loop2, "Add caching to auth and deploy to production", ALICE, BOB)
    _script(loop2, record2.plan.id, {"src/auth/cache.py": ["CACHE = {}"]})
    loop2.ci.merged.add(COMMIT)
    await _runs(loop2)
    assert await _status(loop2, record2.plan.id) == PlanStatus.SUCCEEDED
    assert loop2.ci.dispatched[-1]["deploy_sha"] == COMMIT


async def test_a_tampered_change_statement_stops_the_deploy_at_the_gate() -> None:
    loop = _loop()
    record = await _approved(loop)
    _script(loop, record.plan.id, {"src/auth/cache.py": ["CACHE = {}"]})
    loop.clock.advance(10)
    await loop.run()  # dispatch the implement run
    # Between Δ's check and the deploy dispatch, someone edits the stored statement.
    loop.clock.advance(loop.sophie.tuning.poll_seconds)
    ran = await loop.scheduler.run_due(loop.sophie, only={"track"})
    assert "track" in ran
    stored = loop.store.plans[record.plan.id]
    assert stored.status == PlanStatus.APPROVED and stored.run and stored.run.change
    envelope = dict(stored.run.change.statement or {})
    envelope["payload"] = base64.b64encode(b'{"forged": true}').decode()
    stored.run.change.statement = envelope
    await _runs(loop)
    assert len(loop.ci.dispatched) == 1
    assert await _status(loop, record.plan.id) == PlanStatus.STALE


async def test_without_a_model_the_change_steps_are_descriptive_and_the_ref_deploys() -> None:
    loop = _loop(model=False)
    record = await _approved(loop)
    assert not record.plan.target.implement
    warned = [w.message for w in record.plan.warnings if w.id == "implement.unavailable"]
    assert warned and "no model is configured" in warned[0] and "as it is" in warned[0]
    from handlers import blocks

    card = json.dumps(blocks.card(record))
    assert "cannot be implemented" in card and "describes only" in card
    await _runs(loop)
    (only,) = loop.ci.dispatched
    assert only["action"] == "deploy" and "deploy_sha" not in only
    assert await _status(loop, record.plan.id) == PlanStatus.SUCCEEDED


async def _held_for_review(loop: Loop) -> PlanRecord:
    record = await _approved(loop, "Add caching to auth and deploy to production", ALICE, BOB)
    _script(loop, record.plan.id, {"src/auth/cache.py": ["CACHE = {}"]})
    await _runs(loop)
    held = await loop.store.load(record.plan.id)
    assert held is not None and held.status == PlanStatus.REVIEW
    return held


async def test_the_second_card_approves_the_diff_at_the_plans_level() -> None:
    loop = _loop()
    held = await _held_for_review(loop)
    assert held.run is not None and held.run.change is not None
    change = held.run.change
    (card,) = loop.notifier.of("change_card")
    assert change.review_ts == card.text
    plan_id, digest, ts = held.plan.id, change.change_digest, change.review_ts

    async def press(who: str, on: str = ts, value: str = digest) -> str:
        reply = await loop.sophie.decide_change(plan_id, value, Actor(TEAM, who), "C0DEPLOYS1", on)
        return reply.text

    assert "not an approver" in await press(DAVE)
    assert "out of date" in await press(ALICE, value="0" * 64)
    assert "does not belong" in await press(ALICE, on="1700000000.999999")
    assert "still needed: 1 more approver" in await press(ALICE)
    assert "already" in await press(ALICE)
    assert len(loop.ci.dispatched) == 1  # nothing deploys on one approval
    assert await press(BOB) == "Approved and signed: the change deploys."
    await _runs(loop)
    assert await _status(loop, plan_id) == PlanStatus.SUCCEEDED
    deploy = loop.ci.dispatched[-1]
    assert deploy["action"] == "deploy" and deploy["deploy_sha"] == COMMIT
    assert loop.ci.refs[-1] == f"sophie/{plan_id}"
    # Two wrap-ups, two results: "held for review", then the deploy.
    assert [p.status for p in loop.notifier.of("result")] == ["review", "succeeded"]
    audited = [a[0] for a in loop.store.audit_log if a[0].startswith("change.")]
    assert audited == ["change.checked", "change.approved", "change.approved"]
    assert "not waiting for review" in await press(CAROL)  # the card takes no more


async def test_an_approval_of_a_diff_never_counts_as_an_approval_of_the_plan() -> None:
    loop = _loop()
    held = await _held_for_review(loop)
    assert held.run is not None and held.run.change is not None
    await loop.sophie.decide_change(
        held.plan.id,
        held.run.change.change_digest,
        Actor(TEAM, CAROL),
        "C0DEPLOYS1",
        held.run.change.review_ts,
    )
    (diff_decision,) = await loop.store.change_decisions(
        held.plan.id, held.run.change.change_digest
    )
    constitution = loop.sophie.constitution()
    replayed = approvals.tally(
        held.plan,
        [*held.decisions, diff_decision],
        constitution,
        loop.sophie.signer,
        loop.clock(),
    )
    assert not replayed.complete and "not a SOPHIE decision" in replayed.reason
    # …and a plan approval never counts as an approval of the diff.
    as_diff = approvals.tally(
        held.plan,
        held.decisions,
        constitution,
        loop.sophie.signer,
        loop.clock(),
        held.run.change.change_digest,
    )
    assert not as_diff.complete and "not a SOPHIE change decision" in as_diff.reason


async def test_the_gate_recounts_the_diff_approvals() -> None:
    loop = _loop()
    held = await _held_for_review(loop)
    assert held.run is not None and held.run.change is not None
    digest = held.run.change.change_digest
    for who in (ALICE, BOB):
        await loop.sophie.decide_change(
            held.plan.id, digest, Actor(TEAM, who), "C0DEPLOYS1", held.run.change.review_ts
        )
    # Someone edits a stored decision before the dispatch job runs: it no longer verifies.
    stored = loop.store.change_votes[(held.plan.id, digest)][BOB]
    forged = dict(stored.envelope)
    forged["signatures"] = [{"keyid": "x", "sig": "AAAA"}]
    loop.store.change_votes[(held.plan.id, digest)][BOB] = replace(stored, envelope=forged)
    await _runs(loop)
    assert len(loop.ci.dispatched) == 1
    assert await _status(loop, held.plan.id) == PlanStatus.STALE


async def test_a_second_card_lost_to_a_slack_outage_is_posted_when_the_job_is_retried() -> None:
    loop = _loop()
    record = await _approved(loop, "Add caching to auth and deploy to production", ALICE, BOB)
    _script(loop, record.plan.id, {"src/auth/cache.py": ["CACHE = {}"]})
    post = loop.notifier.post_change_card
    tries: list[int] = []

    async def flaky(held: PlanRecord, decisions: list[DecisionRecord]) -> str | None:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("Slack is down")
        return await post(held, decisions)

    setattr(loop.notifier, "post_change_card", flaky)  # noqa: B010 (a method, replaced)
    with pytest.raises(ConnectionError):
        await _runs(loop)
    assert await _status(loop, record.plan.id) == PlanStatus.REVIEW
    assert loop.notifier.of("change_card") == []
    await loop.sophie.track(record.plan.id)  # the queue runs the failed job again
    await loop.sophie.track(record.plan.id)  # …and a duplicate changes nothing
    assert len(loop.notifier.of("change_card")) == 1
    assert len(loop.notifier.of("result")) == 1
