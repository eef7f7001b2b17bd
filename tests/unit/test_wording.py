"""The wording defects seen in the captured payloads, each pinned (issue 13, part 5)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from handlers import blocks, events
from roles.plan import ApprovalLevel
from roles.records import Actor, DecisionRecord, PlanRecord, PlanStatus, RunInfo, Thread
from tests.unit.test_change_blocks import _plan

ALICE, DAVE, BOB = "U0ALICE001", "U0DAVE0004", "U0BOBBY002"


def _record(status: PlanStatus, note: str = "", approvers: tuple[str, ...] = ()) -> PlanRecord:
    decided = [
        DecisionRecord(Actor("T1", who), "approve", datetime(2026, 11, 24, tzinfo=UTC), {})
        for who in approvers
    ]
    return PlanRecord(
        plan=_plan(), status=status, thread=Thread("C1", "1.1"), decisions=decided, note=note
    )


def _shown(record: PlanRecord) -> str:
    return json.dumps(blocks.card(record), ensure_ascii=False)


def test_changes_requested_names_who_asked_not_the_earlier_approver() -> None:
    record = _record(
        PlanStatus.SUPERSEDED, f"changes requested by {BOB}: use a shorter TTL", (ALICE,)
    )
    shown = _shown(record)
    assert f"superseded by a revised plan* by <@{BOB}>" in shown
    assert f"<@{ALICE}>" not in shown and f"by {BOB}" not in shown  # no raw id
    assert "use a shorter TTL" in shown


def test_a_failed_run_is_not_failed_by_its_approver() -> None:
    shown = _shown(_record(PlanStatus.FAILED, approvers=(ALICE,)))
    assert "the run failed* by" not in shown and f"Approved by <@{ALICE}>" in shown


def test_a_dry_run_does_not_celebrate() -> None:
    record = _record(PlanStatus.SUCCEEDED, approvers=(ALICE,))
    record.run = RunInfo(dry_run=True, status="completed", conclusion="dry_run")
    shown = _shown(record)
    assert "🎉" not in shown and "dry run: nothing was deployed" in shown


def test_an_autonomous_card_has_no_veto_it_could_not_honour() -> None:
    record = _record(PlanStatus.PENDING)
    plan = record.plan
    record.plan = plan.model_copy(
        update={"approval": plan.approval.model_copy(update={"level": ApprovalLevel.AUTONOMOUS})}
    )
    shown = _shown(record)
    assert blocks.VETO not in shown and "Runs at once" in shown


def test_levels_are_said_in_plain_words() -> None:
    reasons = " ".join(r.message for r in _plan().approval.reasons)
    assert "requires" not in reasons and "needs" in reasons


def test_the_plan_modal_never_cuts_a_line_across_two_code_blocks() -> None:
    plan = _plan()
    steps = [
        s.model_copy(update={"description": f"{n} " + "x" * 900})
        for n, s in enumerate(plan.steps * 3)
    ]
    long = plan.model_copy(update={"steps": steps})
    modal = blocks.plan_modal(long)
    pieces = [b["text"]["text"].strip("`") for b in modal["blocks"] if b["type"] == "section"]
    assert len(pieces) > 1
    for line in long.to_yaml().splitlines():
        assert any(line in piece for piece in pieces), line[:80]
    assert long.digest in json.dumps(modal)


def test_an_empty_mention_is_answered_with_how_to_ask() -> None:
    body = {
        "event": {
            "type": "app_mention",
            "user": DAVE,
            "channel": "C1",
            "ts": "1.5",
            "text": "<@UBOT>  ",
        }
    }
    assert events.empty_mention(body) == (Thread("C1", "1.5"), DAVE)
    said = {**body, "event": {**body["event"], "text": "<@UBOT> deploy auth"}}
    assert events.empty_mention(said) is None
    assert events.directive_from_event(body, "mention") is None


def _finished(ok: bool) -> PlanRecord:
    record = _record(PlanStatus.SUCCEEDED if ok else PlanStatus.FAILED, approvers=(ALICE,))
    record.run = RunInfo(
        dry_run=False,
        status="completed",
        conclusion="success" if ok else "failure",
        run_id=7,
        html_url="https://github.com/acme/auth-service/actions/runs/7",
        head_sha="b" * 40,
        failing_job=None if ok else "Deploy to staging",
        failing_step=None if ok else "Deploy",
        log_url=None if ok else "https://github.com/acme/auth-service/actions/runs/7/job/1",
        rollback_to="main@" + "a" * 12,
    )
    return record


def test_a_failure_leads_with_where_it_failed_and_rollback_says_what_it_deploys() -> None:
    from tests.fakes import blockkit

    text, body = blocks.result(_finished(ok=False))
    assert blockkit.message_problems(text, body) == []
    lines = body[0]["text"]["text"].splitlines()
    assert lines[0].startswith("❌ *failed*") and lines[1].startswith("*Failed at:* Deploy to")
    assert "*Rollback would deploy:* `main@aaaaaaaaaaaa`" in lines
    (button,) = body[1]["elements"]
    assert button["action_id"] == blocks.ROLLBACK and "confirm" in button
    assert "`main@aaaaaaaaaaaa`" in button["confirm"]["text"]["text"]
    _, good = blocks.result(_finished(ok=True))
    assert "Failed at" not in json.dumps(good) and "Rollback would deploy" in json.dumps(good)
