"""A stateful fake of GitHub's REST API for Actions, Deployments and Releases.

Serve ``FakeGitHub().app`` with :class:`tests.fakes.server.ThreadedServer` and set
``GITHUB_API_URL`` to its URL. Every request is checked against GitHub's OpenAPI
description (``github_spec``) and refused with 422 when it breaks it; every reply
is checked too (a mismatch is a bug in the fake and fails loudly).

A dispatch creates a workflow run that moves, one step per look (or per
``advance``), from queued through the build and deploy jobs to completed; success
leaves artifacts and a deployment whose status carries the ``environment_url``.
With ``webhook_url`` set, each move is also delivered as signed webhooks.

It does what GitHub documents, not what SOPHIE would like (each behaviour cites the page):

- auto-inactive: a ``success`` status marks older successful deployments of the same
  repository and environment ``inactive`` (not for production or transient ones);
- concurrency: the template's ``concurrency`` group keeps one run going and one pending;
  a newer run cancels the pending one (``concurrency=`` per workflow, ``{}`` for none);
- a dispatched run is listed only a moment after the dispatch (``list_delay``);
- a release's ``target_commitish`` is the branch it was cut from; its tag names the commit;
- GitHub Enterprise Server (``ghes=True``) refuses ``return_run_details``;
- permissions per token: a fine-grained token or App installation without the
  permission an endpoint needs gets GitHub's 403 and ``X-Accepted-GitHub-Permissions``;
- commits pushed with ``push`` are compared as GitHub compares them (``github_git``):
  ahead/behind/identical/diverged, files on the first page only and at most 300 of them,
  no ``patch`` for binary or oversized files;
- a dispatch runs on the head of the branch (or tag) it names, and a ref the repository
  does not have is refused (422, "No ref found for: X");
- a run with ``action=implement`` has two jobs, verify and implement: the implement job
  calls ``implementer`` (see :class:`Implemented`), commits its files on
  ``sophie/<plan_id>`` from the run's head, opens a draft pull request and reports the
  change as a ``sophie-change`` notice on its check run (or fails with a
  ``sophie-implement`` error and pushes nothing);
- with ``verify_with`` set, the verify job fails (``sophie-verify``) when it gives a
  reason, and no later job runs;
- the build job reports ``sophie-image`` (docker) and one ``sophie-artifact`` notice per
  artifact asked for; annotations are paged like every list;
- pull requests are listed and got as GitHub serves them (``draft``, ``head``, ``base``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import github_spec
from tests.fakes.github_git import MAX_FILES, FileDiff, GitCommit, GitHistory, NotFound

BODY: web.RequestKey[Any] = web.RequestKey("body", object)
MAX_INPUTS = 25
MAX_INPUT_CHARS = 65_535
STAGES = (
    ("queued", None),
    ("in_progress", "build"),
    ("in_progress", "deploy-staging"),
    ("completed", None),
)
JOBS = ("verify", "build", "deploy-staging")
# A run with ``action=implement`` (phase 1 of a generated change): the template's
# "Verify the signed plan" then "Implement the change"; no build, no deployment.
IMPLEMENT_STAGES = (
    ("queued", None),
    ("in_progress", "implement"),
    ("completed", None),
)
IMPLEMENT_JOBS = ("verify", "implement")
# Annotation titles the template prints (``::notice title=T::message``, ``::error ...``).
IMAGE_NOTICE = "sophie-image"
ARTIFACT_NOTICE = "sophie-artifact"
CHANGE_NOTICE = "sophie-change"
IMPLEMENT_FAILURE = "sophie-implement"
VERIFY_FAILURE = "sophie-verify"
# What a branch with no commits yet holds when an implement run needs a tree to edit.
SEED_FILES = {
    "README.md": "# auth-service\n",
    "app/__init__.py": "",
    "app/auth.py": "def check(user):\n    return bool(user)\n\n\n"
    "def login(user):\n    return check(user)\n",
    "tests/test_auth.py": "from app.auth import login\n\n\n"
    "def test_login():\n    assert login('u')\n",
}
# The template's `concurrency: group: sophie-${{ github.repository }}-${{ inputs.environment }}`.
TEMPLATE_CONCURRENCY = "sophie-{repo}-{environment}"
# "Permissions required for fine-grained personal access tokens" / "for GitHub Apps"
# (https://docs.github.com/en/rest/authentication/permissions-required-for-fine-grained-personal-access-tokens):
# what each endpoint the fake serves needs, by (method, OpenAPI path).
PERMISSIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/repos/{owner}/{repo}"): ("metadata", "read"),
    ("GET", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}"): ("actions", "read"),
    ("POST", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches"): (
        "actions",
        "write",
    ),
    ("GET", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs"): ("actions", "read"),
    ("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}"): ("actions", "read"),
    ("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs"): ("actions", "read"),
    ("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}/artifacts"): ("actions", "read"),
    ("GET", "/repos/{owner}/{repo}/deployments"): ("deployments", "read"),
    ("POST", "/repos/{owner}/{repo}/deployments"): ("deployments", "write"),
    ("GET", "/repos/{owner}/{repo}/deployments/{deployment_id}"): ("deployments", "read"),
    ("GET", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"): ("deployments", "read"),
    ("POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"): (
        "deployments",
        "write",
    ),
    ("GET", "/repos/{owner}/{repo}/releases"): ("contents", "read"),
    ("GET", "/repos/{owner}/{repo}/releases/{release_id}/assets"): ("contents", "read"),
    ("GET", "/repos/{owner}/{repo}/tags"): ("contents", "read"),
    ("GET", "/repos/{owner}/{repo}/check-runs/{check_run_id}"): ("checks", "read"),
    ("GET", "/repos/{owner}/{repo}/check-runs/{check_run_id}/annotations"): ("checks", "read"),
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs"): ("checks", "read"),
    ("GET", "/repos/{owner}/{repo}/compare/{basehead}"): ("contents", "read"),
    ("GET", "/repos/{owner}/{repo}/pulls"): ("pull_requests", "read"),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"): ("pull_requests", "read"),
}
# What SOPHIE's README asks of a fine-grained token or GitHub App (and the fake's default).
FULL_PERMISSIONS = {
    "metadata": "read",
    "actions": "write",
    "deployments": "read",
    "contents": "read",
    "checks": "read",
}
_LEVELS = {"none": 0, "read": 1, "write": 2, "admin": 3}


def _pull_operations() -> dict[str, Any]:
    """The operations "List pull requests" and "Get a pull request", which
    ``github_spec.json`` (pruned to the operations SOPHIE called) does not have yet.

    Transcribed from the same @octokit/openapi 23.0.2 (``api.github.com.deref.json``, of
    the tarball whose sha256 ``github_spec.json`` records): parameters whole, replies
    pruned to the fields the fake sends (``required`` dropped: replies are checked for
    shape only). Once ``scripts/update-github-spec.py`` lists these two operations and
    the spec is regenerated, its entries take precedence (``_add_pull_operations``).
    """
    text, integer, boolean = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}

    def obj(**props: Any) -> dict[str, Any]:
        return {"type": "object", "properties": props}

    def null(kind: str) -> dict[str, Any]:
        return {"type": kind, "nullable": True}

    def user(nullable: bool = False) -> dict[str, Any]:
        schema = obj(
            login=text,
            id=integer,
            node_id=text,
            avatar_url=text,
            url=text,
            html_url=text,
            type=text,
            site_admin=boolean,
        )
        return {**schema, "nullable": True} if nullable else schema

    def end(nullable_user: bool) -> dict[str, Any]:
        repo = obj(
            id=integer,
            node_id=text,
            name=text,
            full_name=text,
            owner=user(),
            private=boolean,
            html_url=text,
            url=text,
            default_branch=text,
        )
        return obj(label=text, ref=text, repo=repo, sha=text, user=user(nullable_user))

    link = obj(href=text)
    urls = ("url", "html_url", "diff_url", "patch_url", "issue_url", "commits_url")
    more_urls = ("review_comments_url", "review_comment_url", "comments_url", "statuses_url")
    links = ("comments", "commits", "statuses", "html", "issue", "review_comments")

    def pull(full: bool) -> dict[str, Any]:
        props: dict[str, Any] = {
            **dict.fromkeys(urls + more_urls, text),
            "id": integer,
            "node_id": text,
            "number": integer,
            "state": {"enum": ["open", "closed"], "type": "string"} if full else text,
            "locked": boolean,
            "title": text,
            "user": user(nullable=not full),
            "body": null("string"),
            "labels": {"type": "array"},
            "milestone": null("object"),
            "active_lock_reason": null("string"),
            "created_at": text,
            "updated_at": text,
            "closed_at": null("string"),
            "merged_at": null("string"),
            "merge_commit_sha": null("string"),
            "assignee": null("object"),
            "assignees": {"type": "array"},
            "requested_reviewers": {"type": "array"},
            "requested_teams": {"type": "array"},
            "head": end(nullable_user=not full),
            "base": end(nullable_user=not full),
            "_links": obj(**dict.fromkeys((*links, "review_comment", "self"), link)),
            "author_association": {
                "type": "string",
                "enum": [
                    "COLLABORATOR",
                    "CONTRIBUTOR",
                    "FIRST_TIMER",
                    "FIRST_TIME_CONTRIBUTOR",
                    "MANNEQUIN",
                    "MEMBER",
                    "NONE",
                    "OWNER",
                ],
            },
            "auto_merge": null("object"),
            "draft": boolean,
        }
        if full:
            props.update(
                merged=boolean,
                mergeable=null("boolean"),
                rebaseable=null("boolean"),
                mergeable_state=text,
                merged_by=null("object"),
                maintainer_can_modify=boolean,
                **dict.fromkeys(
                    ("comments", "review_comments", "commits", "additions", "deletions"),
                    integer,
                ),
                changed_files=integer,
            )
        return {"type": "object", "properties": props}

    def path(name: str, kind: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}

    def query(name: str, **schema: Any) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    def ok(schema: dict[str, Any]) -> dict[str, Any]:
        return {"200": {"content": {"application/json": {"schema": schema}}}}

    return {
        "/repos/{owner}/{repo}/pulls": {
            "get": {
                "operationId": "pulls/list",
                "parameters": [
                    path("owner", "string"),
                    path("repo", "string"),
                    query("state", type="string", enum=["open", "closed", "all"], default="open"),
                    query("head", type="string"),
                    query("base", type="string"),
                    query(
                        "sort",
                        type="string",
                        enum=["created", "updated", "popularity", "long-running"],
                        default="created",
                    ),
                    query("direction", type="string", enum=["asc", "desc"]),
                    {
                        "name": "per_page",
                        "in": "query",
                        "schema": {"type": "integer", "default": 30},
                    },
                    {"name": "page", "in": "query", "schema": {"type": "integer", "default": 1}},
                ],
                "responses": ok({"type": "array", "items": pull(full=False)}),
            }
        },
        "/repos/{owner}/{repo}/pulls/{pull_number}": {
            "get": {
                "operationId": "pulls/get",
                "parameters": [
                    path("owner", "string"),
                    path("repo", "string"),
                    path("pull_number", "integer"),
                ],
                "responses": ok(pull(full=True)),
            }
        },
    }


def _add_pull_operations() -> None:
    """Teach ``github_spec`` the pull request operations it lacks (a no-op once it has them)."""
    paths = github_spec.spec()["paths"]
    missing = {t: e for t, e in _pull_operations().items() if t not in paths}
    if missing:
        paths.update(missing)
        github_spec._templates.cache_clear()  # the path templates are matched from a cache


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plan_id(inputs: Mapping[str, str]) -> str:
    """The dispatch's ``plan_id``, else the ``id`` of the plan document (``plan``: base64
    canonical JSON)."""
    if inputs.get("plan_id"):
        return inputs["plan_id"]
    try:
        doc = json.loads(base64.b64decode(inputs.get("plan", ""), validate=True))
    except ValueError:
        return ""
    return str(doc.get("id", "")) if isinstance(doc, dict) else ""


@dataclass
class Dispatch:
    repo: str
    workflow: str
    ref: str
    inputs: dict[str, str]


@dataclass
class Implemented:
    """What the implement job did: the files it changed and how its tests went.

    ``files`` maps a path to its new content (None deletes it); a non-empty ``failure``
    makes the job fail with that one-line reason and push nothing.
    """

    files: dict[str, str | None]
    tests_passed: bool = True
    tests_summary: str = "3 passed"
    test_command: str = "python -m pytest -q"
    failure: str = ""


# (dispatch inputs, the base commit's tree as {path: text}) → what the job did.
Implementer = Callable[[dict[str, str], dict[str, str]], Implemented]
# (dispatch inputs, the run's head sha) → why the plan does not verify ("" = it does).
# (dispatch inputs, the run's head sha, GITHUB_REF) → "" or why the verify job fails.
Verifier = Callable[[dict[str, str], str, str], str]

CACHE_MODULE = """\
\"\"\"A small in-process cache for user lookups.\"\"\"

