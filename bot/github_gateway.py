"""Σ execution through GitHub Actions with PyGithub (blocking: every call runs in a thread).

Reads are retried on 5xx by urllib3; writes never are (a retried dispatch could
start two runs), so a failed or unanswered dispatch surfaces as CIUncertain and
the executor looks for the run by its correlation id before trying again. Rate
limits surface as CIRateLimited with the wait GitHub asked for, so the executor
can say so in the thread and reschedule instead of blocking a worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
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

from roles.change_check import GITHUB_MAX_FILES, Change, ChangedFile
from roles.integrator import correlation_in
from roles.plan import Plan
from roles.ports import CIRateLimited, CIUncertain
from roles.records import Link, ProducedChange, RunInfo

log = logging.getLogger("sophie.github")

T = TypeVar("T")

# The pipeline template reports pushed images as `::notice title=sophie-image::REF`.
IMAGE_NOTICE = "sophie-image"
# The implement job's report (compact JSON) and, when it fails, its one-line reason.
CHANGE_NOTICE = "sophie-change"
IMPLEMENT_FAILURE = "sophie-implement"
# The verify job's refusal (any run): the thread says why nothing ran.
VERIFY_FAILURE = "sophie-verify"
# Release assets worth linking in the thread (installers and archives).
_ASSET_SUFFIXES = (".deb", ".rpm", ".dmg", ".pkg", ".msi", ".exe", ".zip", ".tar.gz", ".tgz")
# How far back the deployment history is read for a rollback (each costs one request).
HISTORY_DEPLOYMENTS = 30
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


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

    async def dispatch(
        self, plan: Plan, inputs: dict[str, str], correlation_id: str, ref: str = ""
    ) -> RunInfo:
        return await self._call(
            lambda: self._dispatch(plan, inputs, correlation_id, ref or plan.target.ref),
            write=True,
        )

    def _dispatch(
        self, plan: Plan, inputs: dict[str, str], correlation_id: str, ref: str
    ) -> RunInfo:
        repo = self.gh.get_repo(plan.target.repo)
        workflow = repo.get_workflow(plan.target.workflow)
        try:
            run = workflow.create_dispatch(ref, inputs=inputs, throw=True, return_run_details=True)
        except GithubException as exc:
            if not _unsupported_run_details(exc):
                raise
            log.info("no run details from this GitHub (GHES?); finding the run by correlation")
            workflow.create_dispatch(ref, inputs=inputs, throw=True)
            return RunInfo(dry_run=False, status="queued", correlation_id=correlation_id)
        if not isinstance(run, WorkflowRun):
            return RunInfo(dry_run=False, status="queued", correlation_id=correlation_id)
        log.info("dispatched %s as run %s", plan.id, run.id)
        return RunInfo(dry_run=False, status="queued", run_id=run.id, html_url=run.html_url)

    async def find_run(self, plan: Plan, correlation_id: str) -> RunInfo | None:
        return await self._call(lambda: self._find_run(plan, correlation_id))

    def _find_run(self, plan: Plan, correlation_id: str) -> RunInfo | None:
        if not correlation_id:
            return None
        repo = self.gh.get_repo(plan.target.repo)
        workflow = repo.get_workflow(plan.target.workflow)
        # The template's run-name carries the correlation id (the webhook reads it with the
        # same parser); newest runs come first, and GitHub lists a run a moment after the
        # dispatch, so None here means "not yet" as often as "never".
        for n, run in enumerate(workflow.get_runs(event="workflow_dispatch")):
            if correlation_in(run.display_title) == correlation_id:
                return RunInfo(
                    dry_run=False,
                    status=_status(run.status),
                    run_id=run.id,
                    html_url=run.html_url,
                    correlation_id=correlation_id,
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
        carried = correlation_in(run.display_title)
        if previous.correlation_id and carried and carried != previous.correlation_id:
            # A run id taken from a webhook, checked against GitHub's own answer.
            raise ValueError(f"run {run.id} belongs to {carried}, not {previous.correlation_id}")
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
            info.staging_url = self._environment_url(repo, plan, run)
            info.release_assets = self._release_assets(repo, run.head_sha)
            notices = self._notices(repo, run)
            info.images = list(dict.fromkeys(notices.get(IMAGE_NOTICE, [])))[:10]
            failures = notices.get(VERIFY_FAILURE, [])
            if previous.phase == "implement":
                info.phase = "implement"
                info.change = produced_change(notices.get(CHANGE_NOTICE, []))
                failures = failures or notices.get(IMPLEMENT_FAILURE, [])
            if failures:
                info.detail = failures[0][:500]
        return info

    @staticmethod
    def _jobs(run: WorkflowRun, info: RunInfo) -> None:
        for job in run.jobs():
            if job.name.startswith("Build") and job.started_at and job.completed_at:
                # Ψ: artifact build time, from GitHub's own job timestamps.
                info.build_seconds = max(0.0, (job.completed_at - job.started_at).total_seconds())
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
    def _environment_url(repo: Any, plan: Plan, run: WorkflowRun) -> str | None:
        """The URL this run's deployment reported for the plan's environment.

        The template publishes one URL per environment (``environment.url``, or the
        rollback job's status), and GitHub records it on the deployment's ``success``
        status. A rollback's deployment is of the restored commit, not the run's head;
        the deployment this run made is the one whose status links to the run.
        """
        t = plan.target
        sha = t.sha if t.action == "rollback" and t.sha else run.head_sha
        mark = f"/actions/runs/{run.id}"
        fallback: str | None = None
        try:
            for n, deployment in enumerate(
                repo.get_deployments(sha=sha, environment=t.environment)
            ):
                if n >= 10:
                    break
                statuses = list(islice(deployment.get_statuses(), 30))
                url = next(
                    (
                        s.environment_url
                        for s in statuses
                        if s.state == "success" and s.environment_url
                    ),
                    None,
                )
                if url and any(mark in (s.log_url or s.target_url or "") for s in statuses):
                    return str(url)
                fallback = fallback or (str(url) if url else None)
        except GithubException as exc:
            log.warning("could not read deployments for %s: %s", plan.id, exc.status)
        return fallback

    @staticmethod
    def _notices(repo: Any, run: WorkflowRun) -> dict[str, list[str]]:
        """The annotations the workflow's jobs printed (``::notice title=T::message``, and
        ``::error`` for the implement job's reason), by title: images, the produced change."""
        found: dict[str, list[str]] = {}
        try:
            for n, job in enumerate(run.jobs()):
                if n >= 10 or job.conclusion not in ("success", "failure") or not job.check_run_url:
                    continue
                check_run = repo.get_check_run(int(job.check_run_url.rstrip("/").rsplit("/", 1)[1]))
                if not check_run.output or not check_run.output.annotations_count:
                    continue
                for note in islice(check_run.get_annotations(), 50):
                    if note.title and note.message:
                        found.setdefault(note.title, []).append(note.message.strip()[:20_000])
        except GithubException as exc:
            log.warning("could not read check-run annotations: %s", exc.status)
        return found

    @staticmethod
    def _release_assets(repo: Any, sha: str) -> list[Link]:
        """Installers a workflow published as a release of this commit (.deb, .dmg, …).

        A release is of this commit when its tag points at it. ``target_commitish`` is
        no guide: GitHub reports the branch the tag was cut from ("Unused if the Git tag
        already exists. Default: the repository's default branch",
        https://docs.github.com/en/rest/releases/releases#create-a-release); only a
        release that created its tag at an explicit commit names the sha there.
        """
        try:
            releases = list(islice(repo.get_releases(), 10))
            if not releases:
                return []
            # One request for the newest tags (name → commit) rather than one per release.
            tagged = {tag.name: tag.commit.sha for tag in islice(repo.get_tags(), 100)}
            for release in releases:
                commit = tagged.get(release.tag_name) or release.target_commitish
                if commit != sha:
                    continue
                return [
                    Link(name=a.name, url=a.browser_download_url)
                    for a in release.get_assets()
                    if a.name.lower().endswith(_ASSET_SUFFIXES)
                ][:20]
        except (GithubException, UnknownObjectException) as exc:
            log.warning("could not read releases: %s", getattr(exc, "status", exc))
        return []

    # -- the produced change (Δ) -----------------------------------------------

    async def compare(self, repo: str, base: str, head: str) -> Change:
        """What ``head`` (a full commit sha) changed relative to ``base``, for Δ to check.

        GitHub's "Compare two commits" lists the files "only ... on the first page of
        results, and it includes up to 300 changed files for the entire comparison"; later
        pages page through commits, never more files
        (https://docs.github.com/en/rest/commits/commits#compare-two-commits). So one page
        of one commit is read, and a list that reaches 300 files is marked ``truncated``.
        A file GitHub sends no ``patch`` for ("Diffs with binary data will have no patch
        property"; "No single file's diff may exceed 20,000 lines ... or 500 KB of raw diff
        data",
        https://docs.github.com/en/repositories/creating-and-managing-repositories/repository-limits)
        keeps ``patch=None``. Δ refuses both: what it cannot read is too large to check.
        An unknown sha raises GitHub's 404 (UnknownObjectException).
        """
        if not _SHA.fullmatch(head):
            raise ValueError(f"compare needs the full sha of the commit to check, not {head!r}")
        return await self._call(lambda: self._compare(repo, base, head))

    def _compare(self, repo_name: str, base: str, head: str) -> Change:
        repo = self.gh.get_repo(repo_name)
        comparison = repo.compare(base, head, comparison_commits_per_page=1)
        files = tuple(
            ChangedFile(
                path=f.filename,
                status=f.status,
                additions=f.additions,
                deletions=f.deletions,
                patch=f.patch,
                previous_path=f.previous_filename,
                blob_sha=f.sha,
            )
            for f in comparison.files or []
        )
        return Change(
            repo=repo_name,
            base_sha=comparison.base_commit.sha,
            head_sha=head,
            files=files,
            status=comparison.status,
            truncated=len(files) >= GITHUB_MAX_FILES,
        )

    async def commit_on_default_branch(self, repo: str, sha: str, default_ref: str) -> bool:
        """Whether ``sha`` is on ``default_ref`` (merged, after the pull request's review).

        Compare ``default_ref...sha``: "behind" (the branch has moved on past it) or
        "identical" (it is the branch's head) means the branch contains it; "ahead" or
        "diverged" means it does not. An unknown sha is not on the branch.
        """
        if not _SHA.fullmatch(sha):
            return False
        return await self._call(lambda: self._on_branch(repo, sha, default_ref))

    def _on_branch(self, repo_name: str, sha: str, default_ref: str) -> bool:
        repo = self.gh.get_repo(repo_name)
        try:
            status = repo.compare(default_ref, sha, comparison_commits_per_page=1).status
        except UnknownObjectException:
            return False
        return status in ("behind", "identical")

    # -- deployment history (rollback) -----------------------------------------

    async def rollback_target(
        self, repo: str, environment: str, current_sha: str | None
    ) -> tuple[str, str] | None:
        """(sha, ref) of the last known good deployment before ``current_sha`` (before
        what runs now, when None): see :func:`rollback_choice` for the rule."""
        return await self._call(lambda: self._rollback_target(repo, environment, current_sha))

    def _rollback_target(
        self, repo_name: str, environment: str, current_sha: str | None
    ) -> tuple[str, str] | None:
        repo = self.gh.get_repo(repo_name)
        history: list[Deployed] = []
        for n, deployment in enumerate(repo.get_deployments(environment=environment)):
            if n >= HISTORY_DEPLOYMENTS:
                break
            # All statuses, not the newest: auto-inactive marks a good deployment
            # "inactive" as soon as a newer one succeeds, but it did succeed.
            went_live = any(s.state == "success" for s in deployment.get_statuses())
            history.append(Deployed(deployment.sha, deployment.ref, went_live))
        history.reverse()  # GitHub lists newest first; the rule reads oldest first
        return rollback_choice(history, current_sha)


@dataclass(frozen=True)
class Deployed:
    """One deployment of an environment, as GitHub's history records it."""

    sha: str
    ref: str
    went_live: bool  # its statuses include "success"


def live_stack(history: Iterable[Deployed]) -> list[tuple[str, str]]:
    """What has been live in the environment, as a stack of (sha, branch), oldest first.

    Read oldest to newest: a deployment that never reached ``success`` never ran and is
    ignored; one of a new commit is pushed; one of a commit already on the stack is a
    return to it (a rollback, whoever made it), so every commit above it is popped —
    those were rolled back from and are known bad. The branch is the one the commit was
    first deployed from: a rollback deployment names the sha itself as its ref.
    """
    stack: list[tuple[str, str]] = []
    for d in history:
        if not d.went_live or not d.sha:
            continue
        shas = [sha for sha, _ in stack]
        if d.sha in shas:
            del stack[len(shas) - shas[::-1].index(d.sha) :]
        else:
            stack.append((d.sha, "" if _SHA.fullmatch(d.ref) else d.ref))
    return stack


def rollback_choice(history: Iterable[Deployed], current_sha: str | None) -> tuple[str, str] | None:
    """The rollback rule: the newest earlier live deployment that was not rolled back from.

    ``current_sha`` is what is being rolled back (the run that failed or misbehaves);
    None means "what runs now" (the top of the stack). If it is on the stack, the answer
    is the entry just below it; if it never went live (its deploy failed), the answer is
    the top itself, redeployed. Commits that a later rollback moved away from are off
    the stack, so a second rollback goes one further back, never to a known-bad commit.
    The ref is "" when only the sha is known (the default branch is dispatched).
    """
    stack = live_stack(history)
    if not stack:
        return None
    current = current_sha if current_sha is not None else stack[-1][0]
    shas = [sha for sha, _ in stack]
    below = stack[: len(shas) - 1 - shas[::-1].index(current)] if current in shas else stack
    return below[-1] if below else None


def _status(value: str) -> Any:
    if value == "completed":
        return "completed"
    if value in ("queued", "requested", "waiting", "pending"):
        return "queued"
    return "in_progress"


def produced_change(reports: list[str]) -> ProducedChange | None:
    """The implement job's ``sophie-change`` report, or None if it sent none we can read.

    Only its shape is trusted: Δ reads the change itself from GitHub before anything
    built from it deploys, and the commit must be a full sha.
    """
    for raw in reports:
        try:
            doc = json.loads(raw)
            tests = doc.get("tests") or {}
            change = ProducedChange(
                branch=str(doc["branch"])[:255],
                commit=str(doc["commit"]),
                base=str(doc["base"]),
                pull_request=str(doc.get("pull_request") or "")[:500],
                files=int(doc.get("files", 0)),
                additions=int(doc.get("additions", 0)),
                deletions=int(doc.get("deletions", 0)),
                tests_command=str(tests.get("command") or "")[:300],
                tests_passed=tests.get("passed") if isinstance(tests.get("passed"), bool) else None,
                tests_summary=str(tests.get("summary") or "")[:300],
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if _SHA.fullmatch(change.commit) and _SHA.fullmatch(change.base):
            return change
    return None
