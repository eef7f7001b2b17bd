"""Execution without GITHUB_TOKEN: nothing is dispatched, and every message says so."""

from __future__ import annotations

import logging

from roles.plan import Plan
from roles.records import RunInfo

log = logging.getLogger("sophie.dry_run")


class DryRunGateway:
    """Implements :class:`roles.ports.CIGateway` by recording what would have run."""

    dry_run = True

    async def dispatch(self, plan: Plan, inputs: dict[str, str], correlation_id: str) -> RunInfo:
        names = ", ".join(sorted(inputs))
        log.info("dry run: would dispatch %s for %s", plan.target.workflow, plan.id)
        return RunInfo(
            dry_run=True,
            status="queued",
            detail=(
                f"Would dispatch {plan.target.workflow} on {plan.target.repo}@{plan.target.ref} "
                f"with inputs {names}. Set GITHUB_TOKEN to execute for real."
            ),
        )

    async def find_run(self, plan: Plan, correlation_id: str) -> RunInfo | None:
        return None

    async def rollback_target(
        self, repo: str, environment: str, current_sha: str | None
    ) -> tuple[str, str] | None:
        return None  # no deployment history without GitHub

    async def refresh(self, plan: Plan, run: RunInfo) -> RunInfo:
        return RunInfo(dry_run=True, status="completed", conclusion="dry_run", detail=run.detail)