from functools import lru_cache


@lru_cache(maxsize=1024)
def cached_user(user_id: str) -> str:
    return user_id
"""


def default_implementer(inputs: dict[str, str], tree: dict[str, str]) -> Implemented:
    """Adds a cache module (one new file), as the seed directive asks for."""
    return Implemented(files={"app/cache.py": CACHE_MODULE})


@dataclass
class PullRequest:
    """A pull request the implement job opened (draft, from ``sophie/<plan_id>``)."""

    number: int
    id: int
    repo: str
    head_ref: str
    head_sha: str
    base_ref: str
    base_sha: str
    title: str
    body: str
    run_id: int
    draft: bool = True
    state: str = "open"
    additions: int = 0
    deletions: int = 0
    changed_files: int = 0
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    @property
    def html_url(self) -> str:
        return f"https://github.com/{self.repo}/pull/{self.number}"


@dataclass
class Run:
    id: int
    repo: str
    workflow: str
    workflow_id: int
    ref: str
    head_sha: str
    inputs: dict[str, str]
    number: int
    stage: int = 0
    conclusion: str | None = None
    fail_job: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = field(default_factory=_now)
    group: str = ""  # the concurrency group it was queued in ("" = none)
    pending: bool = False  # waiting for its concurrency group
    listed_after: float = 0.0  # time.monotonic() from which run lists include it
    deployment: Deployment | None = None  # what its deploy (or rollback) job created
    # Annotations a job printed beyond the build's notices, by job index (shown once the
    # job has completed): the implement job's report, a failing job's reason.
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    implemented: Implemented | None = None  # what the implement job did (action=implement)
    commit: str | None = None  # the commit it pushed on ``sophie/<plan_id>``
    pull_request: PullRequest | None = None  # the draft pull request it opened

    @property
    def action(self) -> str:
        return self.inputs.get("action", "deploy") or "deploy"

    @property
    def stages(self) -> tuple[tuple[str, str | None], ...]:
        return IMPLEMENT_STAGES if self.action == "implement" else STAGES

    @property
    def jobs(self) -> tuple[str, ...]:
        return IMPLEMENT_JOBS if self.action == "implement" else JOBS

    @property
    def status(self) -> str:
        if self.pending:
            return "pending"
        if self.conclusion == "cancelled":
            return "completed"
        return self.stages[self.stage][0]

    @property
    def title(self) -> str:
        # What the template's run-name renders to.
        i = self.inputs
        return (
            f"SOPHIE {i.get('action', 'deploy')} {i.get('plan_id', '')} to "
            f"{i.get('environment', '')} [{i.get('correlation_id', '')}]"
        )


@dataclass
class Deployment:
    id: int
    repo: str
    sha: str
    ref: str
    environment: str
    created_at: str
    statuses: list[dict[str, Any]] = field(default_factory=list)  # newest first
    task: str = "deploy"
    payload: dict[str, Any] = field(default_factory=dict)
    transient: bool = False
    production: bool = False

    @property
    def succeeded(self) -> bool:
        return any(s["state"] == "success" for s in self.statuses)


@dataclass
class Release:
    id: int
    repo: str
    tag: str
    target_commitish: str  # the branch the release was cut from, as GitHub reports it
    assets: list[str]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int


@dataclass
class Rejection:
    method: str
    path: str
    status: int
    reasons: list[str]


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "Server Error"
    after: bool = False  # do the work, then fail: the reply is lost, not the request


class _Fail(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        injected: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.injected = injected  # a scripted fault, not a refusal of a bad request


class FakeGitHub:
    def __init__(
        self,
        token: str = "ghp_testtoken0123456789",
        repos: tuple[str, ...] = ("acme/auth-service",),
        workflows: tuple[str, ...] = ("sophie-pipeline.yml",),
        environment_url: str = "https://staging.acme.test/auth-service",
        branches: tuple[str, ...] = ("main",),
        ghes: bool = False,
        auto_advance: bool = True,
        artifacts: tuple[str, ...] = ("auth-service.deb", "sbom.spdx.json"),
        release_assets: tuple[str, ...] = (),
        environment_urls: dict[str, str] | None = None,
        concurrency: dict[str, str] | None = None,
        list_delay: float = 0.2,
    ) -> None:
        self.tokens = {token}
        # token → its permissions (fine-grained tokens, App installations); a token not
        # here is a classic PAT with the `repo` scope, which may do all the fake serves.
        self.token_permissions: dict[str, dict[str, str]] = {}
        self.token_scopes: dict[str, str] = {token: "repo, workflow"}
        self.repos = set(repos)
        self.workflows = {name: 1000 + n for n, name in enumerate(workflows)}
        # The URL a deployment's status reports, per environment (the template publishes
        # one per environment); environments not named get ``environment_url``.
        self.environment_url = environment_url
        self.environment_urls = dict(environment_urls or {})
        # Concurrency group per workflow, as the template declares it ({} = no group);
        # formatted with the run's repo and inputs.
        self.concurrency = (
            {name: TEMPLATE_CONCURRENCY for name in workflows}
            if concurrency is None
            else dict(concurrency)
        )
        # Runs appear in run lists this long after the dispatch (GitHub is not instant).
        self.list_delay = list_delay
        self.branches = set(branches)
        self.ghes = ghes
        self.auto_advance = auto_advance
        self.artifact_names = artifacts
        # When set, a successful run also publishes a release of its commit with these.
        self.release_assets = release_assets
        self.fail_job: str | None = None  # the next runs fail in this job
        self.runs: dict[int, Run] = {}
        self.dispatches: list[Dispatch] = []
        self.deployments: list[Deployment] = []
        self.releases: list[Release] = []
        self.requests: list[Request] = []
        self.rejections: list[Rejection] = []
        self.webhook_url: str | None = None
        self.webhook_secret: str = ""
        self.deliveries: list[dict[str, Any]] = []
        # GitHub Apps: app id → public key (PEM); installation id → app id, permissions.
        self.app_keys: dict[str, str] = {}
        self.installations: dict[int, str] = {}
        self.installation_permissions: dict[int, dict[str, str]] = {}
        self.tags: dict[tuple[str, str], str] = {}  # (repo, tag) → commit sha
        self.git = GitHistory()  # commits and branch heads (``push``; compare)
        # The implement job (action=implement): None → ``default_implementer``.
        self.implementer: Implementer | None = None
        # The verify job's check, opt-in: a non-empty reason fails it (``sophie-verify``).
        self.verify_with: Verifier | None = None
        # What a branch with no commits holds when an implement run needs a tree.
        self.seed_files: dict[str, str] = dict(SEED_FILES)
        self.pulls: list[PullRequest] = []  # pull requests opened, oldest first
        # Exceptions raised by ``implementer`` or ``verify_with`` (their job failed).
        self.errors: list[BaseException] = []
        self.installation_tokens: list[str] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(7_000_001)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        _add_pull_operations()
        self.app = web.Application(middlewares=[self._middleware])
        self.app.on_startup.append(self._started)
        self._routes()

    # -- control (tests) -----------------------------------------------------------

    def fail_next(
        self, method: str, path_regex: str, status: int = 502, times: int = 1, after: bool = False
    ) -> None:
        """Fail matching requests; with ``after`` the request takes effect and only the
        reply is an error (a dispatch that happened although GitHub answered 502)."""
        fault = _Fault(method.upper(), re.compile(path_regex), status, times, after=after)
        with self._lock:
            self._faults.append(fault)

    def rate_limit_next(self, kind: str = "primary", times: int = 1, wait: int = 1) -> None:
        if kind == "primary":
            headers = {
                "x-ratelimit-limit": "5000",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-used": "5000",
                "x-ratelimit-reset": str(int(time.time()) + wait),
                "x-ratelimit-resource": "core",
            }
            message = "API rate limit exceeded for installation ID 1."
        else:
            headers = {"retry-after": str(wait)}
            message = "You have exceeded a secondary rate limit. Please wait a few minutes."
        with self._lock:
            self._faults.append(_Fault("*", re.compile("."), 403, times, headers, message))

    def advance(self, run_id: int, stages: int = 1) -> None:
        with self._lock:
            for _ in range(stages):
                self._advance(self.runs[run_id])

    def complete(self, run_id: int, conclusion: str = "success") -> None:
        with self._lock:
            run = self.runs[run_id]
            if conclusion != "success":
                run.fail_job = run.fail_job or ("build" if "build" in run.jobs else run.jobs[-1])
            while run.status != "completed":
                if run.pending:
                    raise RuntimeError(f"run {run_id} is pending behind its concurrency group")
                self._advance(run)

    def seed_deployment(
        self, repo: str, sha: str, environment: str, state: str = "success", ref: str = "main"
    ) -> Deployment:
        """A deployment made before the test (its ``success`` applies auto-inactive)."""
        with self._lock:
            deployment = self._new_deployment(repo, sha, ref, environment)
            self._set_status(deployment, state, None)
            return deployment

    def publish_release(
        self, repo: str, sha: str, tag: str, assets: list[str], branch: str = "main"
    ) -> Release:
        """A release whose tag points at ``sha``, cut from ``branch``.

        "target_commitish: Specifies the commitish value that determines where the Git
        tag is created from. Can be any branch or commit SHA. Unused if the Git tag already
        exists. Default: the repository's default branch."
        (https://docs.github.com/en/rest/releases/releases#create-a-release): release
        workflows tag the commit and leave the default, so it reads as a branch name.
        """
        with self._lock:
            self.tags[(repo, tag)] = sha
            release = Release(next(self._ids), repo, tag, branch, assets)
            self.releases.append(release)
            return release

    def push(
        self,
        repo: str,
        files: Mapping[str, str | bytes | None],
        branch: str = "main",
        parent: str | None = None,
        message: str = "",
        merge: str | None = None,
    ) -> str:
        """A commit on ``branch`` (path → new content, None deletes; ``merge``: the second
        parent of a merge commit); returns its sha."""
        with self._lock:
            sha = self.git.push(repo, files, branch, parent, message, merge)
            self.branches.add(branch)
            return sha

    def branch_head(self, repo: str, branch: str) -> str | None:
        """The sha ``branch`` points at in the fake's git history (None: no such branch)."""
        with self._lock:
            return self.git.heads.get((repo, branch.removeprefix("refs/heads/")))

    def pull_for(self, repo: str, branch: str) -> PullRequest | None:
        """The newest pull request from ``branch`` (e.g. ``sophie/<plan_id>``), if any."""
        with self._lock:
            found = [p for p in self.pulls if p.repo == repo and p.head_ref == branch]
            return found[-1] if found else None

    @staticmethod
    def artifact_digest(repo: str, sha: str, name: str) -> str:
        """The sha256 the build job reports for artifact ``name`` of commit ``sha``."""
        return hashlib.sha256(f"{repo}@{sha}:{name}".encode()).hexdigest()

    def grant(self, token: str, permissions: dict[str, str]) -> None:
        """A fine-grained personal access token with exactly these permissions."""
        with self._lock:
            self.tokens.add(token)
            self.token_permissions[token] = dict(permissions)
            self.token_scopes.pop(token, None)

    def redeliver(self, delivery_id: str) -> None:
        with self._lock:
            delivery = next(d for d in self.deliveries if d["id"] == delivery_id)
        self._send_soon(delivery)

    # -- plumbing ------------------------------------------------------------------

    async def _started(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        query = dict(request.query)
        path = request.path
        token = ""
        try:
            token = self._authorise(request)
            self._inject_fault(request.method, path, after=False)
            reasons = github_spec.check_request(request.method, path, query, body)
            if reasons:
                raise _Fail(422, "Invalid request.\n\n" + "\n".join(reasons))
            request[BODY] = body
            response = await handler(request)
            self._inject_fault(request.method, path, after=True)
        except _Fail as exc:
            with self._lock:
                if not exc.injected:
                    self.rejections.append(
                        Rejection(request.method, path, exc.status, [exc.message])
                    )
                self.requests.append(Request(request.method, path, query, body, exc.status))
            payload = {"message": exc.message, "documentation_url": "https://docs.github.com/rest"}
            return web.json_response(payload, status=exc.status, headers=exc.headers)
        assert isinstance(response, web.Response)
        if response.body and response.content_type == "application/json":
            reply = json.loads(response.body)  # type: ignore[arg-type]
            problems = github_spec.check_response(request.method, path, response.status, reply)
            if problems:
                raise AssertionError(f"fake GitHub reply breaks the spec: {problems}")
        with self._lock:
            self.requests.append(Request(request.method, path, query, body, response.status))
            scopes = self.token_scopes.get(token)
        response.headers.update(self._rate_headers())
        if scopes is not None:
            # Classic tokens: "X-OAuth-Scopes lists the scopes your token has authorized"
            # (https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/scopes-for-oauth-apps).
            response.headers["X-OAuth-Scopes"] = scopes
        return response

    def _rate_headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "4999",
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-used": "1",
            "x-ratelimit-resource": "core",
            "x-github-request-id": uuid.uuid4().hex[:16].upper(),
        }

    def _authorise(self, request: web.Request) -> str:
        """The token, if it may call this endpoint.

        Fine-grained tokens and App installations need the endpoint's permission:
        "If your app makes a REST API request with insufficient permissions, the API will
        return a 403 response" with the ``X-Accepted-GitHub-Permissions`` header naming what
        would do (https://docs.github.com/en/rest/using-the-rest-api/troubleshooting-the-rest-api
        #insufficient-permission-errors); the message is "Resource not accessible by
        integration" for Apps and "... by personal access token" for fine-grained tokens.
        """
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if request.path.startswith("/app/"):
            return ""  # app JWTs are checked by the handler
        if scheme.lower() not in ("token", "bearer") or token not in self.tokens:
            raise _Fail(401, "Bad credentials")
        with self._lock:
            granted = self.token_permissions.get(token)
            app = token in self.installation_tokens
        need = PERMISSIONS.get((request.method, github_spec.match(request.path) or ""))
        if granted is not None and need is not None:
            name, level = need
            if _LEVELS.get(granted.get(name, "none"), 0) < _LEVELS[level]:
                who = "integration" if app else "personal access token"
                raise _Fail(
                    403,
                    f"Resource not accessible by {who}",
                    {"X-Accepted-GitHub-Permissions": f"{name}={level}"},
                )
        return token

    def _inject_fault(self, method: str, path: str, after: bool) -> None:
        with self._lock:
            for fault in self._faults:
                if fault.after != after:
                    continue
                if fault.method in ("*", method) and fault.path.search(path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    raise _Fail(fault.status, fault.message, dict(fault.headers), injected=True)

    def _base(self, request: web.Request) -> str:
        return f"http://{request.host}"

    def _repo(self, request: web.Request) -> str:
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}"
        if repo not in self.repos:
            raise _Fail(404, "Not Found")
        return repo

    def _workflow(self, request: web.Request) -> tuple[str, int]:
        key = request.match_info["workflow_id"]
        for name, wid in self.workflows.items():
            if key in (name, str(wid)):
                return name, wid
        raise _Fail(404, "Not Found")

    def _run(self, request: web.Request, repo: str) -> Run:
        run = self.runs.get(int(request.match_info["run_id"]))
        if run is None or run.repo != repo:
            raise _Fail(404, "Not Found")
        return run

    def _routes(self) -> None:
        r = self.app.router
        base = "/repos/{owner}/{repo}"
        r.add_get(base, self._get_repo)
        r.add_get(base + "/actions/workflows/{workflow_id}", self._get_workflow)
        r.add_post(base + "/actions/workflows/{workflow_id}/dispatches", self._dispatch)
        r.add_get(base + "/actions/workflows/{workflow_id}/runs", self._list_runs)
        r.add_get(base + "/actions/runs/{run_id}", self._get_run)
        r.add_get(base + "/actions/runs/{run_id}/jobs", self._get_jobs)
        r.add_get(base + "/actions/runs/{run_id}/artifacts", self._get_artifacts)
        r.add_get(base + "/deployments", self._list_deployments)
        r.add_post(base + "/deployments", self._create_deployment)
        r.add_get(base + "/deployments/{deployment_id}/statuses", self._list_statuses)
        r.add_post(base + "/deployments/{deployment_id}/statuses", self._create_status)
        r.add_get(base + "/releases", self._list_releases)
        r.add_get(base + "/releases/{release_id}/assets", self._list_assets)
        r.add_get(base + "/tags", self._list_tags)
        r.add_get(base + "/check-runs/{check_run_id}", self._check_run)
        r.add_get(base + "/check-runs/{check_run_id}/annotations", self._annotations)
        r.add_get(base + "/commits/{ref}/check-runs", self._check_runs_for_ref)
        r.add_get(base + "/compare/{basehead:.+}", self._compare)
        r.add_get(base + "/pulls", self._list_pulls)
        r.add_get(base + "/pulls/{pull_number}", self._get_pull)
        r.add_get("/rate_limit", self._rate_limit)
        r.add_post("/app/installations/{installation_id}/access_tokens", self._access_token)
        r.add_get("/app/installations/{installation_id}", self._installation)

    # -- shapes --------------------------------------------------------------------

    def _run_json(self, base: str, run: Run) -> dict[str, Any]:
        api = f"{base}/repos/{run.repo}/actions/runs/{run.id}"
        return {
            "id": run.id,
            "name": "SOPHIE pipeline",
            "node_id": f"WFR_{run.id}",
            "head_branch": run.ref,
            "head_sha": run.head_sha,
            "path": f".github/workflows/{run.workflow}",
            "display_title": run.title,
            "run_number": run.number,
            "run_attempt": 1,
            "event": "workflow_dispatch",
            "status": run.status,
            "conclusion": run.conclusion,
            "workflow_id": run.workflow_id,
            "url": api,
            "html_url": f"https://github.com/{run.repo}/actions/runs/{run.id}",
            "jobs_url": f"{api}/jobs",
            "artifacts_url": f"{api}/artifacts",
            "logs_url": f"{api}/logs",
            "cancel_url": f"{api}/cancel",
            "rerun_url": f"{api}/rerun",
            "workflow_url": f"{base}/repos/{run.repo}/actions/workflows/{run.workflow_id}",
            "created_at": run.created_at,
            "updated_at": _now(),
            "run_started_at": run.created_at,
            "pull_requests": [],
        }

    def _job_state(self, run: Run, n: int) -> tuple[str, str | None]:
        """Jobs run in order: verify, build, deploy-staging (stage 1 builds, 2 deploys);
        for an implement run, verify then implement (stage 1 implements)."""
        if run.conclusion == "cancelled":
            return "completed", "cancelled"
        if run.stage == len(run.stages) - 1:
            if run.fail_job in run.jobs:
                failed = run.jobs.index(run.fail_job)
                if n == failed:
                    return "completed", "failure"
                return "completed", ("success" if n < failed else "skipped")
            return "completed", "success"
        running = run.stage  # 0: none yet, 1: build (index 1), 2: deploy (index 2)
        if run.stage == 0:
            return "queued", None
        if n < running:
            return "completed", "success"
        if n == running:
            return "in_progress", None
        return "queued", None

    def _jobs_json(self, base: str, run: Run) -> list[dict[str, Any]]:
        jobs = []
        steps = {
            "verify": "Verify digest, signatures, expiry and quorum",
            "build": "Build artifacts",
            "deploy-staging": "Deploy",
            "implement": "Implement, test, push and open a draft pull request",
        }
        for n, name in enumerate(run.jobs):
            status, conclusion = self._job_state(run, n)
            started = status != "queued"
            jid = run.id * 10 + n
            jobs.append(
                {
                    "id": jid,
                    "run_id": run.id,
                    "run_url": f"{base}/repos/{run.repo}/actions/runs/{run.id}",
                    "node_id": f"J_{jid}",
                    "head_sha": run.head_sha,
                    "url": f"{base}/repos/{run.repo}/actions/jobs/{jid}",
                    "html_url": f"https://github.com/{run.repo}/actions/runs/{run.id}/job/{jid}",
                    "status": status,
                    "conclusion": conclusion,
                    "started_at": run.created_at,
                    "completed_at": _now() if status == "completed" else None,
                    "name": name,
                    "workflow_name": "SOPHIE pipeline",
                    "head_branch": run.ref,
                    "run_attempt": 1,
                    "labels": ["ubuntu-latest"],
                    "check_run_url": f"{base}/repos/{run.repo}/check-runs/{jid}",
                    "steps": [
                        {
                            "name": "Set up job",
                            "status": "completed" if started else "queued",
                            "conclusion": "success" if started else None,
                            "number": 1,
                        },
                        {
                            "name": steps[name],
                            "status": status,
                            "conclusion": conclusion,
                            "number": 2,
                        },
                    ],
                }
            )
        return jobs

    def url_of(self, environment: str) -> str:
        """The URL the template publishes for ``environment`` (one per environment)."""
        return self.environment_urls.get(environment, self.environment_url)

    def _new_deployment(
        self,
        repo: str,
        sha: str,
        ref: str,
        environment: str,
        task: str = "deploy",
        payload: dict[str, Any] | None = None,
        transient: bool = False,
        production: bool | None = None,
    ) -> Deployment:
        deployment = Deployment(
            next(self._ids),
            repo,
            sha,
            ref,
            environment,
            _now(),
            task=task,
            payload=dict(payload or {}),
            transient=transient,
            # "production_environment ... Default: true when environment is production"
            # (https://docs.github.com/en/rest/deployments/deployments#create-a-deployment)
            production=environment == "production" if production is None else production,
        )
        self.deployments.append(deployment)
        return deployment

    def _set_status(
        self,
        d: Deployment,
        state: str,
        run: Run | None,
        environment_url: str | None = None,
        log_url: str | None = None,
        auto_inactive: bool = True,
    ) -> dict[str, Any]:
        """Add a status (newest first) and tell the webhook.

        "auto_inactive: Adds a new inactive status to all prior non-transient,
        non-production environment deployments with the same repository and environment
        name as the created status's deployment. An inactive status is only added to
        deployments that had a success state. Default: true"
        (https://docs.github.com/en/rest/deployments/statuses#create-a-deployment-status).
        """
        sid = next(self._ids)
        if log_url is None:
            log_url = f"https://github.com/{d.repo}/actions/runs/{run.id}" if run else ""
        if environment_url is None:
            environment_url = self.url_of(d.environment) if state == "success" else ""
        status = {
            "id": sid,
            "node_id": f"DES_{sid}",
            "state": state,
            "description": "",
            "environment": d.environment,
            "environment_url": environment_url,
            "log_url": log_url,
            "target_url": log_url,
            "created_at": _now(),
            "updated_at": _now(),
            "url": "",
            "deployment_url": "",
            "repository_url": "",
        }
        d.statuses.insert(0, status)
        if state == "success" and auto_inactive:
            for older in self.deployments:
                if (
                    older.id < d.id
                    and older.repo == d.repo
                    and older.environment == d.environment
                    and not older.transient
                    and not older.production
                    and older.succeeded
                    and older.statuses[0]["state"] != "inactive"
                ):
                    self._set_status(older, "inactive", None, environment_url="", log_url="")
        self._emit(
            "deployment_status",
            {
                "action": "created",
                "deployment_status": status,
                "deployment": {"id": d.id, "sha": d.sha, "environment": d.environment},
                "repository": {"full_name": d.repo},
            },
        )
        return status

    def _deployment_json(self, base: str, d: Deployment) -> dict[str, Any]:
        api = f"{base}/repos/{d.repo}/deployments/{d.id}"
        return {
            "id": d.id,
            "node_id": f"DE_{d.id}",
            "sha": d.sha,
            "ref": d.ref,
            "task": d.task,
            "payload": d.payload,
            "environment": d.environment,
            "original_environment": d.environment,
            "description": None,
            "url": api,
            "statuses_url": f"{api}/statuses",
            "repository_url": f"{base}/repos/{d.repo}",
            "created_at": d.created_at,
            "updated_at": d.created_at,
            "transient_environment": d.transient,
            "production_environment": d.production,
        }

    # -- lifecycle -----------------------------------------------------------------

    def _advance(self, run: Run) -> None:
        if run.pending or run.status == "completed":
            return  # a pending run waits for its concurrency group
        if run.stage == 0 and self._verify_failed(run):
            run.stage = len(run.stages) - 1  # the later jobs are skipped: the run ends
        else:
            run.stage += 1
        if run.stages[run.stage][1] == "deploy-staging":
            self._deploy_job_started(run)
        if run.stages[run.stage][1] == "implement":
            self._implement(run)
        if run.stages[run.stage][0] == "completed":
            if run.fail_job:
                run.conclusion = "failure"
                if run.deployment is not None:
                    self._set_status(run.deployment, "failure", run)
            else:
                run.conclusion = "success"
                self._succeed(run)
        self._emit_run(run)
        if run.status == "completed":
            self._release_group(run)

    def _deploy_job_started(self, run: Run) -> None:
        """The deploy (or rollback) job creates its deployment when it starts.

        Deploy: "When a workflow job that references an environment runs, it creates a
        deployment object with the environment property set to the name of your
        environment" (https://docs.github.com/en/actions/reference/workflows-and-actions/
        deployments-and-environments), for the run's commit and branch. Rollback: the
        template's job creates it through the REST API with ``ref: deploy_sha``, so the
        deployment names the restored commit (ref and sha both the sha).
        """
        action = run.inputs.get("action", "deploy")
        if action not in ("deploy", "rollback") or run.fail_job in ("verify", "build"):
            return
        env = run.inputs.get("environment", "staging")
        if action == "rollback":
            sha = run.inputs.get("deploy_sha") or run.head_sha
            payload = {"sophie": {"plan_id": run.inputs.get("plan_id", ""), "action": action}}
            run.deployment = self._new_deployment(run.repo, sha, sha, env, payload=payload)
        else:
            run.deployment = self._new_deployment(run.repo, run.head_sha, run.ref, env)
        self._set_status(run.deployment, "in_progress", run)

    def _verify_failed(self, run: Run) -> bool:
        """The verify job ends as its first stage does: with ``verify_with`` set, it fails
        when that gives a reason (an implement run's ``fail_job="verify"`` fails it too),
        and a failed verify runs nothing after it."""
        reason = ""
        if run.fail_job == "verify":
            if run.action != "implement":
                return False  # a deploy run's scripted verify failure shows at its end
            reason = "the signed plan did not verify"
        elif self.verify_with is not None:
            try:
                ref = run.ref if run.ref.startswith("refs/") else f"refs/heads/{run.ref}"
                reason = self.verify_with(dict(run.inputs), run.head_sha, ref)
            except Exception as exc:  # the verify step crashed: the job fails
                self.errors.append(exc)
                reason = f"verify crashed: {type(exc).__name__}: {exc}"
        if not reason:
            return False
        run.fail_job = "verify"
        run.annotations[0] = self._failure_annotations(run, VERIFY_FAILURE, reason)
        return True

    def _annotation(self, run: Run, level: str, title: str | None, message: str) -> dict[str, Any]:
        """An annotation a workflow command makes: no file named, so GitHub puts it on
        ``.github`` line 1 (as the build's ``sophie-image`` notice)."""
        return {
            "path": ".github",
            "blob_href": f"https://github.com/{run.repo}/blob/{run.head_sha}/.github",
            "start_line": 1,
            "end_line": 1,
            "start_column": None,
            "end_column": None,
            "annotation_level": level,
            "title": title,
            "message": message,
            "raw_details": None,
        }

    def _failure_annotations(self, run: Run, title: str, reason: str) -> list[dict[str, Any]]:
        """``::error title=T::reason``, then the runner's own line for the failed step."""
        line = " ".join(reason.split())[:1000] or "failed"
        return [
            self._annotation(run, "failure", title, line),
            self._annotation(run, "failure", None, "Process completed with exit code 1."),
        ]

    def _implement(self, run: Run) -> None:
        """The implement job: the implementer's files committed on ``sophie/<plan_id>``
        from the run's head, pushed, a draft pull request opened, and the change reported
        as one ``sophie-change`` notice (compact JSON); on failure a ``sophie-implement``
        error and nothing pushed."""
        index = run.jobs.index("implement")
        plan_id = _plan_id(run.inputs)
        branch = f"sophie/{plan_id}"
        base = self.git.commits.get(run.repo, {}).get(run.head_sha)
        if base is None:  # e.g. a tag published with ``publish_release`` and never pushed
            run.fail_job = "implement"
            reason = f"checkout failed: {run.head_sha} is not in the fake's git history"
            run.annotations[index] = self._failure_annotations(run, IMPLEMENT_FAILURE, reason)
            return
        tree = {path: content.decode("utf-8", "replace") for path, content in base.tree.items()}
        if run.fail_job == "implement":
            outcome = Implemented(files={}, failure="the implement job failed")
        else:
            try:
                outcome = (self.implementer or default_implementer)(dict(run.inputs), tree)
            except Exception as exc:  # the implement step crashed: the job fails
                self.errors.append(exc)
                outcome = Implemented(files={}, failure=f"{type(exc).__name__}: {exc}")
        run.implemented = outcome
        new_tree = dict(base.tree)
        for path, content in outcome.files.items():
            if content is None:
                new_tree.pop(path, None)
            else:
                new_tree[path] = content.encode()
        failure = outcome.failure
        if not failure and not plan_id:
            failure = "no plan id: the branch sophie/<plan_id> cannot be named"
        if not failure and new_tree == base.tree:
            failure = "nothing to commit: the implementer changed no file"
        if failure:
            run.fail_job = "implement"
            run.annotations[index] = self._failure_annotations(run, IMPLEMENT_FAILURE, failure)
            return
        sha = self.push(
            run.repo,
            dict(outcome.files),
            branch=branch,
            parent=run.head_sha,
            message=f"SOPHIE: implement {plan_id}",
        )
        found = self.git.compare(run.repo, run.head_sha, sha)
        additions = sum(f.additions for f in found.files)
        deletions = sum(f.deletions for f in found.files)
        pull = self._open_pull(run, branch, sha, plan_id)
        pull.additions, pull.deletions, pull.changed_files = (
            additions,
            deletions,
            len(found.files),
        )
        run.commit, run.pull_request = sha, pull
        report = {
            "branch": branch,
            "commit": sha,
            "base": run.head_sha,
            "pull_request": pull.html_url,
            "files": len(found.files),
            "additions": additions,
            "deletions": deletions,
            "tests": {
                "command": outcome.test_command,
                "passed": outcome.tests_passed,
                "summary": outcome.tests_summary,
            },
        }
        message = json.dumps(report, separators=(",", ":"))
        run.annotations[index] = [self._annotation(run, "notice", CHANGE_NOTICE, message)]

    def _open_pull(self, run: Run, branch: str, sha: str, plan_id: str) -> PullRequest:
        """A draft pull request from ``branch`` into the run's branch ("draft: Indicates
        whether the pull request is a draft", https://docs.github.com/en/rest/pulls/pulls
        #create-a-pull-request). A branch pushed again keeps its open pull request, now
        at the new head: GitHub allows one open pull request per head and base ("A pull
        request already exists for ..." otherwise)."""
        for pull in self.pulls:
            if (pull.repo, pull.head_ref, pull.base_ref, pull.state) == (
                run.repo,
                branch,
                run.ref,
                "open",
            ):
                pull.head_sha, pull.base_sha, pull.run_id = sha, run.head_sha, run.id
                pull.updated_at = _now()
                return pull
        pull = PullRequest(
            number=1 + sum(1 for p in self.pulls if p.repo == run.repo),
            id=next(self._ids),
            repo=run.repo,
            head_ref=branch,
            head_sha=sha,
            base_ref=run.ref,
            base_sha=run.head_sha,
            title=f"SOPHIE: {plan_id}",
            body=(
                f"The change SOPHIE generated for plan {plan_id} "
                f"(https://github.com/{run.repo}/actions/runs/{run.id}). "
                "Draft: it deploys only after SOPHIE's checks and its approvals."
            ),
            run_id=run.id,
        )
        self.pulls.append(pull)
        return pull

    def _succeed(self, run: Run) -> None:
        action = run.inputs.get("action", "deploy")
        if action == "implement":
            return  # no artifacts, no release, no deployment: the change is the output
        for name in self.artifact_names if action != "rollback" else ():
            run.artifacts.append({"id": next(self._ids), "name": name})
        if self.release_assets and action != "rollback":
            # A release workflow tags the run's commit; the release reports the branch.
            tag = f"v1.0.{run.number}"
            self.tags[(run.repo, tag)] = run.head_sha
            self.releases.append(
                Release(next(self._ids), run.repo, tag, run.ref, list(self.release_assets))
            )
        if run.deployment is not None:
            self._set_status(run.deployment, "success", run)

    def _group_of(self, repo: str, workflow: str, inputs: dict[str, str]) -> str:
        template = self.concurrency.get(workflow)
        if not template:
            return ""
        values = {k: v for k, v in inputs.items() if isinstance(v, str)}
        values.setdefault("environment", "")
        # "Concurrency group names are case insensitive" (docs below).
        return template.format_map({**values, "repo": repo}).lower()

    def _queue_in_group(self, run: Run) -> None:
        """GitHub: "When a concurrent job or workflow is queued, if another job or workflow using
        the same concurrency group in the repository is in progress, the queued job or
        workflow will be pending. Any existing pending job or workflow in the same
        concurrency group, if it exists, will be canceled and the new queued job or
        workflow will take its place." (https://docs.github.com/en/actions/how-tos/
        write-workflows/choose-when-workflows-run/control-workflow-concurrency)"""
        if not run.group:
            return
        others = [r for r in self.runs.values() if r.group == run.group and r.id != run.id]
        if any(r.status != "completed" and not r.pending for r in others):
            run.pending = True
            for older in others:
                if older.pending:
                    older.pending = False
                    older.conclusion = "cancelled"
                    self._emit_run(older)

    def _release_group(self, run: Run) -> None:
        """The run in the group ended: the pending one (at most one) starts."""
        if not run.group:
            return
        waiting = [r for r in self.runs.values() if r.group == run.group and r.pending]
        for nxt in sorted(waiting, key=lambda r: r.id)[:1]:
            nxt.pending = False
            self._emit_run(nxt)

    # -- webhooks ------------------------------------------------------------------

    def _emit_run(self, run: Run) -> None:
        base = "https://api.github.com"
        action = {
            "pending": "requested",
            "queued": "requested",
            "in_progress": "in_progress",
            "completed": "completed",
        }
        self._emit(
            "workflow_run",
            {
                "action": action[run.status],
                "workflow_run": self._run_json(base, run),
                "repository": {"full_name": run.repo},
            },
        )
        current = run.stages[run.stage][1]
        if current:
            job = next(j for j in self._jobs_json(base, run) if j["name"] == current)
            self._emit(
                "workflow_job",
                {
                    "action": "in_progress",
                    "workflow_job": job,
                    "repository": {"full_name": run.repo},
                },
            )

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        body = json.dumps(payload).encode()
        signature = (
            "sha256=" + hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        )
        delivery = {"id": str(uuid.uuid4()), "event": event, "body": body, "signature": signature}
        self.deliveries.append(delivery)
        self._send_soon(delivery)

    def _send_soon(self, delivery: dict[str, Any]) -> None:
        if self._loop is None or self.webhook_url is None:
            return
        url = self.webhook_url

        async def send() -> None:
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": delivery["event"],
                "X-GitHub-Delivery": delivery["id"],
                "X-Hub-Signature-256": delivery["signature"],
                "User-Agent": "GitHub-Hookshot/fake",
            }
            delivery["sent_at"] = time.monotonic()  # for figures: delivery → thread edit
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.post(url, data=delivery["body"], headers=headers) as resp:
                        delivery["status"] = resp.status
            except aiohttp.ClientError as exc:
                delivery["status"] = f"error: {exc}"

        def schedule() -> None:
            task = asyncio.ensure_future(send())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._loop.call_soon_threadsafe(schedule)

    # -- handlers ------------------------------------------------------------------

    async def _get_repo(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        name = repo.split("/")[1]
        base = self._base(request)
        return web.json_response(
            {
                "id": abs(hash(repo)) % 10**8,
                "node_id": "R_1",
                "name": name,
                "full_name": repo,
                "private": True,
                "default_branch": "main",
                "url": f"{base}/repos/{repo}",
                "html_url": f"https://github.com/{repo}",
            }
        )

    async def _get_workflow(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        name, wid = self._workflow(request)
        return web.json_response(
            {
                "id": wid,
                "node_id": f"W_{wid}",
                "name": "SOPHIE pipeline",
                "path": f".github/workflows/{name}",
                "state": "active",
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
                "url": f"{self._base(request)}/repos/{repo}/actions/workflows/{wid}",
                "html_url": f"https://github.com/{repo}/actions/workflows/{name}",
                "badge_url": f"https://github.com/{repo}/workflows/SOPHIE/badge.svg",
            }
        )

    async def _dispatch(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        name, wid = self._workflow(request)
        body = request[BODY] or {}
        if self.ghes and "return_run_details" in body:
            # Run details came to github.com in February 2026 ("Workflow dispatch API now
            # returns run IDs", https://github.blog/changelog/2026-02-19-workflow-dispatch-
            # api-now-returns-run-ids); GitHub Enterprise Server validates the body against
            # its older schema and refuses the unknown key.
            raise _Fail(422, 'Invalid request.\n\n"return_run_details" is not a permitted key.')
        inputs = body.get("inputs") or {}
        if len(inputs) > MAX_INPUTS:
            raise _Fail(
                422,
                f"you may only define up to {MAX_INPUTS} `inputs` for a workflow_dispatch event",
            )
        if len(json.dumps(inputs)) > MAX_INPUT_CHARS:
            raise _Fail(422, f"inputs are too large: the maximum is {MAX_INPUT_CHARS} characters")
        if not all(isinstance(v, str) for v in inputs.values()):
            raise _Fail(422, "inputs must be strings")
        with self._lock:
            run_id = next(self._ids)
            ref, head_sha = self._dispatched_ref(repo, str(body["ref"]), run_id, inputs)
            implement = (inputs.get("action") or "deploy") == "implement"
            fail_job = self.fail_job
            if fail_job is not None and fail_job not in (IMPLEMENT_JOBS if implement else JOBS):
                fail_job = None  # the next runs fail in a job this run does not have
            run = Run(
                id=run_id,
                repo=repo,
                workflow=name,
                workflow_id=wid,
                ref=ref,
                head_sha=head_sha,
                inputs=dict(inputs),
                number=len(self.runs) + 1,
                fail_job=fail_job,
                group=self._group_of(repo, name, inputs),
                listed_after=time.monotonic() + self.list_delay,
            )
            self.runs[run_id] = run
            self.dispatches.append(Dispatch(repo, name, ref, dict(inputs)))
            self._queue_in_group(run)
            self._emit_run(run)
        if body.get("return_run_details"):
            return web.json_response(
                {
                    "workflow_run_id": run.id,
                    "run_url": f"{self._base(request)}/repos/{repo}/actions/runs/{run.id}",
                    "html_url": f"https://github.com/{repo}/actions/runs/{run.id}",
                }
            )
        return web.Response(status=204)

    def _dispatched_ref(
        self, repo: str, given: str, run_id: int, inputs: Mapping[str, str]
    ) -> tuple[str, str]:
        """(branch or tag, head sha) of a dispatch on ``given``.

        "ref: The git reference for the workflow. The reference can be a branch or tag
        name." (https://docs.github.com/en/rest/actions/workflows#create-a-workflow-
        dispatch-event); the run's ``GITHUB_SHA`` is the "Last commit on the GITHUB_REF
        branch or tag" (https://docs.github.com/en/actions/reference/workflows-and-actions/
        events-that-trigger-workflows#workflow_dispatch). A ref the repository does not
        have is refused with 422 "No ref found for: X" (the API's answer as clients
        report it, e.g. ``gh workflow run --ref``: "HTTP 422: No ref found for: ...").

        A branch with commits in ``git`` runs on its head; a branch the fake was only
        configured with (``branches``) runs on a sha of its own per run, as before, except
        that an implement run, which needs a tree to edit, first gets ``seed_files``
        committed there.
        """
        if given.startswith("refs/tags/"):
            tag = given.removeprefix("refs/tags/")
            if (repo, tag) in self.tags:
                return tag, self.tags[(repo, tag)]
            raise _Fail(422, f"No ref found for: {given}")
        ref = given.removeprefix("refs/heads/")
        if (repo, ref) in self.git.heads:
            return ref, self.git.heads[(repo, ref)]
        if ref in self.branches:
            if (inputs.get("action") or "deploy") == "implement":
                return ref, self.push(repo, self.seed_files, branch=ref, message="Initial commit")
            return ref, hashlib.sha1(f"{repo}:{run_id}".encode()).hexdigest()
        if (repo, ref) in self.tags:
            return ref, self.tags[(repo, ref)]
        raise _Fail(422, f"No ref found for: {given}")

    def _page(self, request: web.Request, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        per_page = min(100, int(request.query.get("per_page", "30")))
        page = max(1, int(request.query.get("page", "1")))
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(items):
            query = dict(request.query)
            query["page"] = str(page + 1)
            url = f"{self._base(request)}{request.path}?" + "&".join(
                f"{k}={v}" for k, v in query.items()
            )
            headers["Link"] = f'<{url}>; rel="next"'
        return chunk, headers

    async def _list_runs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        _, wid = self._workflow(request)
        q = request.query
        now = time.monotonic()
        with self._lock:
            runs = [
                r
                for r in sorted(self.runs.values(), key=lambda r: -r.id)
                if r.repo == repo
                and r.listed_after <= now  # listed a moment after the dispatch
                and r.workflow_id == wid
                and q.get("event", "workflow_dispatch") == "workflow_dispatch"
                and q.get("branch", r.ref) == r.ref
                and q.get("status", r.status) in (r.status, r.conclusion)
            ]
            chunk, headers = self._page(request, runs)
            base = self._base(request)
            body = {
                "total_count": len(runs),
                "workflow_runs": [self._run_json(base, r) for r in chunk],
            }
        return web.json_response(body, headers=headers)

    async def _get_run(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        with self._lock:
            run = self._run(request, repo)
            if self.auto_advance:
                self._advance(run)
            body = self._run_json(self._base(request), run)
        return web.json_response(body)

    async def _get_jobs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        with self._lock:
            run = self._run(request, repo)
            jobs = self._jobs_json(self._base(request), run)
        return web.json_response({"total_count": len(jobs), "jobs": jobs})

    async def _get_artifacts(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        base = self._base(request)
        with self._lock:
            run = self._run(request, repo)
            artifacts = [
                {
                    "id": a["id"],
                    "node_id": f"A_{a['id']}",
                    "name": a["name"],
                    "size_in_bytes": 1024,
                    "url": f"{base}/repos/{repo}/actions/artifacts/{a['id']}",
                    "archive_download_url": f"{base}/repos/{repo}/actions/artifacts/{a['id']}/zip",
                    "expired": False,
                    "created_at": _now(),
                    "expires_at": "2027-01-01T00:00:00Z",
                    "updated_at": _now(),
                    "digest": None,
                    "workflow_run": {"id": run.id, "head_sha": run.head_sha},
                }
                for a in run.artifacts
            ]
        return web.json_response({"total_count": len(artifacts), "artifacts": artifacts})

    async def _list_deployments(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        q = request.query
        with self._lock:
            found = [
                d
                for d in reversed(self.deployments)  # newest first, as GitHub lists them
                if d.repo == repo
                and q.get("sha", d.sha) == d.sha
                and q.get("environment", d.environment) == d.environment
                and q.get("ref", d.ref) == d.ref
            ]
            chunk, headers = self._page(request, found)
            body = [self._deployment_json(self._base(request), d) for d in chunk]
        return web.json_response(body, headers=headers)

    async def _list_statuses(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        did = int(request.match_info["deployment_id"])
        with self._lock:
            deployment = next((d for d in self.deployments if d.id == did and d.repo == repo), None)
            if deployment is None:
                raise _Fail(404, "Not Found")
            statuses = list(deployment.statuses)
        return web.json_response(statuses)

    async def _create_deployment(self, request: web.Request) -> web.Response:
        """POST /deployments, as the template's rollback job calls it (``ref: deploy_sha``).

        "The ref parameter can be any named branch, tag, or SHA"; "required_contexts ...
        To bypass checking entirely, pass an empty array"
        (https://docs.github.com/en/rest/deployments/deployments#create-a-deployment).
        The fake has no commit statuses, so every context check passes.
        """
        repo = self._repo(request)
        body = request[BODY] or {}
        ref = str(body["ref"])
        if re.fullmatch(r"[0-9a-f]{40}", ref):
            sha = ref
        elif (repo, ref.removeprefix("refs/heads/")) in self.git.heads:
            sha = self.git.heads[(repo, ref.removeprefix("refs/heads/"))]
        elif ref.removeprefix("refs/heads/") in self.branches:
            with self._lock:
                heads = [r.head_sha for r in self.runs.values() if r.repo == repo]
            sha = heads[-1] if heads else hashlib.sha1(f"{repo}:{ref}".encode()).hexdigest()
        elif (repo, ref) in self.tags:
            sha = self.tags[(repo, ref)]
        else:
            raise _Fail(422, f"No ref found for: {ref}")
        payload = body.get("payload") or {}
        if isinstance(payload, str):
            payload = json.loads(payload) if payload else {}
        with self._lock:
            deployment = self._new_deployment(
                repo,
                sha,
                ref,
                str(body.get("environment", "production")),
                task=str(body.get("task", "deploy")),
                payload=payload,
                transient=bool(body.get("transient_environment", False)),
                production=body.get("production_environment"),
            )
            reply = self._deployment_json(self._base(request), deployment)
        return web.json_response(reply, status=201)

    async def _create_status(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        did = int(request.match_info["deployment_id"])
        body = request[BODY] or {}
        with self._lock:
            deployment = next((d for d in self.deployments if d.id == did and d.repo == repo), None)
            if deployment is None:
                raise _Fail(404, "Not Found")
            log = body.get("log_url", body.get("target_url", ""))
            status = self._set_status(
                deployment,
                str(body["state"]),
                None,
                environment_url=str(body.get("environment_url", "")),
                log_url=str(log or ""),
                auto_inactive=bool(body.get("auto_inactive", True)),
            )
        return web.json_response(status, status=201)

    async def _list_tags(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        base = self._base(request)
        with self._lock:
            found = [(tag, sha) for (r, tag), sha in reversed(self.tags.items()) if r == repo]
            chunk, headers = self._page(request, found)
            body = [
                {
                    "name": tag,
                    "commit": {"sha": sha, "url": f"{base}/repos/{repo}/commits/{sha}"},
                    "zipball_url": f"{base}/repos/{repo}/zipball/{tag}",
                    "tarball_url": f"{base}/repos/{repo}/tarball/{tag}",
                    "node_id": f"T_{tag}",
                }
                for tag, sha in chunk
            ]
        return web.json_response(body, headers=headers)

    async def _list_releases(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        base = self._base(request)
        with self._lock:
            found = [r for r in reversed(self.releases) if r.repo == repo]
            body = [
                {
                    "id": r.id,
                    "node_id": f"RE_{r.id}",
                    "tag_name": r.tag,
                    "target_commitish": r.target_commitish,
                    "name": r.tag,
                    "draft": False,
                    "prerelease": False,
                    "created_at": _now(),
                    "published_at": _now(),
                    "url": f"{base}/repos/{repo}/releases/{r.id}",
                    "assets_url": f"{base}/repos/{repo}/releases/{r.id}/assets",
                    "html_url": f"https://github.com/{repo}/releases/tag/{r.tag}",
                    "upload_url": f"https://uploads.github.com/repos/{repo}/releases/{r.id}/assets{{?name,label}}",
                    "assets": [],
                }
                for r in found
            ]
        return web.json_response(body)

    async def _list_assets(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        rid = int(request.match_info["release_id"])
        with self._lock:
            release = next((r for r in self.releases if r.id == rid and r.repo == repo), None)
            if release is None:
                raise _Fail(404, "Not Found")
            body = [
                {
                    "id": rid * 100 + n,
                    "node_id": f"RA_{rid}_{n}",
                    "name": name,
                    "label": None,
                    "state": "uploaded",
                    "content_type": "application/octet-stream",
                    "size": 2048,
                    "download_count": 0,
                    "created_at": _now(),
                    "updated_at": _now(),
                    "url": f"{self._base(request)}/repos/{repo}/releases/assets/{rid * 100 + n}",
                    "browser_download_url": f"https://github.com/{repo}/releases/download/{release.tag}/{name}",
                }
                for n, name in enumerate(release.assets)
            ]
        return web.json_response(body)

    def _job_of_check_run(self, request: web.Request, repo: str) -> tuple[Run, int]:
        """Check runs share ids with jobs here (job id = run id * 10 + index)."""
        cid = int(request.match_info["check_run_id"])
        run = self.runs.get(cid // 10)
        if run is None or run.repo != repo or cid % 10 >= len(run.jobs):
            raise _Fail(404, "Not Found")
        return run, cid % 10

    async def _check_run(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        base = self._base(request)
        with self._lock:
            run, n = self._job_of_check_run(request, repo)
            status, conclusion = self._job_state(run, n)
            cid = run.id * 10 + n
            url = f"{base}/repos/{repo}/check-runs/{cid}"
            body = {
                "id": cid,
                "node_id": f"CR_{cid}",
                "name": run.jobs[n],
                "head_sha": run.head_sha,
                "status": status,
                "conclusion": conclusion,
                "url": url,
                "html_url": f"https://github.com/{repo}/runs/{cid}",
                "details_url": f"https://github.com/{repo}/actions/runs/{run.id}/job/{cid}",
                "external_id": str(cid),
                "started_at": run.created_at,
                "completed_at": _now() if status == "completed" else None,
                "output": {
                    "title": None,
                    "summary": None,
                    "text": None,
                    "annotations_count": len(self._notices(run, n)),
                    "annotations_url": f"{url}/annotations",
                },
                "pull_requests": [],
            }
        return web.json_response(body)

    def _notices(self, run: Run, n: int) -> list[dict[str, Any]]:
        """What a job printed as annotations, once it has completed: the build's
        ``sophie-image`` (docker) and one ``sophie-artifact`` per artifact it was asked
        for (``<name> sha256:<hex>``); the implement job's report or reason; a failed
        verify's reason."""
        if self._job_state(run, n)[0] != "completed":
            return []
        found = list(run.annotations.get(n, []))
        built = run.stage == len(run.stages) - 1 and self._job_state(run, n) == (
            "completed",
            "success",
        )
        if run.jobs[n] != "build" or not built:
            return found
        wanted = run.inputs.get("artifacts", "")
        if "docker" in wanted:
            found.append(
                self._annotation(run, "notice", IMAGE_NOTICE, f"ghcr.io/{run.repo}:{run.head_sha}")
            )
        for name in dict.fromkeys(a.strip() for a in wanted.split(",") if a.strip()):
            digest = self.artifact_digest(run.repo, run.head_sha, name)
            found.append(
                self._annotation(run, "notice", ARTIFACT_NOTICE, f"{name} sha256:{digest}")
            )
        return found

    async def _check_runs_for_ref(self, request: web.Request) -> web.Response:
        """GET /commits/{ref}/check-runs: ``sophie doctor`` reads it to prove Checks: read."""
        repo = self._repo(request)
        ref = request.match_info["ref"]
        base = self._base(request)
        with self._lock:
            runs = [r for r in self.runs.values() if r.repo == repo and ref in (r.head_sha, r.ref)]
            checks = []
            for run in runs[-10:]:
                for n, name in enumerate(run.jobs):
                    status, conclusion = self._job_state(run, n)
                    cid = run.id * 10 + n
                    checks.append(
                        {
                            "id": cid,
                            "node_id": f"CR_{cid}",
                            "name": name,
                            "head_sha": run.head_sha,
                            "status": status,
                            "conclusion": conclusion,
                            "url": f"{base}/repos/{repo}/check-runs/{cid}",
                            "html_url": f"https://github.com/{repo}/runs/{cid}",
                            "details_url": None,
                            "external_id": str(cid),
                            "started_at": run.created_at,
                            "completed_at": None,
                            "pull_requests": [],
                        }
                    )
        return web.json_response({"total_count": len(checks), "check_runs": checks})

    async def _annotations(self, request: web.Request) -> web.Response:
        """List check run annotations: paged (``per_page``, default 30, at most 100;
        ``page``) with a ``Link`` header to the next page, as every list is
        (https://docs.github.com/en/rest/checks/runs#list-check-run-annotations)."""
        repo = self._repo(request)
        with self._lock:
            run, n = self._job_of_check_run(request, repo)
            notices = self._notices(run, n)
            chunk, headers = self._page(request, notices)
        return web.json_response(chunk, headers=headers)

    def install_app(
        self,
        app_id: str,
        public_key_pem: str,
        installation_id: int,
        permissions: dict[str, str] | None = None,
    ) -> None:
        """An App installation; its tokens carry ``permissions`` (default: what SOPHIE needs)."""
        with self._lock:
            self.app_keys[app_id] = public_key_pem
            self.installations[installation_id] = app_id
            self.installation_permissions[installation_id] = dict(
                FULL_PERMISSIONS if permissions is None else permissions
            )

    async def _access_token(self, request: web.Request) -> web.Response:
        """An installation token for a JWT signed by the App's private key (RS256)."""
        installation = int(request.match_info["installation_id"])
        self._app_of_jwt(request, installation)
        issued = f"ghs_{uuid.uuid4().hex}"
        with self._lock:
            permissions = dict(self.installation_permissions.get(installation, FULL_PERMISSIONS))
            self.tokens.add(issued)
            self.installation_tokens.append(issued)
            self.token_permissions[issued] = permissions
        expires = datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(
            {
                "token": issued,
                "expires_at": expires,
                "permissions": permissions,
                "repository_selection": "all",
            },
            status=201,
        )

    def _app_of_jwt(self, request: web.Request, installation: int) -> str:
        """The App whose private key signed the request's JWT (RS256), for this installation."""
        import jwt

        app_id = self.installations.get(installation)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if app_id is None:
            raise _Fail(404, "Not Found")
        if scheme.lower() != "bearer":
            raise _Fail(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(token, self.app_keys[app_id], algorithms=["RS256"])
        except jwt.PyJWTError as exc:
            raise _Fail(401, f"A JSON web token could not be decoded: {exc}") from exc
        if str(claims.get("iss")) != app_id or claims["exp"] - claims["iat"] > 600:
            raise _Fail(401, "'Expiration time' claim ('exp') is too far in the future")
        return app_id

    async def _installation(self, request: web.Request) -> web.Response:
        """GET /app/installations/{id}: what the installation may do (its permissions)."""
        installation = int(request.match_info["installation_id"])
        app_id = self._app_of_jwt(request, installation)
        with self._lock:
            permissions = dict(self.installation_permissions.get(installation, FULL_PERMISSIONS))
        return web.json_response(
            {
                "id": installation,
                "app_id": int(app_id),
                "target_id": 1,
                "target_type": "Organization",
                "account": None,
                "repository_selection": "all",
                "access_tokens_url": f"{self._base(request)}/app/installations/"
                f"{installation}/access_tokens",
                "repositories_url": f"{self._base(request)}/installation/repositories",
                "html_url": f"https://github.com/settings/installations/{installation}",
                "permissions": permissions,
                "events": ["workflow_run", "workflow_job", "deployment_status"],
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
                "single_file_name": None,
                "app_slug": "sophie",
                "suspended_by": None,
                "suspended_at": None,
            }
        )

    def _commit_json(self, base: str, repo: str, commit: GitCommit) -> dict[str, Any]:
        api = f"{base}/repos/{repo}"
        return {
            "sha": commit.sha,
            "node_id": f"C_{commit.sha[:12]}",
            "url": f"{api}/commits/{commit.sha}",
            "html_url": f"https://github.com/{repo}/commit/{commit.sha}",
            "comments_url": f"{api}/commits/{commit.sha}/comments",
            "commit": {
                "url": f"{api}/git/commits/{commit.sha}",
                "message": commit.message,
                "comment_count": 0,
                "tree": {"sha": commit.sha, "url": f"{api}/git/trees/{commit.sha}"},
            },
            "parents": [
                {
                    "sha": p,
                    "url": f"{api}/commits/{p}",
                    "html_url": f"https://github.com/{repo}/commit/{p}",
                }
                for p in commit.parents
            ],
        }

    def _file_json(self, repo: str, head: str, f: FileDiff) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "sha": f.blob_sha,
            "filename": f.filename,
            "status": f.status,
            "additions": f.additions,
            "deletions": f.deletions,
            "changes": f.additions + f.deletions,
            "blob_url": f"https://github.com/{repo}/blob/{head}/{f.filename}",
            "raw_url": f"https://github.com/{repo}/raw/{head}/{f.filename}",
            "contents_url": f"https://api.github.com/repos/{repo}/contents/{f.filename}?ref={head}",
        }
        if f.patch is not None:
            entry["patch"] = f.patch
        if f.previous_filename is not None:
            entry["previous_filename"] = f.previous_filename
        return entry

    async def _compare(self, request: web.Request) -> web.Response:
        """Compare two commits (https://docs.github.com/en/rest/commits/commits#compare-two-commits).

        ``BASE...HEAD``; an unknown ref or unrelated histories: 404. "When calling this
        endpoint without any paging parameter (``per_page`` or ``page``), the returned list
        is limited to 250 commits"; with them, commits are paged and "The list of changed
        files is only shown on the first page of results, and it includes up to 300
        changed files for the entire comparison."
        """
        repo = self._repo(request)
        base_ref, dots, head_ref = request.match_info["basehead"].partition("...")
        if not dots or not base_ref or not head_ref:
            raise _Fail(404, "Not Found")
        with self._lock:
            try:
                found = self.git.compare(repo, base_ref, head_ref)
            except NotFound as exc:
                raise _Fail(404, "Not Found") from exc
        paged = "page" in request.query or "per_page" in request.query
        page = max(1, int(request.query.get("page", "1")))
        per_page = min(100, int(request.query.get("per_page", "30"))) if paged else 250
        commits = found.ahead[(page - 1) * per_page : page * per_page]
        base = self._base(request)
        api = f"{base}/repos/{repo}"
        basehead = request.match_info["basehead"]
        head_sha = self.git.resolve(repo, head_ref).sha
        body: dict[str, Any] = {
            "url": f"{api}/compare/{basehead}",
            "html_url": f"https://github.com/{repo}/compare/{basehead}",
            "permalink_url": f"https://github.com/{repo}/compare/{found.base.sha}...{head_sha}",
            "diff_url": f"https://github.com/{repo}/compare/{basehead}.diff",
            "patch_url": f"https://github.com/{repo}/compare/{basehead}.patch",
            "base_commit": self._commit_json(base, repo, found.base),
            "merge_base_commit": self._commit_json(base, repo, found.merge_base),
            "status": found.status,
            "ahead_by": len(found.ahead),
            "behind_by": found.behind_by,
            "total_commits": len(found.ahead),
            "commits": [self._commit_json(base, repo, c) for c in commits],
        }
        if page == 1:
            body["files"] = [self._file_json(repo, head_sha, f) for f in found.files[:MAX_FILES]]
        headers = {}
        if paged and page * per_page < len(found.ahead):
            query = {**request.query, "page": str(page + 1)}
            link = f"{base}{request.path}?" + "&".join(f"{k}={v}" for k, v in query.items())
            headers["Link"] = f'<{link}>; rel="next"'
        return web.json_response(body, headers=headers)

    def _pull_json(self, base: str, pull: PullRequest, full: bool) -> dict[str, Any]:
        """A pull request as GitHub lists it ("pull-request-simple") or gets it (``full``:
        with ``merged``, ``mergeable_state``, the diff's size, ...). Opened by the
        workflow's ``GITHUB_TOKEN``, its author is ``github-actions[bot]``."""
        api = f"{base}/repos/{pull.repo}"
        owner = pull.repo.split("/")[0]
        bot = {
            "login": "github-actions[bot]",
            "id": 41898282,
            "node_id": "MDM6Qm90NDE4OTgyODI=",
            "avatar_url": "https://avatars.githubusercontent.com/in/15368?v=4",
            "url": f"{base}/users/github-actions%5Bbot%5D",
            "html_url": "https://github.com/apps/github-actions",
            "type": "Bot",
            "site_admin": False,
        }
        org = {
            "login": owner,
            "id": abs(hash(owner)) % 10**8,
            "node_id": f"O_{owner}",
            "avatar_url": f"https://avatars.githubusercontent.com/{owner}",
            "url": f"{base}/users/{owner}",
            "html_url": f"https://github.com/{owner}",
            "type": "Organization",
            "site_admin": False,
        }
        repository = {
            "id": abs(hash(pull.repo)) % 10**8,
            "node_id": "R_1",
            "name": pull.repo.split("/")[1],
            "full_name": pull.repo,
            "owner": org,
            "private": True,
            "html_url": f"https://github.com/{pull.repo}",
            "url": api,
            "default_branch": "main",
        }

        def end(ref: str, sha: str) -> dict[str, Any]:
            return {
                "label": f"{owner}:{ref}",
                "ref": ref,
                "sha": sha,
                "user": org,
                "repo": repository,
            }

        html = pull.html_url
        body: dict[str, Any] = {
            "url": f"{api}/pulls/{pull.number}",
            "id": pull.id,
            "node_id": f"PR_{pull.id}",
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": f"{api}/issues/{pull.number}",
            "commits_url": f"{api}/pulls/{pull.number}/commits",
            "review_comments_url": f"{api}/pulls/{pull.number}/comments",
            "review_comment_url": f"{api}/pulls/comments{{/number}}",
            "comments_url": f"{api}/issues/{pull.number}/comments",
            "statuses_url": f"{api}/statuses/{pull.head_sha}",
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "user": bot,
            "body": pull.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": pull.created_at,
            "updated_at": pull.updated_at,
            "closed_at": None,
            "merged_at": None,
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": end(pull.head_ref, pull.head_sha),
            "base": end(pull.base_ref, pull.base_sha),
            "_links": {
                "self": {"href": f"{api}/pulls/{pull.number}"},
                "html": {"href": html},
                "issue": {"href": f"{api}/issues/{pull.number}"},
                "comments": {"href": f"{api}/issues/{pull.number}/comments"},
                "review_comments": {"href": f"{api}/pulls/{pull.number}/comments"},
                "review_comment": {"href": f"{api}/pulls/comments{{/number}}"},
                "commits": {"href": f"{api}/pulls/{pull.number}/commits"},
                "statuses": {"href": f"{api}/statuses/{pull.head_sha}"},
            },
            "author_association": "NONE",
            "auto_merge": None,
            # "draft: Indicates whether or not the pull request is a draft."
            # (https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request)
            "draft": pull.draft,
        }
        if full:
            body.update(
                {
                    "merged": False,
                    # Mergeability is computed in the background: null until it is.
                    "mergeable": None,
                    "rebaseable": None,
                    "mergeable_state": "unknown",
                    "merged_by": None,
                    "comments": 0,
                    "review_comments": 0,
                    "maintainer_can_modify": False,
                    "commits": 1,
                    "additions": pull.additions,
                    "deletions": pull.deletions,
                    "changed_files": pull.changed_files,
                }
            )
        return body

    async def _list_pulls(self, request: web.Request) -> web.Response:
        """List pull requests (https://docs.github.com/en/rest/pulls/pulls#list-pull-requests):
        ``state`` (default open), ``base``, and ``head`` "in the format of ``user:ref-name``
        or ``organization:ref-name``"; newest first by default. A ``head`` without the
        owner is ignored, not matched: GitHub then lists every pull request
        (github/docs#16647; hub4j/github-api#538; PyGithub/PyGithub#1566)."""
        repo = self._repo(request)
        q = request.query
        state = q.get("state", "open")
        head = q.get("head", "")
        owner, colon, head_ref = head.partition(":")
        with self._lock:
            found = [
                p
                for p in self.pulls
                if p.repo == repo
                and state in ("all", p.state)
                and q.get("base", p.base_ref) == p.base_ref
                and (not colon or (owner == repo.split("/")[0] and head_ref == p.head_ref))
            ]
            # "direction ... Default: desc when sort is created or sort is not specified,
            # otherwise asc" (the same page).
            sort = q.get("sort", "created")
            descending = q.get("direction", "desc" if sort == "created" else "asc") == "desc"
            if sort == "updated":
                found.sort(key=lambda p: (p.updated_at, p.number), reverse=descending)
            else:
                found.sort(key=lambda p: p.number, reverse=descending)
            chunk, headers = self._page(request, found)
            body = [self._pull_json(self._base(request), p, full=False) for p in chunk]
        return web.json_response(body, headers=headers)

    async def _get_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        number = request.match_info["pull_number"]
        with self._lock:
            pull = next((p for p in self.pulls if p.repo == repo and str(p.number) == number), None)
            if pull is None:
                raise _Fail(404, "Not Found")
            body = self._pull_json(self._base(request), pull, full=True)
        return web.json_response(body)

    async def _rate_limit(self, request: web.Request) -> web.Response:
        core = {"limit": 5000, "remaining": 4999, "reset": int(time.time()) + 3600, "used": 1}
        return web.json_response({"resources": {"core": core}, "rate": core})

    # -- faults at chosen calls (the fault suite) --------------------------------------

    def rate_limit_at(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 403,
        retry_after: int | None = 1,
        times: int = 1,
    ) -> None:
        """A secondary rate limit on matching requests only (e.g. the dispatch).

        As GitHub documents it: "403 or 429 response and an error message that
        indicates that you exceeded a secondary rate limit. If the retry-after
        response header is present, you should not retry your request until after
        that many seconds has elapsed. [...] Otherwise, wait for at least one minute"
        (https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api
        #exceeding-the-rate-limit). The primary-limit headers still show quota left,
        which is what tells the two limits apart; ``retry_after=None`` leaves the
        header out (GitHub does not always send it).
        """
        if status not in (403, 429):
            raise ValueError("GitHub answers a secondary rate limit with 403 or 429")
        headers = {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "4990",
            "x-ratelimit-used": "10",
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-resource": "core",
        }
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before "
            "you try again."
        )
        fault = _Fault(method.upper(), re.compile(path_regex), status, times, headers, message)
        with self._lock:
            self._faults.append(fault)
