"""Δ's policies as code (Rego via regopy) and the clock rule."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.constitution_source import ConstitutionSource
from roles import diff_engine, navigator, policies
from roles.constitution import ConstitutionError, load_constitution
from roles.draft import DraftInput, DraftRisk, DraftRollback, DraftStep, PlanDraft
from roles.offline_planner import offline_draft
from roles.plan import Action, Intent, RiskFactor, RiskLevel

ROOT = Path(__file__).resolve().parents[2]
SEED = "Add caching to the user authentication system and deploy to staging"
MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    text = (ROOT / "constitution.yml").read_text()
    hours = '  business_hours: {timezone: UTC, start: "07:00", end: "19:00", weight: 0.1}\n'
    text = text.replace("risk:\n", "risk:\n" + hours, 1)
    (tmp_path / "constitution.yml").write_text(text)
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    return tmp_path


def _draft(*steps: DraftStep) -> PlanDraft:
    return PlanDraft(
        intent=Intent.MIGRATION,
        summary="Migrate the sessions table",
        steps=list(steps),
        artifacts=[],
        risk=DraftRisk(level=RiskLevel.MEDIUM, factors=[], mitigations=[]),
        rollback=DraftRollback(strategy="restore_backup", description="Restore the backup"),
    )


def test_deny_blocks_and_warn_is_shown(folder: Path) -> None:
    constitution = load_constitution(folder / "constitution.yml")
    assert "main.rego" in constitution.policy_sources
    reading = navigator.interpret("migrate the sessions table in staging", constitution)
    draft = _draft(
        DraftStep(action=Action.DB_MIGRATION, description="Add an index", inputs=[]),
        DraftStep(action=Action.DEPLOY, description="Deploy to staging", inputs=[]),
    )
    verdict = diff_engine.evaluate(
        draft, reading, constitution, 0.9, now=MONDAY_NOON, model_ready=True
    )
    assert not verdict.allowed
    (deny,) = [d for d in verdict.denials if d.id.startswith("policy.")]
    assert deny.id == "policy.migration-needs-backup" and "Add an index" in deny.message
    assert [w.id for w in verdict.warnings] == ["policy.deploy-without-smoke-test"]

    backed_up = _draft(
        DraftStep(
            action=Action.DB_MIGRATION,
            description="Add an index",
            inputs=[DraftInput(name="backup", value="true")],
        ),
        DraftStep(action=Action.DEPLOY, description="Deploy to staging", inputs=[]),
        DraftStep(action=Action.SMOKE_TEST, description="Smoke-test staging", inputs=[]),
    )
    verdict = diff_engine.evaluate(
        backed_up, reading, constitution, 0.9, now=MONDAY_NOON, model_ready=True
    )
    assert verdict.allowed and not verdict.warnings


def test_the_seed_plan_passes_the_shipped_policies() -> None:
    constitution = load_constitution(ROOT / "constitution.yml")
    reading = navigator.interpret(SEED, constitution)
    verdict = diff_engine.evaluate(offline_draft(reading), reading, constitution, 0.75)
    assert verdict.allowed and not [w for w in verdict.warnings if w.id.startswith("policy.")]


def test_editing_a_policy_changes_the_digest_and_is_picked_up(folder: Path) -> None:
    source = ConstitutionSource(folder / "constitution.yml")
    before = source().digest_hex
    rego = folder / "policies" / "extra.rego"
    rego.write_text('package main\nimport rego.v1\nwarn contains "always" if { true }\n')
    os.utime(rego, ns=(1, 2_000_000_000_000_000_000))
    after = source()
    assert after.digest_hex != before
    assert "extra.rego" in after.policy_sources


def test_a_broken_policy_is_refused_at_load_and_the_last_good_one_stays(folder: Path) -> None:
    source = ConstitutionSource(folder / "constitution.yml")
    good = source().digest_hex
    broken = folder / "policies" / "broken.rego"
    broken.write_text("package main\ndeny contains msg if {\n")
    with pytest.raises(ConstitutionError, match="does not compile"):
        load_constitution(folder / "constitution.yml")
    os.utime(broken, ns=(1, 3_000_000_000_000_000_000))
    assert source().digest_hex == good


def test_policy_results_accept_strings_objects_and_old_style_sets() -> None:
    result = policies.evaluate(
        {
            "a.rego": 'package main\nimport rego.v1\ndeny contains "plain" if { input.x == 1 }\n'
            'warn contains {"msg": "named", "id": "My Rule"} if { input.x == 1 }\n',
        },
        {"x": 1},
    )
    assert [(d.id, d.message) for d in result.denials] == [("policy.deny", "plain")]
    assert [(w.id, w.message) for w in result.warnings] == [("policy.my-rule", "named")]
    assert policies.evaluate({}, {"x": 1}) == policies.PolicyResult()


def test_out_of_hours_raises_the_risk(folder: Path) -> None:
    constitution = load_constitution(folder / "constitution.yml")
    reading = navigator.interpret(SEED, constitution)
    draft = offline_draft(reading)
    day = diff_engine.assess_risk(draft, reading, constitution, MONDAY_NOON)
    night = diff_engine.assess_risk(
        draft, reading, constitution, datetime(2026, 11, 23, 23, 30, tzinfo=UTC)
    )
    sunday = diff_engine.assess_risk(
        draft, reading, constitution, datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    )
    assert "out-of-hours" not in {f.id for f in day.factors}
    assert night.score > day.score and "23:30" in _factor(night.factors, "out-of-hours")
    assert "Sun" in _factor(sunday.factors, "out-of-hours")


def _factor(factors: list[RiskFactor], fid: str) -> str:
    return next(f.message for f in factors if f.id == fid)


def test_sophie_plan_json_reports_verdicts_and_approval() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bot", "plan", "--json", SEED],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if "API_KEY" not in k},
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["allowed"] is True and doc["approval"]["level"] == "approval"
    assert doc["plan"]["provenance"]["planner"] == "offline"
    actions = [s["action"] for s in doc["plan"]["steps"]]
    for needed in ("code_change", "build", "test", "deploy"):
        assert needed in actions
    assert doc["plan"]["rollback"]["strategy"] and doc["plan"]["artifacts"]
    assert doc["risk"]["factors"]
