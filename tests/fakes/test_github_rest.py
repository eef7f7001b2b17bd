"""The fake GitHub refuses what GitHub refuses, through the real PyGithub client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from github import Auth, Github, GithubException
from github.WorkflowRun import WorkflowRun

from tests.fakes import github_spec
from tests.fakes.github_rest import FakeGitHub
from tests.fakes.server import ThreadedServer

TOKEN = "ghp_test"
REPO = "acme/auth-service"


@pytest.fixture()
def served() -> Iterator[tuple[FakeGitHub, Github, str]]:
    fake = FakeGitHub(token=TOKEN, repos=(REPO,))
    server = ThreadedServer(fake.app).start()
    gh = Github(
        auth=Auth.Token(TOKEN),
        base_url=server.url,
        retry=None,
        lazy=True,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    yield fake, gh, server.url
    server.stop()


def _raw(url: str, method: str, body: Any, token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_dispatch_becomes_a_run_that_completes_with_a_deployment(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, gh, _ = served
    workflow = gh.get_repo(REPO).get_workflow("sophie-pipeline.yml")
    run = workflow.create_dispatch(
        "main",
        inputs={"plan_id": "p1", "environment": "staging"},
        throw=True,
        return_run_details=True,
    )
    assert isinstance(run, WorkflowRun)
    repo = gh.get_repo(REPO)
    statuses = [repo.get_workflow_run(run.id).status for _ in range(3)]
    assert statuses == ["in_progress", "in_progress", "completed"]
    done = repo.get_workflow_run(run.id)
    assert done.conclusion == "success" and done.html_url.endswith(f"/runs/{run.id}")
    assert [j.conclusion for j in done.jobs()] == ["success", "success", "success"]
    assert {a.name for a in done.get_artifacts()} == {"auth-service.deb", "sbom.spdx.json"}
    (deployment,) = list(repo.get_deployments(sha=done.head_sha, environment="staging"))
    (status, *_) = list(deployment.get_statuses())
    assert status.state == "success" and status.environment_url.startswith("https://staging")
    assert fake.rejections == []


def test_failures_rate_limits_and_pagination(served: tuple[FakeGitHub, Github, str]) -> None:
    fake, gh, _ = served
    fake.fail_job = "build"
    workflow = gh.get_repo(REPO).get_workflow("sophie-pipeline.yml")
    for n in range(3):
        workflow.create_dispatch("main", inputs={"plan_id": f"p{n}"}, throw=True)
    runs = list(gh.get_repo(REPO).get_workflow("sophie-pipeline.yml").get_runs())
    assert len(runs) == 3 and runs[0].id > runs[-1].id  # newest first
    fake.complete(runs[0].id)
    run = gh.get_repo(REPO).get_workflow_run(runs[0].id)
    assert run.conclusion == "failure"
    jobs = {j.name: j.conclusion for j in run.jobs()}
    assert jobs == {"verify": "success", "build": "failure", "deploy-staging": "skipped"}
    fake.rate_limit_next("primary")
    with pytest.raises(GithubException) as limited:
        gh.get_repo(REPO).get_workflow_run(runs[1].id).status  # noqa: B018
    assert limited.value.status == 403
    assert limited.value.headers["x-ratelimit-remaining"] == "0"


def test_requests_github_would_refuse_are_refused(served: tuple[FakeGitHub, Github, str]) -> None:
    fake, _, url = served
    dispatches = f"{url}/repos/{REPO}/actions/workflows/sophie-pipeline.yml/dispatches"
    assert _raw(dispatches, "POST", {"inputs": {"a": "b"}})[0] == 422  # no ref
    assert _raw(dispatches, "POST", {"ref": "main", "inputs": "x"})[0] == 422
    too_many = {"ref": "main", "inputs": {f"k{i}": "v" for i in range(26)}}
    assert _raw(dispatches, "POST", too_many)[0] == 422
    status, body = _raw(dispatches, "POST", {"ref": "nope", "inputs": {}})
    assert status == 422 and "No ref found" in body["message"]
    assert _raw(dispatches, "POST", {"ref": "main"}, token="wrong")[0] == 401
    assert _raw(f"{url}/repos/{REPO}/deployments?per_page=abc", "GET", None)[0] == 422
    assert _raw(f"{url}/repos/evil/repo", "GET", None)[0] == 404
    assert len(fake.rejections) == 7
    assert fake.dispatches == []


def test_github_enterprise_refuses_run_details() -> None:
    fake = FakeGitHub(token=TOKEN, repos=(REPO,), ghes=True)
    server = ThreadedServer(fake.app).start()
    try:
        gh = Github(
            auth=Auth.Token(TOKEN),
            base_url=server.url,
            retry=None,
            lazy=True,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )
        workflow = gh.get_repo(REPO).get_workflow("sophie-pipeline.yml")
        with pytest.raises(GithubException) as refused:
            workflow.create_dispatch("main", inputs={}, throw=True, return_run_details=True)
        assert refused.value.status == 422 and "return_run_details" in str(refused.value.data)
        assert workflow.create_dispatch("main", inputs={}, throw=True) is True
        assert len(fake.runs) == 1
    finally:
        server.stop()


def test_the_spec_checker_itself() -> None:
    ok = github_spec.check_request(
        "POST",
        "/repos/a/b/actions/workflows/x.yml/dispatches",
        {},
        {"ref": "main", "inputs": {"a": "b"}, "return_run_details": True},
    )
    assert ok == []
    assert github_spec.check_request("GET", "/repos/a/b/nonsense", {}, None)
    assert github_spec.check_request("DELETE", "/repos/a/b", {}, None)
    assert github_spec.check_response("GET", "/repos/a/b/actions/runs/1", 200, {"id": "x"})
    assert github_spec.spec()["info"]["x-sophie-source"]["package"] == "@octokit/openapi"
