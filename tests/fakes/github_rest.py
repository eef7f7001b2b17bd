"""A stateful fake of GitHub's REST API for Actions, Deployments and Releases.

Serve ``FakeGitHub().app`` with :class:`tests.fakes.server.ThreadedServer` and set
``GITHUB_API_URL`` to its URL. Every request is checked against GitHub's OpenAPI
description (``github_spec``) and refused with 422 when it breaks it; every reply
is checked too (a mismatch is a bug in the fake and fails loudly).

A dispatch creates a workflow run that moves, one step per look (or per
``advance``), from queued through the build and deploy jobs to completed; success
leaves artifacts and a deployment whose status carries the ``environment_url``.
With ``webhook_url`` set, each move is also delivered as signed webhooks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import github_spec

BODY = web.RequestKey("body", object)
MAX_INPUTS = 25
MAX_INPUT_CHARS = 65_535
STAGES = (
    ("queued", None),
    ("in_progress", "build"),
    ("in_progress", "deploy-staging"),
    ("completed", None),
)
JOBS = ("verify", "build", "deploy-staging")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Dispatch:
    repo: str
    workflow: str
    ref: str
    inputs: dict[str, str]


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

    @property
    def status(self) -> str:
        return STAGES[self.stage][0]

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


@dataclass
class Release:
    id: int
    repo: str
    tag: str
    target_commitish: str
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
    ) -> None:
        self.tokens = {token}
        self.repos = set(repos)
        self.workflows = {name: 1000 + n for n, name in enumerate(workflows)}
        self.environment_url = environment_url
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
        # GitHub Apps: app id → public key (PEM); installation id → app id.
        self.app_keys: dict[str, str] = {}
        self.installations: dict[int, str] = {}
        self.installation_tokens: list[str] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(7_000_001)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
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
                run.fail_job = run.fail_job or "build"
            while run.stage < len(STAGES) - 1:
                self._advance(run)

    def seed_deployment(
        self, repo: str, sha: str, environment: str, state: str = "success", ref: str = "main"
    ) -> Deployment:
        with self._lock:
            deployment = Deployment(next(self._ids), repo, sha, ref, environment, _now())
            deployment.statuses.insert(0, self._status(deployment, state, None))
            self.deployments.append(deployment)
            return deployment

    def publish_release(self, repo: str, sha: str, tag: str, assets: list[str]) -> Release:
        with self._lock:
            release = Release(next(self._ids), repo, tag, sha, assets)
            self.releases.append(release)
            return release

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
        try:
            self._authorise(request)
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
        response.headers.update(self._rate_headers())
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

    def _authorise(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if request.path.startswith("/app/"):
            return  # app JWTs are checked by the handler
        if scheme.lower() not in ("token", "bearer") or token not in self.tokens:
            raise _Fail(401, "Bad credentials")

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
        r.add_get(base + "/deployments/{deployment_id}/statuses", self._list_statuses)
        r.add_get(base + "/releases", self._list_releases)
        r.add_get(base + "/releases/{release_id}/assets", self._list_assets)
        r.add_get(base + "/check-runs/{check_run_id}", self._check_run)
        r.add_get(base + "/check-runs/{check_run_id}/annotations", self._annotations)
        r.add_get("/rate_limit", self._rate_limit)
        r.add_post("/app/installations/{installation_id}/access_tokens", self._access_token)

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
        """Jobs run in order: verify, build, deploy-staging (stage 1 builds, 2 deploys)."""
        if run.stage == len(STAGES) - 1:
            if run.fail_job in JOBS:
                failed = JOBS.index(run.fail_job)
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
        }
        for n, name in enumerate(JOBS):
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

    def _status(self, d: Deployment, state: str, run: Run | None) -> dict[str, Any]:
        sid = next(self._ids)
        log = f"https://github.com/{d.repo}/actions/runs/{run.id}" if run else ""
        return {
            "id": sid,
            "node_id": f"DES_{sid}",
            "state": state,
            "description": "",
            "environment": d.environment,
            "environment_url": self.environment_url if state == "success" else "",
            "log_url": log,
            "target_url": log,
            "created_at": _now(),
            "updated_at": _now(),
            "url": "",
            "deployment_url": "",
            "repository_url": "",
        }

    def _deployment_json(self, base: str, d: Deployment) -> dict[str, Any]:
        api = f"{base}/repos/{d.repo}/deployments/{d.id}"
        return {
            "id": d.id,
            "node_id": f"DE_{d.id}",
            "sha": d.sha,
            "ref": d.ref,
            "task": "deploy",
            "payload": {},
            "environment": d.environment,
            "original_environment": d.environment,
            "description": None,
            "url": api,
            "statuses_url": f"{api}/statuses",
            "repository_url": f"{base}/repos/{d.repo}",
            "created_at": d.created_at,
            "updated_at": d.created_at,
            "transient_environment": False,
            "production_environment": d.environment == "production",
        }

    # -- lifecycle -----------------------------------------------------------------

    def _advance(self, run: Run) -> None:
        if run.stage >= len(STAGES) - 1:
            return
        run.stage += 1
        if STAGES[run.stage][0] == "completed":
            if run.fail_job:
                run.conclusion = "failure"
            else:
                run.conclusion = "success"
                self._succeed(run)
        self._emit_run(run)

    def _succeed(self, run: Run) -> None:
        action = run.inputs.get("action", "deploy")
        for name in self.artifact_names if action != "rollback" else ():
            run.artifacts.append({"id": next(self._ids), "name": name})
        if self.release_assets and action != "rollback":
            tag = f"v1.0.{run.number}"
            self.releases.append(
                Release(next(self._ids), run.repo, tag, run.head_sha, list(self.release_assets))
            )
        if action in ("deploy", "rollback"):
            sha = run.inputs.get("deploy_sha") or run.head_sha
            env = run.inputs.get("environment", "staging")
            deployment = Deployment(next(self._ids), run.repo, sha, run.ref, env, _now())
            deployment.statuses.insert(0, self._status(deployment, "in_progress", run))
            deployment.statuses.insert(0, self._status(deployment, "success", run))
            self.deployments.append(deployment)
            self._emit(
                "deployment_status",
                {
                    "action": "created",
                    "deployment_status": deployment.statuses[0],
                    "deployment": {"id": deployment.id, "sha": sha, "environment": env},
                    "repository": {"full_name": run.repo},
                },
            )

    # -- webhooks ------------------------------------------------------------------

    def _emit_run(self, run: Run) -> None:
        base = "https://api.github.com"
        action = {"queued": "requested", "in_progress": "in_progress", "completed": "completed"}
        self._emit(
            "workflow_run",
            {
                "action": action[run.status],
                "workflow_run": self._run_json(base, run),
                "repository": {"full_name": run.repo},
            },
        )
        current = STAGES[run.stage][1]
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
        ref = body["ref"].removeprefix("refs/heads/")
        if ref not in self.branches:
            raise _Fail(422, f"No ref found for: {body['ref']}")
        with self._lock:
            run_id = next(self._ids)
            run = Run(
                id=run_id,
                repo=repo,
                workflow=name,
                workflow_id=wid,
                ref=ref,
                head_sha=hashlib.sha1(f"{repo}:{run_id}".encode()).hexdigest(),
                inputs=dict(inputs),
                number=len(self.runs) + 1,
                fail_job=self.fail_job,
            )
            self.runs[run_id] = run
            self.dispatches.append(Dispatch(repo, name, ref, dict(inputs)))
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
        with self._lock:
            runs = [
                r
                for r in sorted(self.runs.values(), key=lambda r: -r.id)
                if r.repo == repo
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
        if run is None or run.repo != repo or cid % 10 >= len(JOBS):
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
                "name": JOBS[n],
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
        """What the template's build job reports with ::notice (the pushed image)."""
        built = run.stage == len(STAGES) - 1 and self._job_state(run, n) == ("completed", "success")
        if JOBS[n] != "build" or not built or "docker" not in run.inputs.get("artifacts", ""):
            return []
        return [
            {
                "path": ".github",
                "blob_href": f"https://github.com/{run.repo}/blob/{run.head_sha}/.github",
                "start_line": 1,
                "end_line": 1,
                "start_column": None,
                "end_column": None,
                "annotation_level": "notice",
                "title": "sophie-image",
                "message": f"ghcr.io/{run.repo}:{run.head_sha}",
                "raw_details": None,
            }
        ]

    async def _annotations(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        with self._lock:
            run, n = self._job_of_check_run(request, repo)
            notices = self._notices(run, n)
        return web.json_response(notices)

    def install_app(self, app_id: str, public_key_pem: str, installation_id: int) -> None:
        with self._lock:
            self.app_keys[app_id] = public_key_pem
            self.installations[installation_id] = app_id

    async def _access_token(self, request: web.Request) -> web.Response:
        """An installation token for a JWT signed by the App's private key (RS256)."""
        import jwt

        installation = int(request.match_info["installation_id"])
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
        issued = f"ghs_{uuid.uuid4().hex}"
        with self._lock:
            self.tokens.add(issued)
            self.installation_tokens.append(issued)
        expires = datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(
            {
                "token": issued,
                "expires_at": expires,
                "permissions": {"actions": "write", "deployments": "read", "contents": "read"},
                "repository_selection": "all",
            },
            status=201,
        )

    async def _rate_limit(self, request: web.Request) -> web.Response:
        core = {"limit": 5000, "remaining": 4999, "reset": int(time.time()) + 3600, "used": 1}
        return web.json_response({"resources": {"core": core}, "rate": core})
