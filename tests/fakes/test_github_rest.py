"""The fake GitHub refuses what GitHub refuses, through the real PyGithub client."""

from __future__ import annotations

import json
import time
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
    for n in range(3):  # three environments: three concurrency groups, none waits
        workflow.create_dispatch("main", inputs={"plan_id": f"p{n}", "environment": f"e{n}"})
    time.sleep(fake.list_delay)  # GitHub lists a run a moment after the dispatch
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
    assert (limited.value.headers or {})["x-ratelimit-remaining"] == "0"


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


def _gh(url: str, token: str = TOKEN) -> Github:
    return Github(
        auth=Auth.Token(token),
        base_url=url,
        retry=None,
        lazy=True,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )


def test_a_newer_success_marks_older_deployments_inactive(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    """auto_inactive: older successful, non-production, non-transient deployments of the
    same environment get an "inactive" status; their "success" stays in the history."""
    fake, gh, _ = served
    repo = gh.get_repo(REPO)
    old = repo.create_deployment("a" * 40, environment="staging", required_contexts=[])
    old.create_status("success", environment_url="https://staging.example.test")
    failed = repo.create_deployment("b" * 40, environment="staging", required_contexts=[])
    failed.create_status("failure")
    prod = repo.create_deployment("a" * 40, environment="production", required_contexts=[])
    prod.create_status("success")
    new = repo.create_deployment("c" * 40, environment="staging", required_contexts=[])
    new.create_status("success")
    assert [s.state for s in old.get_statuses()] == ["inactive", "success"]
    assert [s.state for s in failed.get_statuses()] == ["failure"]  # never went live
    assert [s.state for s in prod.get_statuses()] == ["success"]  # production is exempt
    assert [s.state for s in new.get_statuses()] == ["success"]
    quiet = repo.create_deployment("d" * 40, environment="staging", required_contexts=[])
    quiet.create_status("success", auto_inactive=False)
    assert [s.state for s in new.get_statuses()] == ["success"]
    assert fake.rejections == []


def test_a_newer_run_cancels_the_pending_one_in_its_concurrency_group(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, gh, _ = served
    fake.auto_advance = False
    workflow = gh.get_repo(REPO).get_workflow("sophie-pipeline.yml")
    first, second, third = (
        workflow.create_dispatch(
            "main", inputs={"environment": "staging"}, throw=True, return_run_details=True
        )
        for _ in range(3)
    )
    assert isinstance(first, WorkflowRun) and isinstance(second, WorkflowRun)
    assert isinstance(third, WorkflowRun)
    fake.advance(first.id)  # running
    repo = gh.get_repo(REPO)
    look = {
        r.id: (r.status, r.conclusion)
        for r in (repo.get_workflow_run(x.id) for x in (first, second, third))
    }
    assert look == {
        first.id: ("in_progress", None),
        second.id: ("completed", "cancelled"),  # was pending; the third took its place
        third.id: ("pending", None),
    }
    other = workflow.create_dispatch(
        "main", inputs={"environment": "production"}, throw=True, return_run_details=True
    )
    assert isinstance(other, WorkflowRun)
    assert repo.get_workflow_run(other.id).status == "queued"  # another group
    fake.complete(first.id)
    assert repo.get_workflow_run(third.id).status == "queued"  # its turn
    fake.complete(third.id)
    assert repo.get_workflow_run(third.id).conclusion == "success"


def test_a_run_is_listed_a_moment_after_its_dispatch(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, gh, _ = served
    fake.list_delay = 0.3
    workflow = gh.get_repo(REPO).get_workflow("sophie-pipeline.yml")
    run = workflow.create_dispatch("main", inputs={}, throw=True, return_run_details=True)
    assert isinstance(run, WorkflowRun)
    assert [r.id for r in workflow.get_runs()] == []  # not yet
    assert gh.get_repo(REPO).get_workflow_run(run.id).id == run.id  # by id it is there
    time.sleep(0.3)
    assert [r.id for r in workflow.get_runs()] == [run.id]


def test_a_release_names_its_branch_and_its_tag_names_the_commit(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, gh, _ = served
    sha = "e" * 40
    fake.publish_release(REPO, sha, "v2.0.0", ["app.deb"])
    repo = gh.get_repo(REPO)
    (release,) = list(repo.get_releases())
    assert release.target_commitish == "main" and release.tag_name == "v2.0.0"
    assert {t.name: t.commit.sha for t in repo.get_tags()} == {"v2.0.0": sha}


def test_each_token_gets_only_what_it_was_granted(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    """Fine-grained tokens: 403 "Resource not accessible by personal access token" and
    X-Accepted-GitHub-Permissions naming the permission; a classic token states its scopes."""
    fake, gh, url = served
    fake.grant("github_pat_readonly", {"metadata": "read", "actions": "read"})
    readonly = _gh(url, "github_pat_readonly")
    workflow = readonly.get_repo(REPO).get_workflow("sophie-pipeline.yml")
    with pytest.raises(GithubException) as refused:
        workflow.create_dispatch("main", inputs={}, throw=True)
    assert refused.value.status == 403
    assert refused.value.data["message"] == "Resource not accessible by personal access token"
    assert (refused.value.headers or {})["x-accepted-github-permissions"] == "actions=write"
    with pytest.raises(GithubException) as checks:
        readonly.requester.requestJsonAndCheck("GET", f"/repos/{REPO}/check-runs/70000010")
    assert (checks.value.headers or {})["x-accepted-github-permissions"] == "checks=read"
    assert list(workflow.get_runs()) == []  # actions: read is enough to list
    assert fake.dispatches == []
    headers, _ = gh.requester.requestJsonAndCheck("GET", f"/repos/{REPO}")
    assert headers["x-oauth-scopes"] == "repo, workflow"
    assert (
        "x-oauth-scopes" not in readonly.requester.requestJsonAndCheck("GET", f"/repos/{REPO}")[0]
    )


def test_app_installations_carry_their_permissions(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from github import GithubIntegration

    fake, _, url = served
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    without_checks = {"metadata": "read", "actions": "write", "deployments": "read"}
    fake.install_app("4242", public, 7, permissions=without_checks)
    integration = GithubIntegration(auth=Auth.AppAuth("4242", private), base_url=url)
    assert integration.get_app_installation(7).raw_data["permissions"] == without_checks
    app = Github(auth=Auth.AppAuth("4242", private).get_installation_auth(7), base_url=url)
    with pytest.raises(GithubException) as refused:
        list(app.get_repo(REPO).get_releases())
    assert refused.value.data["message"] == "Resource not accessible by integration"
    assert (refused.value.headers or {})["x-accepted-github-permissions"] == "contents=read"
    assert fake.rejections[-1].status == 403


EMPTY_BLOB = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # `git hash-object /dev/null`


def test_compare_as_github_documents_it(served: tuple[FakeGitHub, Github, str]) -> None:
    """Status, files with their patch (none for binary, oversized or empty files, nor a
    pure rename), renames and deletions, branch names with slashes, and 404s."""
    fake, gh, _ = served
    base = fake.push(
        REPO,
        {"app.py": "a\nb\nc\n", "logo.png": b"\x89PNG\0\0", "old.txt": "keep\n", "gone.txt": "x\n"},
    )
    head = fake.push(
        REPO,
        {
            "app.py": "a\nB\nc\nd\n",
            "logo.png": b"\x89PNG\0\1",
            "old.txt": None,
            "moved/old.txt": "keep\n",
            "gone.txt": None,
            "big.txt": "".join(f"{n}\n" for n in range(20_001)),
            "pkg/__init__.py": "",
        },
        branch="sophie/plan_x",
        parent=base,
        message="sophie: plan_x",
    )
    repo = gh.get_repo(REPO)
    comparison = repo.compare("main", "sophie/plan_x")
    assert (comparison.status, comparison.ahead_by, comparison.behind_by) == ("ahead", 1, 0)
    assert comparison.merge_base_commit.sha == base
    files = {f.filename: f for f in comparison.files}
    app = files["app.py"]
    assert (app.status, app.additions, app.deletions) == ("modified", 2, 1)
    assert app.patch == "@@ -1,3 +1,4 @@\n a\n-b\n+B\n c\n+d"
    assert files["logo.png"].patch is None and files["logo.png"].additions == 0
    moved = files["moved/old.txt"]
    assert (moved.status, moved.previous_filename, moved.patch) == ("renamed", "old.txt", None)
    assert (files["gone.txt"].status, files["gone.txt"].patch) == ("removed", "@@ -1 +0,0 @@\n-x")
    big = files["big.txt"]
    assert (big.status, big.additions, big.patch) == ("added", 20_001, None)
    assert (files["pkg/__init__.py"].patch, files["pkg/__init__.py"].sha) == (None, EMPTY_BLOB)

    assert repo.compare(head, head).status == "identical"
    assert repo.compare(head, base).status == "behind"
    fake.push(REPO, {"other.txt": "meanwhile\n"})  # main moves on
    moved_on = repo.compare("main", head)
    assert (moved_on.status, moved_on.ahead_by, moved_on.behind_by) == ("diverged", 1, 1)
    assert "other.txt" not in {f.filename for f in moved_on.files}  # merge base → head
    assert repo.compare(base[:7], head[:10]).status == "ahead"
    with pytest.raises(GithubException) as unknown:
        repo.compare("main", "f" * 40).status  # noqa: B018
    assert unknown.value.status == 404
    assert [r.status for r in fake.rejections] == [404]


def test_compare_lists_at_most_300_files_on_the_first_page_only(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, _, url = served
    base = fake.push(REPO, {"README": "hi\n"})
    fake.push(REPO, {f"f{n:03}.txt": f"{n}\n" for n in range(301)}, branch="wide", parent=base)
    fake.push(REPO, {"f000.txt": "zero\n"}, branch="wide")
    head = fake.push(REPO, {"f001.txt": "one\n"}, branch="wide")
    compare = f"{url}/repos/{REPO}/compare/{base}...{head}"
    status, whole = _raw(compare, "GET", None)
    assert status == 200 and len(whole["files"]) == 300 and len(whole["commits"]) == 3
    status, first = _raw(compare + "?per_page=1&page=1", "GET", None)
    assert status == 200 and len(first["files"]) == 300 and len(first["commits"]) == 1
    status, second = _raw(compare + "?per_page=1&page=2", "GET", None)
    assert status == 200 and "files" not in second and len(second["commits"]) == 1
    assert (
        second["total_commits"] == 3 and second["commits"][0]["sha"] != first["commits"][0]["sha"]
    )
    assert fake.rejections == []
