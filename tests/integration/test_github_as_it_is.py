"""Σ against GitHub as GitHub documents it, not as SOPHIE would like it.

The fake applies auto-inactive, concurrency groups, runs listed a moment after dispatch,
releases that name their branch, GHES without run details, and permissions per token
(tests/fakes/github_rest.py cites the documentation for each). From outside: the real app
over HTTP with the real PyGithub, or the gateway and the template's own steps.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from github import Auth, Github
from github.WorkflowRun import WorkflowRun

from bot.app import bundle_token, bundle_token_ok
from bot.doctor import github_access
from bot.github_gateway import GitHubGateway
from bot.settings import Settings
from bot.signer import KeyRing
from handlers import blocks as kit
from roles import diff_engine, integrator, navigator
from roles.constitution import Constitution, load_constitution
from roles.offline_planner import offline_draft
from roles.plan import Plan
from roles.ports import Proposal
from roles.records import Actor, PlanRecord, PlanStatus, Thread
from tests import slack_requests as sr
from tests.fakes.github_rest import FakeGitHub
from tests.fakes.server import ThreadedServer
from tests.harness import GITHUB_TOKEN
from tests.integration.conftest import ALICE, CHANNEL, REPO, STAGING_URL, Fakes
from tests.integration.test_end_to_end import _text, dispatched_inputs
from tests.integration.test_execution import SECRET, Runner, status_messages

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples/github/sophie-pipeline.yml"
PRODUCTION_URL = "https://auth.acme.test"


@pytest.fixture()
async def runner(fakes: Fakes, redis_url: str, tmp_path: Path) -> AsyncIterator[Runner]:
    r = Runner(fakes, redis_url, tmp_path)
    yield r
    if r.app is not None:
        await r.app.close()


def _deploy(fake: FakeGitHub, url: str) -> str:
    """A deploy run outside SOPHIE, to its end: returns the commit it deployed."""
    gh = Github(auth=Auth.Token(GITHUB_TOKEN), base_url=url, retry=None, lazy=True)
    workflow = gh.get_repo(REPO).get_workflow("sophie-pipeline.yml")
    run = workflow.create_dispatch(
        "main",
        inputs={"action": "deploy", "environment": "staging", "plan_id": "manual"},
        throw=True,
        return_run_details=True,
    )
    assert isinstance(run, WorkflowRun)
    fake.complete(run.id)
    return fake.runs[run.id].head_sha


async def _slash_rollback(runner: Runner, fakes: Fakes, n: int) -> dict[str, str]:
    assert runner.app is not None
    body = sr.command_body(
        "rollback staging auth", ALICE, CHANNEL, f"{fakes.slack_server.url}/respond/{n}"
    )
    assert (await runner.app.command(body)).status == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rollbacks = [i for i in dispatched_inputs(fakes) if i.get("action") == "rollback"]
        if len(rollbacks) == n:
            return rollbacks[-1]
        await _sleep(0.05)
    said = [m.text for m in fakes.slack.channel_messages(CHANNEL)][-3:]
    raise AssertionError(f"rollback {n} was not dispatched: {said}")


def _said(fakes: Fakes, words: str) -> bool:
    return any(words in (m.text or "") for m in fakes.slack.channel_messages(CHANNEL))


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def _finished(fake: FakeGitHub, deploy_sha: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done = [
            r
            for r in fake.runs.values()
            if r.inputs.get("deploy_sha") == deploy_sha and r.conclusion == "success"
        ]
        if done:
            return
        await _sleep(0.05)
    raise AssertionError(f"the rollback to {deploy_sha[:7]} did not finish")


async def test_rollback_after_two_good_deploys_then_a_bad_one(runner: Runner, fakes: Fakes) -> None:
    """Auto-inactive leaves the last good deployment "inactive"; rollback still finds it,
    records the rollback at the restored commit, and a second rollback goes one further
    back — never to the commit rolled back from."""
    fake, url = fakes.github, fakes.github_server.url
    first, second, bad = (_deploy(fake, url) for _ in range(3))
    by_sha = {d.sha: d for d in fake.deployments}
    # What defeated the old rule (the newest status only): the good ones now read inactive.
    assert [s["state"] for s in by_sha[second].statuses] == ["inactive", "success", "in_progress"]
    assert by_sha[bad].statuses[0]["state"] == "success"
    await runner.start()
    inputs = await _slash_rollback(runner, fakes, 1)
    assert inputs["deploy_sha"] == second
    await _finished(fake, second)
    restored = fake.deployments[-1]
    assert (restored.sha, restored.ref) == (second, second)  # history names the real commit
    assert by_sha[bad].statuses[0]["state"] == "inactive"
    again = await _slash_rollback(runner, fakes, 2)
    assert again["deploy_sha"] == first  # one further back; `bad` is known bad
    await _finished(fake, first)
    # Nothing earlier than the first deploy: said so, nothing runs (not `bad`, not `second`).
    assert runner.app is not None
    body = sr.command_body("rollback staging auth", ALICE, CHANNEL, f"{fakes.slack_server.url}/r")
    assert (await runner.app.command(body)).status == 200
    await _until(lambda: _said(fakes, "There is no earlier successful deployment"))
    assert len([i for i in dispatched_inputs(fakes) if i.get("action") == "rollback"]) == 2
    assert fake.rejections == []


async def _until(check: Any, within: float = 10.0) -> float:
    """Poll tightly; the monotonic time at which ``check()`` first held."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        await _sleep(0.002)
    raise AssertionError("timed out")


