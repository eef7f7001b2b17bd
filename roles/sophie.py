"""SOPHIE's entry points: what Slack listeners, webhooks and the job queue call.

Each method is one step of a flow in :mod:`roles.flows`; :meth:`Sophie.run`
runs a job from the job table (:mod:`roles.jobs`).
"""

from __future__ import annotations

from typing import Any

from roles import jobs
from roles.digest import DigestReport
from roles.flows import (
    deciding,
    digesting,
    dispatching,
    intake,
    locking,
    planning,
    reconciling,
    reviewing,
    rollback,
    tracking,
)
from roles.flows.context import Context, Reply, Tuning
from roles.records import Actor, Decision, Directive, PlanRecord


class Sophie(Context):
    async def receive(self, directive: Directive) -> intake.Intake:
        return await intake.receive(self, directive)

    async def plan(self, directive: Directive) -> PlanRecord | None:
        return await planning.plan(self, directive)

    async def decide(
        self,
        plan_id: str,
        digest: str,
        actor: Actor,
        decision: Decision,
        reason: str = "",
        check_only: bool = False,
    ) -> Reply:
        return await deciding.decide(self, plan_id, digest, actor, decision, reason, check_only)

    async def decide_change(
        self, plan_id: str, change_digest: str, actor: Actor, channel: str, message_ts: str
    ) -> Reply:
        """The second card: approve a checked change for an environment that wants review."""
        return await reviewing.decide(self, plan_id, change_digest, actor, channel, message_ts)

    async def request_changes(
        self, plan_id: str, digest: str, actor: Actor, feedback: str
    ) -> Reply:
        return await deciding.request_changes(self, plan_id, digest, actor, feedback)

    async def start_rollback(self, plan_id: str, actor: Actor) -> Reply:
        return await rollback.start(self, plan_id, actor)

    async def lock(self, actor: Actor, environment: str, repo: str, reason: str) -> Reply:
        return await locking.lock(self, actor, environment, repo, reason)

    async def unlock(self, actor: Actor, environment: str, repo: str) -> Reply:
        return await locking.unlock(self, actor, environment, repo)

    async def refresh_card(self, plan_id: str) -> None:
        await deciding.refresh_card(self, plan_id)

    async def dispatch(self, plan_id: str) -> None:
        await dispatching.dispatch(self, plan_id)

    async def track(self, plan_id: str, reschedule: bool = True) -> bool:
        return await tracking.track(self, plan_id, reschedule)

    async def run_event(self, run_id: int, correlation_id: str = "") -> None:
        await tracking.run_event(self, run_id, correlation_id)

    async def reconcile(self) -> dict[str, int]:
        return await reconciling.reconcile(self)

    async def digest(self, post: bool = False) -> tuple[DigestReport, str | None]:
        """The digest now (``/sophie digest``, ``sophie digest --now``); with ``post``, posted
        to the constitution's digest channel and remembered as the last digest."""
        return await digesting.now(self, post)

    async def digest_tick(self) -> str | None:
        """The scheduled digest, if its slot is due (once per slot across every worker)."""
        return await digesting.tick(self)

    async def job_failed(self, job: jobs.Job, error_text: str) -> None:
        """A job failed on its last try: the thread hears what failed and what to do."""
        await reconciling.job_failed(self, job, error_text)

    async def card_gone(self, plan_id: str, channel: str, card_ts: str) -> None:
        await reconciling.card_gone(self, plan_id, channel, card_ts)

    async def run(self, job: jobs.Job) -> Any:
        """Run one job from the job table."""
        match job:
            case jobs.PlanDirective(directive=directive):
                return await planning.plan(self, directive)
            case jobs.Revise(plan_id=plan_id, feedback=feedback):
                return await planning.revise(self, plan_id, feedback)
            case jobs.RunEvent(run_id=run_id, correlation_id=correlation_id):
                return await tracking.run_event(self, run_id, correlation_id)
            case jobs.OnPlan(name="dispatch", plan_id=plan_id):
                return await dispatching.dispatch(self, plan_id)
            case jobs.OnPlan(name="track", plan_id=plan_id):
                return await tracking.track(self, plan_id)
            case jobs.OnPlan(name="card", plan_id=plan_id):
                return await deciding.refresh_card(self, plan_id)
            case jobs.OnPlan(name="veto_window", plan_id=plan_id):
                return await deciding.veto_window_closed(self, plan_id)
            case jobs.OnPlan(name="expire", plan_id=plan_id):
                return await deciding.expire(self, plan_id)
            case jobs.OnPlan(name="remind", plan_id=plan_id):
                return await deciding.remind(self, plan_id)
            case jobs.Reconcile():
                return await reconciling.reconcile(self)
            case jobs.Digest():
                return await digesting.tick(self)
        raise jobs.BadJob(f"no flow runs {job!r}")


__all__ = ["Reply", "Sophie", "Tuning"]
