"""Φ Σ Δ without any outside service: reading, offline drafts, risk and approval."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from roles import diff_engine, integrator, navigator
from roles.constitution import (
    Constitution,
    ConstitutionError,
    load_constitution,
    parse_constitution,
)
from roles.offline_planner import OfflinePlanner, offline_draft
from roles.plan import Action, ApprovalLevel, Intent, Plan, RiskLevel
from roles.records import Actor

ROOT = Path(__file__).resolve().parents[2]
SEED = "Add caching to the user authentication system and deploy to staging"


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


async def _plan(text: str, constitution: Constitution, confidence: float | None = None) -> Plan:
    reading = navigator.interpret(text, constitution)
    proposal = await OfflinePlanner().propose(reading, constitution, [])
    verdict = diff_engine.evaluate(
        proposal.draft,
        reading,
        constitution,
        proposal.confidence if confidence is None else confidence,
    )
    return integrator.assemble(
        integrator.plan_id_for(text),
        datetime(2026, 11, 23, tzinfo=UTC),
        reading,
        Actor("T1", "U0REQUEST1", "req"),
        proposal,
        verdict,
        constitution,
    )


async def test_seed_directive_gives_a_full_plan(constitution: Constitution) -> None:
    plan = await _plan(SEED, constitution)
    actions = [s.action for s in plan.steps]
    for needed in (Action.CODE_CHANGE, Action.BUILD, Action.TEST, Action.DEPLOY):
        assert needed in actions
    assert (
        actions.index(Action.CODE_CHANGE)
        < actions.index(Action.BUILD)
        < actions.index(Action.DEPLOY)
    )
    assert plan.target.environment == "staging"
    assert plan.target.repo == "acme/auth-service"
    assert plan.artifacts == ["docker", "deb"]
    assert plan.interpretation.intent == Intent.FEATURE
    assert plan.risk.level in (RiskLevel.MEDIUM, RiskLevel.HIGH)
    assert {f.id for f in plan.risk.factors} >= {"sensitive-component", "deploys"}
    assert plan.rollback.strategy == "redeploy_previous"
    assert plan.approval.level == ApprovalLevel.APPROVAL and plan.approval.quorum == 1
    assert plan.provenance.planner == "offline"


async def test_plan_round_trips_through_yaml_with_the_same_digest(
    constitution: Constitution,
) -> None:
    plan = await _plan(SEED, constitution)
    again = Plan.from_yaml(plan.to_yaml())
    assert again == plan
    assert again.digest == plan.digest
    assert len(plan.digest) == 64


async def test_plan_schema_rejects_unknown_fields_and_actions(constitution: Constitution) -> None:
    doc = (await _plan(SEED, constitution)).document()
    with pytest.raises(ValidationError):
        Plan.from_document({**doc, "skip_approval": True})
    bad_step = {**doc["steps"][0], "action": "rm_rf"}
    with pytest.raises(ValidationError):
        Plan.from_document({**doc, "steps": [bad_step]})


async def test_digest_changes_with_any_edit(constitution: Constitution) -> None:
    plan = await _plan(SEED, constitution)
    doc = plan.document()
    doc["target"]["ref"] = "evil-branch"
    assert Plan.from_document(doc).digest != plan.digest


@pytest.mark.parametrize(
    ("text", "intent", "env", "actions", "rollback"),
    [
        (
            "Deploy the web frontend to production",
            Intent.DEPLOY,
            "production",
            {"deploy", "smoke_test"},
            "redeploy_previous",
        ),
        # A rollback is a command, not a word: in a directive it is an ordinary change.
        ("roll back staging", Intent.FEATURE, "staging", {"code_change"}, "redeploy_previous"),
        (
            "Build .deb and docker artifacts of auth",
            Intent.BUILD,
            "staging",
            {"build", "test", "build_artifact", "publish_artifact"},
            "redeploy_previous",
        ),
        (
            "Change the session timeout config in staging",
            Intent.CONFIG,
            "staging",
            {"config_change", "deploy"},
            "revert_commit",
        ),
        (
            "Run the migration adding an index to users in staging",
            Intent.MIGRATION,
            "staging",
            {"db_migration", "test"},
            "restore_backup",
        ),
        (
            "Bump the requests library version and deploy",
            Intent.DEPENDENCY,
            "staging",
            {"dependency_update", "deploy"},
            "redeploy_previous",
        ),
        (
            "Fix the login bug and ship it to prod",
            Intent.FIX,
            "production",
            {"code_change", "test", "deploy"},
            "redeploy_previous",
        ),
    ],
)
async def test_common_directives(
    constitution: Constitution,
    text: str,
    intent: Intent,
    env: str,
    actions: set[str],
    rollback: str,
) -> None:
    plan = await _plan(text, constitution)
    assert plan.interpretation.intent == intent
    assert plan.target.environment == env
    assert actions <= {s.action.value for s in plan.steps}
    assert plan.rollback.strategy == rollback and plan.rollback.description
    assert not [w for w in plan.warnings if w.effect == "deny"]
    if intent == Intent.BUILD:
        assert {"deb", "docker"} <= set(plan.artifacts)


async def test_production_needs_supervision_with_two_approvers(constitution: Constitution) -> None:
    plan = await _plan("Deploy the auth service to production", constitution)
    assert plan.approval.level == ApprovalLevel.SUPERVISION
    assert plan.approval.quorum == 2
    assert any(f.id == "production" for f in plan.risk.factors)


async def test_low_confidence_raises_the_approval_level(constitution: Constitution) -> None:
    plan = await _plan("deploy auth to development", constitution, confidence=0.3)
    assert plan.approval.level == ApprovalLevel.APPROVAL
    assert any(r.id == "confidence.low" for r in plan.approval.reasons)
    relaxed = await _plan("deploy auth to development", constitution, confidence=0.9)
    assert relaxed.approval.level == ApprovalLevel.NOTIFICATION


async def test_forbidden_patterns_and_unknown_targets_are_denied(
    constitution: Constitution,
) -> None:
    for text, rule in [
        ("drop database users in staging", "forbidden.drop-database"),
        ("disable authentication checks and deploy", "forbidden.disable-security"),
        ("deploy to qa", "target.environment-unknown"),
        ("deploy evilcorp/backdoor to staging", "target.repo-not-allowed"),
    ]:
        reading = navigator.interpret(text, constitution)
        verdict = diff_engine.evaluate(offline_draft(reading), reading, constitution, 0.9)
        assert not verdict.allowed, text
        assert rule in {d.id for d in verdict.denials}, text


def test_model_risk_can_raise_but_never_lower(constitution: Constitution) -> None:
    reading = navigator.interpret("Deploy auth to production", constitution)
    draft = offline_draft(reading)
    low = draft.model_copy(update={"risk": draft.risk.model_copy(update={"level": RiskLevel.LOW})})
    verdict = diff_engine.evaluate(low, reading, constitution, 0.99)
    assert verdict.risk.level.rank >= RiskLevel.MEDIUM.rank
    assert verdict.approval.level == ApprovalLevel.SUPERVISION
    critical = draft.model_copy(
        update={"risk": draft.risk.model_copy(update={"level": RiskLevel.CRITICAL})}
    )
    assert diff_engine.evaluate(critical, reading, constitution, 0.99).risk.level == (
        RiskLevel.CRITICAL
    )


def test_constitution_schema_is_closed() -> None:
    text = (ROOT / "constitution.yml").read_text()
    with pytest.raises(ConstitutionError):
        parse_constitution(text + "\nsurprise: true\n")
    with pytest.raises(ConstitutionError):
        parse_constitution(
            text.replace("environments: [staging, production]", "environments: [staging, moon]")
        )
    with pytest.raises(ConstitutionError):
        parse_constitution("- not a mapping")


def test_constitution_digest_tracks_content(constitution: Constitution) -> None:
    text = (ROOT / "constitution.yml").read_text()
    policies = constitution.policy_sources
    assert policies, "the shipped constitution names its policies"
    assert parse_constitution(text, policies).digest_hex == constitution.digest_hex
    assert parse_constitution(text).digest_hex != constitution.digest_hex
    assert parse_constitution(text.replace("version: 1", "version: 2"), policies).digest_hex != (
        constitution.digest_hex
    )


def test_directive_text_is_cleaned(constitution: Constitution) -> None:
    reading = navigator.interpret("deploy\u200b auth\u202e to <!channel> staging\x00", constitution)
    assert "\u200b" not in reading.text and "\u202e" not in reading.text
    assert "\x00" not in reading.text and "<!channel>" not in reading.text
    assert reading.environment == "staging"


async def test_the_card_shows_model_disagreement(constitution: Constitution) -> None:
    from handlers import blocks
    from roles.records import PlanRecord, PlanStatus, Thread

    plan = await _plan("deploy auth to staging", constitution)
    provenance = plan.provenance.model_copy(
        update={
            "planner": "llm",
            "models": ["a/x", "b/y"],
            "agreement": 0.62,
            "disagreements": ["destructive steps"],
        }
    )
    shown = Plan.model_validate({**plan.document(), "provenance": provenance.model_dump()})
    text = str(
        blocks.card(PlanRecord(plan=shown, status=PlanStatus.PENDING, thread=Thread("C1", "1")))
    )
    assert "The models disagree* on destructive steps" in text
    assert "agreement 62%" in text
