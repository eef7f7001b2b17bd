"""Execution without GITHUB_TOKEN: nothing is dispatched, and every message says so."""

from __future__ import annotations

import logging

from roles.change_check import Change
from roles.plan import Plan
from roles.records import RunInfo

log = logging.getLogger("sophie.dry_run")


class DryRunGateway:
    """Implements :class:`roles.ports.CIGateway` by recording what would have run."""

    dry_run = True

    async def dispatch(
        self, plan: Plan, inputs: dict[str, str], correlation_id: str, ref: str = ""
    ) -> RunInfo:
        names = ", ".join(sorted(inputs))
        log.info("dry run: would dispatch %s for %s", plan.target.workflow, plan.id)
        implement = (
            f" The implement job would write the change steps on sophie/{plan.id}; SOPHIE would "
            "check that commit before anything built from it deploys."
            if inputs.get("action") == "implement"
            else ""
        )
        return RunInfo(
            dry_run=True,
            status="queued",
            detail=(
                f"Would dispatch {plan.target.workflow} on "
                f"{plan.target.repo}@{ref or plan.target.ref} with inputs {names}.{implement} "
                "Set GITHUB_TOKEN to execute for real."
            ),
        )

    async def find_run(self, plan: Plan, correlation_id: str) -> RunInfo | None:
        return None

    async def rollback_target(
        self, repo: str, environment: str, current_sha: str | None
    ) -> tuple[str, str] | None:
        return None  # no deployment history without GitHub

    async def compare(self, repo: str, base: str, head: str) -> Change:
        raise RuntimeError("dry run: there is no GitHub to read a change from")

    async def commit_on_default_branch(self, repo: str, sha: str, default_ref: str) -> bool:
        return False

    async def refresh(self, plan: Plan, run: RunInfo) -> RunInfo:
        return RunInfo(dry_run=True, status="completed", conclusion="dry_run", detail=run.detail)
