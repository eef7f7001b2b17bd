"""The change message, the implement result and the honest card, within Block Kit's limits."""

from __future__ import annotations

import asyncio
import json

from handlers import blocks
from roles.constitution import load_constitution
from roles.plan import Plan
from roles.records import PlanRecord, PlanStatus, ProducedChange, RunInfo, Thread
from tests.fakes import blockkit
from tests.unit.test_signatures import ROOT, make_plan

PLAN: list[Plan] = []


def _plan() -> Plan:
    if not PLAN:
        constitution = load_constitution(ROOT / "constitution.yml")
        PLAN.append(asyncio.run(make_plan(constitution, "Add caching to auth and deploy")))
    return PLAN[0]


def _record(change: ProducedChange | None, phase: str = "run", ok: bool = True) -> PlanRecord:
    run = RunInfo(
        dry_run=False,
        status="completed",
        conclusion="success" if ok else "failure",
        run_id=4,
        html_url="https://github.com/acme/auth-service/actions/runs/4",
        phase=phase,  # type: ignore[arg-type]
        change=change,
        detail="" if ok else "the tests failed: *1 failed* <!channel>",
    )
    return PlanRecord(
        plan=_plan(),
        status=PlanStatus.SUCCEEDED if ok else PlanStatus.FAILED,
        thread=Thread("C1", "1.1"),
        run=run,
    )


def _change(**kw: object) -> ProducedChange:
    fields: dict[str, object] = {
        "branch": "sophie/plan_x",
        "commit": "c" * 40,
        "base": "b" * 40,
        "pull_request": "https://github.com/acme/auth-service/pull/7",
        "files": 300,
        "additions": 10_000,
        "deletions": 9,
        "tests_command": "make test " + "x" * 500,
        "tests_passed": True,
        "tests_summary": "<!here> " + "y" * 900,
        "file_list": [(f"src/{'d/' * 60}f{i}.py", i, 0) for i in range(300)],
    }
    fields.update(kw)
    return ProducedChange(**fields)  # type: ignore[arg-type]


def test_the_change_message_fits_block_kit_and_escapes_what_the_job_reported() -> None:
    for verdict, reason in (("checked", ""), ("refused", "touches `.github/` <@U1> " * 80)):
        text, body = blocks.change(_record(_change(verdict=verdict, reason=reason)))
        assert blockkit.message_problems(text, body) == []
        shown = json.dumps(body)
        assert "<!here>" not in shown and "<@U1>" not in shown
        assert "and 285 more" in shown
        assert ("Nothing built from this commit deploys" in shown) == (verdict == "refused")


def test_an_implement_run_result_says_nothing_was_deployed() -> None:
    failed = _record(None, phase="implement", ok=False)
    text, body = blocks.result(failed)
    assert blockkit.message_problems(text, body) == []
    shown = json.dumps(body)
    assert "Implementing the change failed" in shown and "Nothing was deployed" in shown
    assert "<!channel>" not in shown and not blocks.rollback_offered(failed)
    held = _record(_change(), phase="implement")
    held.note = "This environment deploys only reviewed code: merge the pull request"
    text, body = blocks.result(held)
    assert "Not deployed" in json.dumps(body) and blockkit.message_problems(text, body) == []


def test_a_deploy_of_a_change_names_its_commit() -> None:
    record = _record(_change())
    _, body = blocks.result(record)
    assert "c" * 12 in json.dumps(body) and "pull request" in json.dumps(body)


def test_the_second_card_asks_for_the_diff_and_stops_asking_once_it_is_approved() -> None:
    record = _record(_change(change_digest="d" * 64), phase="implement")
    record.status = PlanStatus.REVIEW
    text, body = blocks.change_card(record, [])
    assert blockkit.message_problems(text, body) == []
    (button,) = [e for b in body if b["type"] == "actions" for e in b["elements"]]
    assert button["action_id"] == blocks.APPROVE_CHANGE
    assert button["value"] == f"{record.plan.id}|{'d' * 64}"
    record.status = PlanStatus.APPROVED
    _, body = blocks.change_card(record, [])
    assert not [b for b in body if b["type"] == "actions"]