@pytest.mark.parametrize("ghes", [True, False], ids=["ghes", "github.com"])
async def test_a_webhook_moves_the_thread_at_once(
    ghes: bool, fakes: Fakes, redis_url: str, tmp_path: Path
) -> None:
    """No polling to speak of: only webhooks move the thread. On GHES the run id is
    unknown until the run's name (its correlation id) arrives with the first webhook."""
    fake = FakeGitHub(token=GITHUB_TOKEN, repos=(REPO,), ghes=ghes, environment_url=STAGING_URL)
    fake.auto_advance = False
    server = ThreadedServer(fake.app).start()
    runner = Runner(
        Fakes(fakes.slack, fake, fakes.llm, fakes.slack_server, server, fakes.llm_server),
        redis_url,
        tmp_path,
    )
    try:
        app = await runner.start(SOPHIE_POLL_SECONDS="600")
        fake.webhook_url = f"{app.url}/github/webhook"
        fake.webhook_secret = SECRET
        card = await runner.approved()
        await _until(lambda: fake.runs)
        (run_id,) = list(fake.runs)
        # the run is recorded before its first webhook is queued for delivery
        await _until(lambda: bool(fake.deliveries) and "sent_at" in fake.deliveries[0])
        requested = fake.deliveries[0]["sent_at"]
        named = await _until(
            lambda: any(f"run {run_id}" in _text(m.blocks) for m in status_messages(fakes, card))
        )
        fake.advance(run_id)  # the build job starts: workflow_run + workflow_job webhooks
        moved = await _until(
            lambda: any("Build artifacts" in _text(m.blocks) for m in status_messages(fakes, card))
        )
        sent = min(d.get("sent_at", moved) for d in fake.deliveries[1:])
        kind = "GHES" if ghes else "github.com"
        print(
            f"\n{kind}: first webhook → status names run {run_id}: "
            f"{(named - requested) * 1000:.0f} ms; "
            f"in_progress webhook → status edit: {(moved - sent) * 1000:.0f} ms"
        )
        assert named - requested < 5 and moved - sent < 5  # a poll would be 600 s
        (status,) = status_messages(fakes, card)
        assert "None" not in _text(status.blocks)
        if ghes:
            assert [r.status for r in fake.rejections] == [422]  # return_run_details
    finally:
        if runner.app is not None:
            await runner.app.close()
        server.stop()


async def test_a_token_without_actions_write_is_told_why(runner: Runner, fakes: Fakes) -> None:
    fakes.github.grant(
        GITHUB_TOKEN,
        {"metadata": "read", "actions": "read", "deployments": "read", "contents": "read"},
    )
    await runner.start()
    card = await runner.approved()
    deadline = time.monotonic() + 10
    while "Dispatch failed" not in runner.thread_text(card) and time.monotonic() < deadline:
        await _sleep(0.05)
    text = runner.thread_text(card)
    assert "Dispatch failed" in text and "403" in text
    assert fakes.github.dispatches == []
    assert fakes.github.rejections[-1].reasons == [
        "Resource not accessible by personal access token"
    ]


# -- the gateway on its own, against the fake over HTTP ------------------------------------


@pytest.fixture()
def served() -> Iterator[tuple[FakeGitHub, GitHubGateway, str]]:
    fake = FakeGitHub(
        token=GITHUB_TOKEN,
        repos=(REPO,),
        environment_url=STAGING_URL,
        environment_urls={"production": PRODUCTION_URL},
        release_assets=("auth-service_1.0_all.deb",),
        list_delay=0.0,
    )
    server = ThreadedServer(fake.app).start()
    yield fake, GitHubGateway(Auth.Token(GITHUB_TOKEN), server.url), server.url
    server.stop()


