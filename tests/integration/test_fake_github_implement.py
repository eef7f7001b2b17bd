"""The fake GitHub's two-phase flow for generated changes, through the real PyGithub.

Phase 1: a dispatch with ``action=implement`` runs verify then implement; the implement
job commits the implementer's files on ``sophie/<plan_id>`` from the run's head, opens a
draft pull request and reports the change as one ``sophie-change`` notice (or fails with
a ``sophie-implement`` error and pushes nothing). Phase 2: a dispatch on that branch runs
on its head, and what it deploys is that commit. ``verify_with`` fails the verify job.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from github import Auth, Github, GithubException
from github.Repository import Repository
from github.WorkflowRun import WorkflowRun

from tests.fakes.github_rest import (
    ARTIFACT_NOTICE,
    CHANGE_NOTICE,
    IMAGE_NOTICE,
    IMPLEMENT_FAILURE,
    VERIFY_FAILURE,
    FakeGitHub,
    Implemented,
)
from tests.fakes.server import ThreadedServer

TOKEN = "ghp_implement0123456789"
REPO = "acme/auth-service"
WORKFLOW = "sophie-pipeline.yml"
PLAN_ID = "plan_7f3a9c"
SERVICE = {
    "app/auth.py": "def login(user):\n    return check(user)\n",
    "app/legacy.py": "OLD = True\n",
    "tests/test_auth.py": "def test_login():\n    assert login('u')\n",
}
REPORT_KEYS = {
    "branch",
    "commit",
    "base",
    "pull_request",
    "files",
    "additions",
    "deletions",
    "tests",
}


@pytest.fixture()
def served() -> Iterator[tuple[FakeGitHub, Github, str]]:
    fake = FakeGitHub(token=TOKEN, repos=(REPO,))
    server = ThreadedServer(fake.app).start()
    gh = Github(
        auth=Auth.Token(TOKEN),
        base_url=server.url,
        retry=None,
        lazy=True,
        per_page=2,  # small pages: lists (annotations, pulls) are read across pages
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    yield fake, gh, server.url
    server.stop()


def _plan(plan_id: str = PLAN_ID) -> str:
    doc = {"id": plan_id, "target": {"repo": REPO, "implement": True}}
    return base64.b64encode(
        json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    ).decode()


def _inputs(action: str, **more: str) -> dict[str, str]:
    return {
        "plan_id": PLAN_ID,
        "plan_digest": "0" * 64,
        "environment": "staging",
        "action": action,
        "plan": _plan(),
        "correlation_id": f"c-{action}",
        **more,
    }


def _dispatch(gh: Github, ref: str, inputs: dict[str, str]) -> int:
    workflow = gh.get_repo(REPO).get_workflow(WORKFLOW)
    run = workflow.create_dispatch(ref, inputs=inputs, throw=True, return_run_details=True)
    assert isinstance(run, WorkflowRun)
    return int(run.id)


def _annotations(repo: Repository, run: WorkflowRun) -> dict[str, list[Any]]:
    """Each job's annotations (read as SOPHIE reads them: job → check run → annotations)."""
    found: dict[str, list[Any]] = {}
    for job in run.jobs():
        check_run = repo.get_check_run(int(job.check_run_url.rstrip("/").rsplit("/", 1)[1]))
        count = check_run.output.annotations_count
        found[job.name] = list(check_run.get_annotations())
        assert len(found[job.name]) == count
    return found


