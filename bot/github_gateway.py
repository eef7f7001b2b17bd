"""Σ execution through GitHub Actions (PyGithub, run in a thread: it blocks)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from github import Auth, Github, GithubException
from github.WorkflowRun import WorkflowRun

from roles.plan import Plan
from roles.records import Link, RunInfo

log = logging.getLogger("sophie.github")


class GitHubGateway:
    """Implements :class:`roles.ports.CIGateway`."""

    dry_run = False

    def __init__(self, token: str, base_url: str) -> None:
        self.gh = Github(auth=Auth.Token(token), base_url=base_url, per_page=50)

    async def dispatch(self, plan: Plan, inputs: dict[str, str]) -> RunInfo:
        return await asyncio.to_thread(self._dispatch, plan, inputs)

    def _dispatch(self, plan: Plan, inputs: dict[str, str]) -> RunInfo:
        repo = self.gh.get_repo(plan.target.repo, lazy=True)
        workflow = repo.get_workflow(plan.target.workflow)
        run = workflow.create_dispatch(
            plan.target.ref, inputs=inputs, throw=True, return_run_details=True
        )
        if not isinstance(run, WorkflowRun):
            raise RuntimeError("GitHub accepted the dispatch but returned no run details")
        log.info("dispatched %s as run %s", plan.id, run.id)
        return RunInfo(dry_run=False, status="queued", run_id=run.id, html_url=run.html_url)

    async def refresh(self, plan: Plan, run: RunInfo) -> RunInfo:
        return await asyncio.to_thread(self._refresh, plan, run)

    def _refresh(self, plan: Plan, previous: RunInfo) -> RunInfo:
        assert previous.run_id is not None
        repo = self.gh.get_repo(plan.target.repo, lazy=True)
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


def _status(value: str) -> Any:
    if value == "completed":
        return "completed"
    if value in ("queued", "requested", "waiting", "pending"):
        return "queued"
    return "in_progress"
