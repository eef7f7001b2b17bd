"""What every flow works with: the ports, the clock and the tuning."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from roles import jobs
from roles.constitution import Constitution
from roles.ports import (
    CIGateway,
    Directory,
    Metrics,
    NoMetrics,
    Notifier,
    Planner,
    PlanStore,
    Scheduler,
    Signer,
)
from roles.records import PlanRecord, RunInfo

BOT_TEAM = "sophie"

log = logging.getLogger("sophie.flows")

# The queue's id of the job being run (set by the job runner). A lease owned by a job is
# taken back at once when the queue runs that same job again after its worker died.
JOB_ID: ContextVar[str] = ContextVar("sophie_job_id", default="")


def lease_owner() -> str:
    """Who holds a lease taken now: the running job, or (outside a job) a fresh owner."""
    return JOB_ID.get() or uuid.uuid4().hex


@dataclass(frozen=True)
class Reply:
    """What the person who clicked is told (ephemerally)."""

    ok: bool
    text: str


@dataclass(frozen=True)
class Tuning:
    poll_seconds: float = 10.0
    max_polls: int = 720
    # GitHub lists a dispatched run within seconds: after this long unseen, it never started.
    dispatch_settle_seconds: float = 45.0
    dispatch_recheck_seconds: float = 10.0
    # Slack allows about one chat.update per second per message; stay under it.
    status_edit_seconds: float = 1.5
    # How long one job may hold a plan's dispatch: the job timeout, so that when the
    # queue runs a dead worker's job again the lease is gone.
    dispatch_lease_seconds: float = 120.0
    # Where a workflow fetches plan + envelopes too large for dispatch inputs.
    bundle_url: Callable[[str], str] | None = None
    # Planning ends (a card, or "I could not plan…") within this; None: no model to wait for.
    planning_deadline_seconds: float | None = None
    # How long a plan may sit pending without a card, or approved without a dispatch, before
    # the reconciler moves it on (dispatching and running plans wait longer: reconciling.py).
    stuck_seconds: float = 30.0
    # How often the reconciler sweeps (a cron job on every worker; each tick runs once).
    reconcile_seconds: int = 5
    # A model is configured, so `sophie implement` (the default implementer) can write the
    # change steps; without one they are descriptive and the ref deploys as it is.
    model_ready: bool = False


@dataclass
class Context:
    constitution: Callable[[], Constitution]
    planner: Planner
    store: PlanStore
    signer: Signer
    ci: CIGateway
    notifier: Notifier
    scheduler: Scheduler
    directory: Directory
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    tuning: Tuning = field(default_factory=Tuning)
    # When each status message was last edited (Slack rate-limits chat.update).
    last_edit: dict[str, float] = field(default_factory=dict)
    # Outcomes and timings as Prometheus metrics (bot/metrics.py), in every process.
    metrics: Metrics = field(default_factory=NoMetrics)
    # Called with a plan whenever it changes (deciding.refresh_card, and when it starts
    # waiting on people): App Home republishes the tabs of those it concerns. Cosmetic:
    # the flows log its failures and go on.
    home_changed: Callable[[PlanRecord], Awaitable[None]] | None = None

    async def enqueue(self, job: jobs.Job, key: str, delay_seconds: float = 0) -> None:
        """Queue a job from the job table (its payload is checked against the table)."""
        await self.scheduler.enqueue(job.name, key, job.payload(), delay_seconds)

    async def again(self, name: jobs.PlanJobName, plan_id: str, tag: str, delay: float) -> None:
        """A follow-up job on a plan, whose key ``tag`` makes each attempt its own job."""
        await self.enqueue(jobs.OnPlan(name, plan_id), f"{name}:{plan_id}:{tag}", delay)

    async def refresh_card_later(self, plan_id: str) -> None:
        """Cosmetic: a refresh the queue refuses is not worth failing a decision over (the
        next change refreshes the card)."""
        try:
            await self.enqueue(
                jobs.OnPlan("card", plan_id), f"card:{plan_id}:{self.clock().timestamp()}"
            )
        except Exception:
            log.warning("could not queue a refresh of the card of %s", plan_id, exc_info=True)

    def describe(self) -> dict[str, Any]:
        return {"dry_run": self.ci.dry_run, "planner_offline": self.planner.offline}


def track_tag(run: RunInfo, polls: int, prefix: str = "") -> str:
    """The key of a look at ``run`` after ``polls`` looks: the same for every job that
    schedules it (chains merge), and distinct for the run that deploys a checked change
    (the implement run before it used the plain numbers)."""
    return f"{prefix}{polls}" + (".c" if run.change is not None and run.phase == "run" else "")