def _plan(constitution: Constitution, text: str) -> Plan:
    reading = navigator.interpret(text, constitution)
    draft = offline_draft(reading)
    verdict = diff_engine.evaluate(draft, reading, constitution, 0.75)
    proposal = Proposal(draft=draft, planner="offline", models=["x"], confidence=0.75)
    return integrator.assemble(
        integrator.plan_id_for(text),
        datetime.now(UTC),
        reading,
        Actor("T0SOPHIE01", "U0REQUEST1"),
        proposal,
        verdict,
        constitution,
    )


async def test_assets_by_tag_and_one_url_per_environment(
    served: tuple[FakeGitHub, GitHubGateway, str],
) -> None:
    fake, gateway, _ = served
    constitution = load_constitution(ROOT / "constitution.yml")
    plan = _plan(constitution, "deploy auth to production")
    assert plan.target.environment == "production"
    # Someone else's release of another commit, cut from the same branch: not ours.
    fake.publish_release(REPO, "9" * 40, "v0.9.0", ["other.deb"])
    inputs = integrator.workflow_inputs(plan, [], None, f"{plan.id}.1", constitution)
    run = await gateway.dispatch(plan, inputs, f"{plan.id}.1")
    assert run.run_id is not None
    fake.complete(run.run_id)
    run.correlation_id = f"{plan.id}.1"
    done = await gateway.refresh(plan, run)
    assert done.staging_url == PRODUCTION_URL
    assert [a.name for a in done.release_assets] == ["auth-service_1.0_all.deb"]
    assert all(r.target_commitish == "main" for r in fake.releases)  # the branch, not a sha
    record = PlanRecord(plan, PlanStatus.SUCCEEDED, Thread(CHANNEL, "1.1"), run=done)
    _, body = kit.result(record)
    assert f"*Production URL:* <{PRODUCTION_URL}>" in _text(body)
    # A run whose name carries another dispatch's correlation id is refused.
    run.correlation_id = "plan_0000000000000000.1"
    with pytest.raises(ValueError, match="belongs to"):
        await gateway.refresh(plan, run)
    assert fake.rejections == []


async def test_find_run_reads_the_run_name_and_waits_for_github_to_list_it(
    served: tuple[FakeGitHub, GitHubGateway, str],
) -> None:
    fake, gateway, _ = served
    fake.ghes, fake.list_delay = True, 0.3
    constitution = load_constitution(ROOT / "constitution.yml")
    plan = _plan(constitution, "deploy auth to staging")
    ids = [f"{plan.id}.1", f"{plan.id}.10"]
    for cid in ids:
        inputs = integrator.workflow_inputs(plan, [], None, cid, constitution)
        assert (await gateway.dispatch(plan, inputs, cid)).run_id is None  # GHES
    assert await gateway.find_run(plan, ids[1]) is None  # not listed yet
    time.sleep(0.3)
    found = [await gateway.find_run(plan, cid) for cid in ids]
    assert [f.run_id for f in found if f] == sorted(fake.runs)  # ".1" is not ".10"


def test_the_template_rollback_job_records_the_restored_commit(
    served: tuple[FakeGitHub, GitHubGateway, str], tmp_path: Path
) -> None:
    """The rollback job's steps, run as written, with `gh` talking to the fake."""
    fake, _, url = served
    good, bad = "a" * 40, "b" * 40
    fake.seed_deployment(REPO, good, "staging")
    fake.seed_deployment(REPO, bad, "staging")
    job = yaml.safe_load(TEMPLATE.read_text())["jobs"]["rollback"]
    gh = tmp_path / "bin/gh"
    gh.parent.mkdir()
    gh.write_text(GH_STUB.format(python=sys.executable))
    gh.chmod(0o755)
    env = {
        "PATH": f"{gh.parent}:/usr/bin:/bin",
        "GH_TOKEN": GITHUB_TOKEN,
        "GH_API_URL": url,
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "ENVIRONMENT": "staging",
        "DEPLOY_SHA": good,
        "PLAN_ID": "plan_0123456789abcdef",
        "LOG_URL": f"https://github.com/{REPO}/actions/runs/42",
        "JOB_STATUS": "success",
        "ENVIRONMENT_URL": STAGING_URL,
    }
    for step in job["steps"]:
        if "run" not in step or step.get("id") == "url":
            continue
        if step.get("if"):
            ids = dict(
                line.split("=", 1) for line in Path(env["GITHUB_OUTPUT"]).read_text().split()
            )
            env["DEPLOYMENT_ID"] = ids["id"]
        ran = subprocess.run(["bash", "-c", step["run"]], env=env, capture_output=True, text=True)
        assert ran.returncode == 0, (step["name"], ran.stderr)
    restored = fake.deployments[-1]
    assert (restored.sha, restored.ref, restored.environment) == (good, good, "staging")
    assert [s["state"] for s in restored.statuses] == ["success", "in_progress"]
    assert restored.statuses[0]["environment_url"] == STAGING_URL
    assert restored.payload == {"sophie": {"plan_id": env["PLAN_ID"], "action": "rollback"}}
    assert fake.deployments[1].statuses[0]["state"] == "inactive"  # the bad one, auto-inactive
    assert fake.rejections == []  # every request as GitHub's OpenAPI description has it


