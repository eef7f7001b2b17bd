"""Σ execution through GitHub Actions with PyGithub (blocking: every call runs in a thread).

Reads are retried on 5xx by urllib3; writes never are (a retried dispatch could
start two runs), so a failed or unanswered dispatch surfaces as CIUncertain and
the executor looks for the run by its correlation id before trying again. Rate
limits surface as CIRateLimited with the wait GitHub asked for, so the executor
can say so in the thread and reschedule instead of blocking a worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from github import (
    Auth,
    Github,
    GithubException,
    RateLimitExceededException,
    UnknownObjectException,
)
from github.WorkflowRun import WorkflowRun
from urllib3.util.retry import Retry

from roles.plan import Plan
from roles.ports import CIRateLimited, CIUncertain
from roles.records import Link, RunInfo

log = logging.getLogger("sophie.github")

T = TypeVar("T")

# The pipeline template reports pushed images as `::notice title=sophie-image::REF`.
IMAGE_NOTICE = "sophie-image"
# Release assets worth linking in the thread (installers and archives).
_ASSET_SUFFIXES = (".deb", ".rpm", ".dmg", ".pkg", ".msi", ".exe", ".zip", ".tar.gz", ".tgz")


def make_auth(
    token: str | None,
    app_id: str | None = None,
    private_key: str | None = None,
    installation_id: str | None = None,
) -> Auth.Auth:
    """A token, or a GitHub App installation (what organisations use; tokens refresh)."""
    if app_id and private_key and installation_id:
        return Auth.AppAuth(app_id, private_key).get_installation_auth(int(installation_id))
    if token:
        return Auth.Token(token)
    raise ValueError("GitHub needs GITHUB_TOKEN or GITHUB_APP_ID + key + installation id")


def _wait_from(exc: GithubException) -> tuple[float, str]:
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    if headers.get("retry-after"):
        return max(1.0, float(headers["retry-after"])), "secondary"
    if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
        return max(1.0, float(headers["x-ratelimit-reset"]) - time.time() + 1), "primary"
    return 60.0, "secondary"  # GitHub's advice when it names no time


def _is_rate_limit(exc: GithubException) -> bool:
    if isinstance(exc, RateLimitExceededException):
        return True
    if exc.status not in (403, 429):
        return False
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    message = str(exc.data).lower() if exc.data else ""
    return (
        exc.status == 429
        or headers.get("x-ratelimit-remaining") == "0"
        or "retry-after" in headers
        or "rate limit" in message
    )


def _unsupported_run_details(exc: GithubException) -> bool:
    """GitHub Enterprise Server does not know return_run_details and refuses the field."""
    return exc.status in (400, 422) and "return_run_details" in str(exc.data)


class GitHubGateway:
    """Implements :class:`roles.ports.CIGateway`."""

    dry_run = False

    def __init__(self, auth: Auth.Auth, base_url: str, timeout: int = 15) -> None:
        self.gh = Github(
            auth=auth,
            base_url=base_url,
            per_page=50,
            timeout=timeout,
            # urllib3 retries GET on 5xx only; POSTs are never retried blindly.
            retry=Retry(
                total=3,
                backoff_factor=0.5,
                status_forcelist=(500, 502, 503, 504),
                respect_retry_after_header=False,
                raise_on_status=False,
            ),
            seconds_between_requests=None,
            seconds_between_writes=1.0,
            lazy=True,
        )

    async def _call(self, fn: Callable[[], T], *, write: bool = False) -> T:
        try:
            return await asyncio.to_thread(fn)
        except GithubException as exc:
            if _is_rate_limit(exc):
                wait, kind = _wait_from(exc)
                raise CIRateLimited(wait, kind) from exc
            if write and (exc.status >= 500 or exc.status == 0):
                raise CIUncertain(f"GitHub answered HTTP {exc.status}") from exc
            raise
        except (requests.ConnectionError, requests.Timeout) as exc:
            if write:
                raise CIUncertain(f"no answer from GitHub: {type(exc).__name__}") from exc
            raise

    # -- dispatch ---------------------------------------------------------------

    async def dispatch(self, plan: Plan, inputs: dict[str, str], correlation_id: str) -> RunInfo:
        return await self._call(lambda: self._dispatch(plan, inputs, correlation_id), write=True)

    def _dispatch(self, plan: Plan, inputs: dict[str, str], correlation_id: str) -> RunInfo:
        repo = self.gh.get_repo(plan.target.repo)
        workflow = repo.get_workflow(plan.target.workflow)
        try:
            run = workflow.create_dispatch(
                plan.target.ref, inputs=inputs, throw=True, return_run_details=True
            )
        except GithubException as exc:
            if not _unsupported_run_details(exc):
                raise
            log.info("no run details from this GitHub (GHES?); finding the run by correlation")
            workflow.create_dispatch(plan.target.ref, inputs=inputs, throw=True)
            return RunInfo(dry_run=False, status="queued", correlation_id=correlation_id)
        if not isinstance(run, WorkflowRun):
            return RunInfo(dry_run=False, status="queued", correlation_id=correlation_id)
        log.info("dispatched %s as run %s", plan.id, run.id)
        return RunInfo(dry_run=False, status="queued", run_id=run.id, html_url=run.html_url)

    async def find_run(self, plan: Plan, correlation_id: str) -> RunInfo | None:
        return await self._call(lambda: self._find_run(plan, correlation_id))

    def _find_run(self, plan: Plan, correlation_id: str) -> RunInfo | None:
        repo = self.gh.get_repo(plan.target.repo)
        workflow = repo.get_workflow(plan.target.workflow)
        # The template's run-name carries the correlation id; newest runs come first.
        for n, run in enumerate(workflow.get_runs(event="workflow_dispatch")):
            if correlation_id and correlation_id in (run.display_title or ""):
                return RunInfo(
                    dry_run=False, status=_status(run.status), run_id=run.id, html_url=run.html_url
                )
            if n >= 100:
                break
        return None

    # -- tracking ---------------------------------------------------------------

    async def refresh(self, plan: Plan, run: RunInfo) -> RunInfo:
        return await self._call(lambda: self._refresh(plan, run))

    def _refresh(self, plan: Plan, previous: RunInfo) -> RunInfo:
        assert previous.run_id is not None
        repo = self.gh.get_repo(plan.target.repo)
        run = repo.get_workflow_run(previous.run_id)
        info = RunInfo(
            dry_run=False,
            status=_status(run.status),
            conclusion=run.conclusion,
            run_id=run.id,
            html_url=run.html_url,
            head_sha=run.head_sha,
        )
        self._jobs(run, info)
        if info.status == "completed":
            info.artifacts = [
                # The run page link a person can open; the API's download URL expires.
                Link(name=a.name, url=f"{run.html_url}/artifacts/{a.id}")
                for a in run.get_artifacts()
                if not a.expired
            ]
            info.staging_url = self._environment_url(repo, plan, run.head_sha)
            info.release_assets = self._release_assets(repo, run.head_sha)
            info.images = self._images(repo, run)
        return info

    @staticmethod
    def _jobs(run: WorkflowRun, info: RunInfo) -> None:
        for job in run.jobs():
            if job.status == "in_progress" and info.current_job is None:
                info.current_job = job.name
                step = next((s for s in job.steps if s.status == "in_progress"), None)
                info.current_step = step.name if step else None
            if job.conclusion == "failure" and info.failing_job is None:
                info.failing_job = job.name
                failed = next((s for s in job.steps if s.conclusion == "failure"), None)
                info.failing_step = failed.name if failed else None
                info.log_url = job.html_url

    @staticmethod
    def _environment_url(repo: Any, plan: Plan, sha: str) -> str | None:
        try:
            for deployment in repo.get_deployments(sha=sha, environment=plan.target.environment):
                for status in deployment.get_statuses():
                    if status.state == "success" and status.environment_url:
                        return str(status.environment_url)
        except GithubException as exc:
            log.warning("could not read deployments for %s: %s", plan.id, exc.status)
        return None

    @staticmethod
    def _images(repo: Any, run: WorkflowRun) -> list[str]:
        """Container images the workflow reported as ``::notice title=sophie-image::REF``."""
        images: list[str] = []
        try:
            for n, job in enumerate(run.jobs()):
                if n >= 10 or job.conclusion != "success" or not job.check_run_url:
                    continue
                check_run = repo.get_check_run(int(job.check_run_url.rstrip("/").rsplit("/", 1)[1]))
                if not check_run.output or not check_run.output.annotations_count:
                    continue
                for note in check_run.get_annotations():
                    if note.title == IMAGE_NOTICE and note.message:
                        images.append(note.message.strip()[:300])
        except GithubException as exc:
            log.warning("could not read check-run annotations: %s", exc.status)
        return list(dict.fromkeys(images))[:10]

    @staticmethod
    def _release_assets(repo: Any, sha: str) -> list[Link]:
        """Installers a workflow published as a release of this commit (.deb, .dmg, …)."""
        try:
            for n, release in enumerate(repo.get_releases()):
                if n >= 10:
                    break
                if release.target_commitish not in (sha, sha[:7]):
                    continue
                return [
                    Link(name=a.name, url=a.browser_download_url)
                    for a in release.get_assets()
                    if a.name.lower().endswith(_ASSET_SUFFIXES)
                ][:20]
        except (GithubException, UnknownObjectException) as exc:
            log.warning("could not read releases: %s", getattr(exc, "status", exc))
        return []

    # -- deployment history (rollback) -----------------------------------------

    async def rollback_target(
        self, repo: str, environment: str, current_sha: str | None
    ) -> tuple[str, str] | None:
        """(sha, ref) of the last known good deployment: the newest successful one older
        than the current (the newest, unless ``current_sha`` names it)."""
        return await self._call(lambda: self._rollback_target(repo, environment, current_sha))

    def _rollback_target(
        self, repo_name: str, environment: str, current_sha: str | None
    ) -> tuple[str, str] | None:
        repo = self.gh.get_repo(repo_name)
        current = current_sha
        for n, deployment in enumerate(repo.get_deployments(environment=environment)):
            if n >= 50:
                break
            if current is None:
                current = deployment.sha  # newest first: this is what runs now
            if deployment.sha == current:
                continue
            latest = next(iter(deployment.get_statuses()), None)  # newest first
            if latest is not None and latest.state == "success":
                return deployment.sha, deployment.ref
        return None


def _status(value: str) -> Any:
    if value == "completed":
        return "completed"
    if value in ("queued", "requested", "waiting", "pending"):
        return "queued"
    return "in_progress"