def test_implement_pushes_the_branch_opens_a_draft_and_reports_the_change(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, gh, _ = served
    base = fake.push(REPO, SERVICE)
    seen: list[tuple[dict[str, str], dict[str, str]]] = []

    def implementer(inputs: dict[str, str], tree: dict[str, str]) -> Implemented:
        seen.append((inputs, tree))
        return Implemented(
            files={
                "app/cache.py": "CACHE = {}\n",
                "app/auth.py": "from app.cache import CACHE\n\ndef login(user):\n"
                "    return CACHE.setdefault(user, check(user))\n",
                "app/legacy.py": None,
            },
            tests_summary="4 passed",
        )

    fake.implementer = implementer
    run_id = _dispatch(gh, "main", _inputs("implement"))
    repo = gh.get_repo(REPO)
    # One stage per look: verify done and implement running, then completed.
    assert [repo.get_workflow_run(run_id).status for _ in range(2)] == ["in_progress", "completed"]
    run = repo.get_workflow_run(run_id)
    assert (run.conclusion, run.head_sha, run.head_branch) == ("success", base, "main")
    assert [(j.name, j.conclusion) for j in run.jobs()] == [
        ("verify", "success"),
        ("implement", "success"),
    ]
    ((inputs, tree),) = seen
    assert inputs["action"] == "implement" and tree == SERVICE

    notes = _annotations(repo, run)
    assert notes["verify"] == []
    (note,) = notes["implement"]
    assert (note.title, note.annotation_level) == (CHANGE_NOTICE, "notice")
    report = json.loads(note.message)
    assert set(report) == REPORT_KEYS and note.message == json.dumps(report, separators=(",", ":"))
    branch = f"sophie/{PLAN_ID}"
    assert (report["branch"], report["base"]) == (branch, base)
    assert report["commit"] == fake.branch_head(REPO, branch) == fake.runs[run_id].commit
    assert report["tests"] == {
        "command": "python -m pytest -q",
        "passed": True,
        "summary": "4 passed",
    }

    # The change as GitHub compares it: one commit ahead of its base, with its patches.
    compare = repo.compare(report["base"], report["commit"])
    assert (compare.status, compare.ahead_by, compare.behind_by) == ("ahead", 1, 0)
    files = {f.filename: f for f in compare.files}
    assert {n: f.status for n, f in files.items()} == {
        "app/auth.py": "modified",
        "app/cache.py": "added",
        "app/legacy.py": "removed",
    }
    assert all(f.patch for f in files.values())
    assert report["files"] == 3
    assert report["additions"] == sum(f.additions for f in files.values()) == 4
    assert report["deletions"] == sum(f.deletions for f in files.values()) == 2
    assert repo.compare("main", branch).status == "ahead"

    # The draft pull request, as GitHub lists and gets it.
    (listed,) = list(repo.get_pulls(state="open", head=f"acme:{branch}", base="main"))
    assert listed.draft is True and listed.html_url == report["pull_request"]
    assert (listed.head.ref, listed.head.sha, listed.base.ref) == (branch, report["commit"], "main")
    pull = repo.get_pull(listed.number)
    assert (pull.draft, pull.state, pull.merged, pull.user.login) == (
        True,
        "open",
        False,
        "github-actions[bot]",
    )
    assert (pull.changed_files, pull.additions, pull.deletions) == (3, 4, 2)
    assert fake.pull_for(REPO, branch) is fake.runs[run_id].pull_request
    # A head filter without the owner is ignored by GitHub (every pull request is listed).
    assert [p.number for p in repo.get_pulls(head=branch)] == [listed.number]
    assert list(repo.get_pulls(head="acme:sophie/other")) == []
    assert list(repo.get_pulls(state="closed")) == []
    with pytest.raises(GithubException) as missing:
        repo.get_pull(99).title  # noqa: B018
    assert missing.value.status == 404

    # Phase 1 builds and deploys nothing.
    assert list(run.get_artifacts()) == [] and fake.deployments == []
    assert [r.status for r in fake.rejections] == [404]


def test_a_failed_implementation_pushes_nothing(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, gh, _ = served
    fake.push(REPO, SERVICE)
    fake.implementer = lambda inputs, tree: Implemented(
        files={"app/cache.py": "CACHE = {}\n"}, failure="tests failed:\n2 failed, 1 passed"
    )
    run_id = _dispatch(gh, "main", _inputs("implement"))
    fake.complete(run_id)
    repo = gh.get_repo(REPO)
    run = repo.get_workflow_run(run_id)
    assert run.conclusion == "failure"
    assert [(j.name, j.conclusion) for j in run.jobs()] == [
        ("verify", "success"),
        ("implement", "failure"),
    ]
    reason, exit_line = _annotations(repo, run)["implement"]
    assert (reason.title, reason.annotation_level) == (IMPLEMENT_FAILURE, "failure")
    assert reason.message == "tests failed: 2 failed, 1 passed"  # one line
    assert (exit_line.title, exit_line.message) == (None, "Process completed with exit code 1.")
    assert fake.branch_head(REPO, f"sophie/{PLAN_ID}") is None and fake.pulls == []
    assert list(repo.get_pulls(state="all")) == []

    # An implementer that changes nothing, or crashes, fails the job the same way.
    for implementer, why in (
        (lambda i, t: Implemented(files=dict(t)), "nothing to commit"),
        (lambda i, t: Implemented(files={"a": str(1 / 0)}), "ZeroDivisionError"),
    ):
        fake.implementer = implementer
        run_id = _dispatch(gh, "main", _inputs("implement"))
        fake.complete(run_id)
        run = repo.get_workflow_run(run_id)
        (reason, _) = _annotations(repo, run)["implement"]
        assert run.conclusion == "failure" and why in reason.message
    assert len(fake.errors) == 1 and fake.pulls == []


def test_the_deploy_of_the_change_runs_on_the_branch_head(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    """No history on main: the implement run gets the seed tree and the default
    implementer; then a deploy on ``sophie/<plan_id>`` deploys that commit."""
    fake, gh, _ = served
    implement = _dispatch(gh, "main", _inputs("implement"))
    fake.complete(implement)
    commit = fake.runs[implement].commit
    assert commit is not None and fake.runs[implement].head_sha == fake.branch_head(REPO, "main")
    repo = gh.get_repo(REPO)
    change = repo.compare(fake.runs[implement].head_sha, commit)
    assert [(f.filename, f.status) for f in change.files] == [("app/cache.py", "added")]

    branch = f"sophie/{PLAN_ID}"
    deploy = _dispatch(gh, branch, _inputs("deploy", deploy_sha=commit, artifacts="docker, deb"))
    fake.complete(deploy)
    run = repo.get_workflow_run(deploy)
    assert (run.head_sha, run.head_branch, run.conclusion) == (commit, branch, "success")
    (deployment,) = list(repo.get_deployments(sha=commit, environment="staging"))
    assert (deployment.sha, deployment.ref) == (commit, branch)
    assert next(iter(deployment.get_statuses())).state == "success"

    build = _annotations(repo, run)["build"]
    assert [(n.title, n.message) for n in build] == [
        (IMAGE_NOTICE, f"ghcr.io/{REPO}:{commit}"),
        (ARTIFACT_NOTICE, f"docker sha256:{fake.artifact_digest(REPO, commit, 'docker')}"),
        (ARTIFACT_NOTICE, f"deb sha256:{fake.artifact_digest(REPO, commit, 'deb')}"),
    ]
    assert all(len(n.message.rsplit(":", 1)[1]) == 64 for n in build[1:])
    # A second implementation of the same plan moves the branch and keeps its pull request.
    again = _dispatch(gh, "main", _inputs("implement"))
    fake.complete(again)
    assert fake.branch_head(REPO, branch) == fake.runs[again].commit != commit
    (pull,) = fake.pulls
    assert pull.head_sha == fake.runs[again].commit
    assert fake.rejections == []


def test_annotations_are_paged_as_github_pages_them(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, gh, url = served
    artifacts = ",".join(f"a{n}" for n in range(5))
    run_id = _dispatch(gh, "main", _inputs("build", artifacts=artifacts))
    fake.complete(run_id)
    check_run = f"{url}/repos/{REPO}/check-runs/{run_id * 10 + 1}/annotations"
    request = urllib.request.Request(
        check_run + "?per_page=2&page=2", headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(request) as reply:
        page = json.loads(reply.read())
        link = reply.headers["Link"]
    assert [n["message"].split()[0] for n in page] == ["a2", "a3"]
    assert link.endswith('page=3>; rel="next"')
    repo = gh.get_repo(REPO)
    notes = _annotations(repo, repo.get_workflow_run(run_id))["build"]  # 2 per page
    assert [n.message.split()[0] for n in notes] == [f"a{n}" for n in range(5)]
    assert fake.rejections == []


def test_dispatch_on_an_unknown_ref_is_refused(served: tuple[FakeGitHub, Github, str]) -> None:
    fake, gh, _ = served
    with pytest.raises(GithubException) as refused:
        _dispatch(gh, "sophie/nope", _inputs("deploy"))
    assert refused.value.status == 422
    assert refused.value.data["message"] == "No ref found for: sophie/nope"
    fake.publish_release(REPO, "c" * 40, "v1.0.0", [])
    tagged = _dispatch(gh, "v1.0.0", _inputs("deploy"))
    assert fake.runs[tagged].head_sha == "c" * 40  # a tag runs on the commit it names
    assert len(fake.runs) == 1 and len(fake.rejections) == 1


def test_verify_with_fails_the_verify_job_and_nothing_runs_after_it(
    served: tuple[FakeGitHub, Github, str],
) -> None:
    fake, gh, _ = served
    calls: list[tuple[str, str]] = []

    def verify(inputs: dict[str, str], head_sha: str, ref: str) -> str:
        assert ref == "refs/heads/main"
        calls.append((inputs["action"], head_sha))
        return "" if inputs["correlation_id"] == "ok" else "signature by an unknown key"

    fake.verify_with = verify
    fake.implementer = lambda inputs, tree: pytest.fail("the implement job ran")
    repo = gh.get_repo(REPO)
    for action, jobs in (
        ("deploy", ["verify", "build", "deploy-staging"]),
        ("implement", ["verify", "implement"]),
    ):
        run_id = _dispatch(gh, "main", _inputs(action))
        run = repo.get_workflow_run(run_id)  # one look: verify fails, the run ends
        assert (run.status, run.conclusion) == ("completed", "failure")
        conclusions = [(j.name, j.conclusion) for j in run.jobs()]
        assert conclusions == [(jobs[0], "failure"), *((j, "skipped") for j in jobs[1:])]
        reason, _ = _annotations(repo, run)["verify"]
        assert (reason.title, reason.annotation_level, reason.message) == (
            VERIFY_FAILURE,
            "failure",
            "signature by an unknown key",
        )
        assert calls[-1] == (action, fake.runs[run_id].head_sha)
    assert fake.deployments == [] and fake.pulls == []

    # A plan that verifies goes on as before.
    run_id = _dispatch(gh, "main", _inputs("deploy", correlation_id="ok"))
    fake.complete(run_id)
    assert repo.get_workflow_run(run_id).conclusion == "success"
    assert len(fake.deployments) == 1 and fake.errors == []