# A stand-in for the GitHub CLI: `gh api PATH [--input -] [-f k=v]... [--jq .id]`.
GH_STUB = """#!{python}
import json, os, sys, urllib.request
args = sys.argv[2:]
path, body, jq = args[0], {{}}, None
i = 1
while i < len(args):
    if args[i] == "--input":
        body = json.load(sys.stdin); i += 2
    elif args[i] == "-f":
        key, _, value = args[i + 1].partition("="); body[key] = value; i += 2
    elif args[i] == "--jq":
        jq = args[i + 1]; i += 2
    else:
        raise SystemExit("gh stub: unknown " + args[i])
request = urllib.request.Request(
    os.environ["GH_API_URL"] + "/" + path, data=json.dumps(body).encode(), method="POST",
    headers={{"Authorization": "token " + os.environ["GH_TOKEN"]}},
)
reply = json.load(urllib.request.urlopen(request))
print(reply[jq.lstrip(".")] if jq else json.dumps(reply))
"""


# -- sophie doctor: the token or App really has what SOPHIE needs ---------------------------


def _settings(url: str, **env: str) -> Settings:
    return Settings.from_env(
        {"GITHUB_API_URL": url, "SOPHIE_DATA_DIR": "/tmp/sophie-doctor", **env}
    )


def test_doctor_checks_the_permissions_not_just_the_token(
    served: tuple[FakeGitHub, GitHubGateway, str],
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    fake, _, url = served
    repos = [(REPO, "sophie-pipeline.yml", "main")]

    def gh(token: str) -> Github:
        return Github(auth=Auth.Token(token), base_url=url, retry=None)

    classic = github_access(_settings(url, GITHUB_TOKEN=GITHUB_TOKEN), gh(GITHUB_TOKEN), repos)
    assert "repo" in classic
    full = {"metadata": "read", "actions": "write", "deployments": "read", "contents": "read"}
    fake.grant("github_pat_all", {**full, "checks": "read"})
    assert "fine-grained" in github_access(_settings(url), gh("github_pat_all"), repos)
    fake.grant("github_pat_nochecks", full)
    with pytest.raises(RuntimeError, match=r"Checks: read \(checks=read\)"):
        github_access(_settings(url), gh("github_pat_nochecks"), repos)
    with pytest.raises(RuntimeError, match="not visible"):
        github_access(_settings(url), gh("github_pat_all"), [("acme/elsewhere", "x.yml", "main")])

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    fake.install_app("31337", public, 9, permissions={**full, "checks": "read"})
    fake.install_app("31338", public, 10, permissions=full)
    app = {"GITHUB_APP_PRIVATE_KEY": private}
    ok = _settings(url, GITHUB_APP_ID="31337", GITHUB_APP_INSTALLATION_ID="9", **app)
    assert "App permissions" in github_access(ok, None, repos)
    lacking = _settings(url, GITHUB_APP_ID="31338", GITHUB_APP_INSTALLATION_ID="10", **app)
    with pytest.raises(RuntimeError, match="lacks Checks: read"):
        github_access(lacking, None, repos)


def test_the_bundle_link_expires_and_cannot_be_stretched() -> None:
    from nacl.signing import SigningKey

    ring = KeyRing(SigningKey.generate(), {})
    token = bundle_token(ring, "plan_a")
    assert bundle_token_ok(ring, "plan_a", token)
    assert not bundle_token_ok(ring, "plan_b", token)  # another plan
    expires = int(token.split(".")[0])
    assert not bundle_token_ok(ring, "plan_a", token, now=expires)  # expired
    stretched = f"{expires + 86400}.{token.split('.')[1]}"
    assert not bundle_token_ok(ring, "plan_a", stretched)  # the expiry is under the MAC
    assert not bundle_token_ok(ring, "plan_a", "0" * 32)  # the old, expiry-less form
