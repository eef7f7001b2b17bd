"""The kernel that decides what runs: tables over wording, request kinds and model drafts.

Whatever the directive says and whatever a model writes, the workflow, action, ref,
sha, environment and artifacts come from the constitution and the kind of request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from roles import diff_engine, integrator, navigator, what_runs
from roles.constitution import Constitution, load_constitution, parse_constitution
from roles.draft import DraftInput, DraftStep, PlanDraft
from roles.offline_planner import offline_draft
from roles.plan import Action, ApprovalLevel, Plan
from roles.ports import Proposal
from roles.records import Actor

ROOT = Path(__file__).resolve().parents[2]
GOOD = "a" * 40


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


def _plan(
    constitution: Constitution,
    text: str,
    *,
    kind: str = "directive",
    draft: PlanDraft | None = None,
    rollback_to: tuple[str, str] | None = None,
) -> tuple[Plan, diff_engine.Verdict]:
    reading = navigator.interpret(text, constitution, kind=kind)  # type: ignore[arg-type]
    draft = draft or offline_draft(reading)
    verdict = diff_engine.evaluate(draft, reading, constitution, 0.75, rollback_to=rollback_to)
    proposal = Proposal(draft=draft, planner="offline", models=["m"], confidence=0.75)
    plan = integrator.assemble(
        integrator.plan_id_for(text + kind),
        datetime(2026, 11, 24, tzinfo=UTC),
        reading,
        Actor("T1", "U0DAVE0004"),
        proposal,
        verdict,
        constitution,
    )
    return plan, verdict


@pytest.mark.parametrize(
    ("text", "env", "level"),
    [
        # Wording that used to become a rollback (and a lower level) is an ordinary change.
        ("Add an undo button to the login page and deploy to staging", "staging", "approval"),
        ("revert the rate limit change in production", "production", "supervision"),
        ("make the production deploy rollback-safe", "production", "supervision"),
        ("roll back the feature flag in staging", "staging", "approval"),
        ("Undo yesterday's change and ship to prod", "production", "supervision"),
    ],
)
def test_rollback_words_never_plan_a_rollback(
    constitution: Constitution, text: str, env: str, level: str
) -> None:
    plan, _ = _plan(constitution, text)
    assert plan.target.action == "deploy" and plan.target.sha == ""
    assert plan.target.environment == env
    assert plan.approval.level.rank >= ApprovalLevel(level).rank
    assert not any(r.id.endswith("rollback_approval") for r in plan.approval.reasons)
    inputs = integrator.workflow_inputs(plan, [], None)
    assert inputs["action"] == "deploy" and "deploy_sha" not in inputs


def test_only_the_rollback_command_plans_a_rollback(constitution: Constitution) -> None:
    plan, verdict = _plan(
        constitution, "Roll back auth in staging", kind="rollback", rollback_to=(GOOD, "main")
    )
    assert verdict.allowed, verdict.denials
    assert (plan.target.action, plan.target.sha, plan.artifacts) == ("rollback", GOOD, [])
    assert plan.approval.reasons[0].id == "environments.staging.rollback_approval"
    assert integrator.workflow_inputs(plan, [], None)["deploy_sha"] == GOOD
    # Without a deployment to restore, nothing runs.
    _, empty = _plan(constitution, "Roll back auth in staging", kind="rollback")
    assert any(d.id == "rollback.no-target" for d in empty.denials)


def _obedient(draft: PlanDraft, *extra: DraftStep) -> PlanDraft:
    return draft.model_copy(update={"steps": [*draft.steps, *extra]})


def _step(action: Action, **inputs: str) -> DraftStep:
    return DraftStep(
        action=action,
        description="as the directive said",
        inputs=[DraftInput(name=k, value=v) for k, v in inputs.items()],
    )


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        (_step(Action.ROLLBACK, sha=GOOD, environment="staging"), "steps.action-not-requested"),
        (_step(Action.DEPLOY, environment="production"), "steps.input-invalid"),
        (_step(Action.DEPLOY, environment="staging", deploy_sha=GOOD), "steps.input-unknown"),
        (_step(Action.BUILD, ref="evil-branch"), "steps.input-invalid"),
        (_step(Action.BUILD_ARTIFACT, format="exe"), "steps.input-invalid"),
        (_step(Action.NOTIFY, channel="#general"), "steps.input-unknown"),
        (_step(Action.DEPLOY, strategy="yolo"), "steps.input-invalid"),
    ],
)
def test_model_written_steps_never_choose_what_runs(
    constitution: Constitution, extra: DraftStep, rule: str
) -> None:
    reading = navigator.interpret("Add caching to auth and deploy to staging", constitution)
    draft = _obedient(offline_draft(reading), extra)
    plan, verdict = _plan(constitution, reading.text, draft=draft)
    assert any(d.id == rule for d in verdict.denials), verdict.denials
    # Refused with the reason (the plan is blocked), and still nothing it asked for runs.
    assert not verdict.allowed
    assert (plan.target.action, plan.target.sha, plan.target.environment) == (
        "deploy",
        "",
        "staging",
    )


def test_model_artifacts_outside_the_list_are_refused(constitution: Constitution) -> None:
    reading = navigator.interpret("Add caching to auth and deploy to staging", constitution)
    draft = offline_draft(reading).model_copy(update={"artifacts": ["exe", "docker"]})
    plan, verdict = _plan(constitution, reading.text, draft=draft)
    assert any("'exe'" in d.message for d in verdict.denials)
    assert "exe" not in plan.artifacts


def test_a_build_request_does_not_deploy(constitution: Constitution) -> None:
    plan, verdict = _plan(constitution, "Build the .deb package of auth")
    assert verdict.allowed and plan.target.action == "build"
    # A model that adds a deploy to a build request is refused.
    reading = navigator.interpret("Build the .deb package of auth", constitution)
    draft = _obedient(offline_draft(reading), _step(Action.DEPLOY, environment="staging"))
    _, sneaky = _plan(constitution, reading.text, draft=draft)
    assert any(d.id == "steps.action-not-requested" for d in sneaky.denials)


def test_refs_are_the_constitutions(constitution: Constitution) -> None:
    repo = constitution.repos[0]
    assert what_runs.ref_allowed(repo, "main")
    assert not what_runs.ref_allowed(repo, "feature/x")
    text = (
        (ROOT / "constitution.yml")
        .read_text()
        .replace("    default_ref: main\n", "    default_ref: main\n    refs: ['release/*']\n", 1)
    )
    wider = parse_constitution(text).repos[0]
    assert what_runs.ref_allowed(wider, "release/2.1") and not what_runs.ref_allowed(wider, "dev")
    # A rollback to a deployment made from a ref the constitution does not allow is refused.
    _, verdict = _plan(constitution, "Roll back auth", kind="rollback", rollback_to=(GOOD, "dev"))
    assert any(d.id == "target.ref-not-allowed" for d in verdict.denials)


def test_the_dispatch_gate_re_derives_what_runs(constitution: Constitution) -> None:
    plan, _ = _plan(constitution, "Add caching to auth and deploy to staging")
    assert what_runs.mismatch(constitution, plan) is None
    doc = plan.document()
    for field, value in [("action", "rollback"), ("sha", GOOD), ("workflow", "other.yml")]:
        edited = Plan.from_document({**doc, "target": {**doc["target"], field: value}})
        assert what_runs.mismatch(constitution, edited), field
    wider = Plan.from_document({**doc, "artifacts": [*doc["artifacts"], "exe"]})
    assert what_runs.mismatch(constitution, wider)
    other_env = Plan.from_document({**doc, "target": {**doc["target"], "environment": "qa"}})
    assert what_runs.mismatch(constitution, other_env)


@pytest.mark.parametrize(
    ("text", "assumed", "level"),
    [
        ("Add caching", ["No repository", "No environment"], "approval"),
        ("Add caching to auth", ["No environment"], "approval"),
        (
            "Add caching to auth and deploy to prodution",
            ["'prodution' looks like production"],
            "supervision",
        ),
        ("Add caching to auth and deploy to ѕtaging", ["looks like staging"], "approval"),
        ("x " * 1200 + "deploy auth to staging", ["longer than 2000"], "approval"),
    ],
)
def test_what_was_assumed_is_said_and_never_lowers_the_level(
    constitution: Constitution, text: str, assumed: list[str], level: str
) -> None:
    plan, _ = _plan(constitution, text)
    said = " | ".join(plan.interpretation.assumptions)
    for words in assumed:
        assert words in said, said
    assert plan.approval.level.rank >= ApprovalLevel(level).rank


def test_homoglyph_repo_names_are_refused(constitution: Constitution) -> None:
    _, verdict = _plan(constitution, "Deploy аcme/auth-service to staging")  # Cyrillic а
    assert any(d.id == "target.repo-lookalike" for d in verdict.denials)


@pytest.mark.parametrize(
    "text",
    [
        "Despliega auth a producción",
        "把 auth 部署到生产环境",
        "auth を本番環境にデプロイしてください",
        "Разверни auth в продакшн",
        "Bitte auth in Produktion ausrollen",
        "انشر auth إلى الإنتاج",
    ],
)
def test_production_in_other_languages_is_production(constitution: Constitution, text: str) -> None:
    plan, _ = _plan(constitution, text)
    assert plan.target.environment == "production"
    assert plan.approval.level == ApprovalLevel.SUPERVISION


def test_a_named_ref_runs_only_if_the_constitution_allows_it() -> None:
    text = (
        (ROOT / "constitution.yml")
        .read_text()
        .replace("    default_ref: main\n", "    default_ref: main\n    refs: ['release/*']\n", 1)
    )
    wider = parse_constitution(text)
    plan, verdict = _plan(wider, "deploy auth branch release/2.1 to staging")
    assert verdict.allowed and plan.target.ref == "release/2.1"
    assert what_runs.mismatch(wider, plan) is None
    _, refused = _plan(wider, "deploy auth branch hotfix to staging")
    assert any(d.id == "target.ref-not-allowed" for d in refused.denials)


def test_a_named_commit_is_said_never_deployed(constitution: Constitution) -> None:
    plan, _ = _plan(constitution, "deploy auth commit deadbeefcafe to staging")
    assert plan.target.sha == "" and plan.target.ref == "main"
    assert any("names commit deadbeefcafe" in a for a in plan.interpretation.assumptions)


def test_other_repos_named_beside_the_target(constitution: Constitution) -> None:
    plan, verdict = _plan(constitution, "deploy auth to staging, the frontend can wait")
    assert plan.target.repo == "acme/auth-service"
    assert any(w.id == "target.other-repos" for w in verdict.warnings)
    _, evil = _plan(constitution, "deploy auth and evil/backdoor to staging")
    assert any(d.id == "target.repo-not-allowed" for d in evil.denials)
    plan, verdict = _plan(constitution, "deploy auth to staging with CI/CD and/or smoke tests")
    assert verdict.allowed
