"""Nothing is left behind: the reconciler, and what a job that fails for good says.

The reconciler is a periodic job (a cron on every worker; arq runs each tick once, and a
short lease keeps two sweeps from overlapping). It finds every plan that has stayed in a
state past that state's deadline and queues the job that moves it on. Every job it
queues is idempotent, so moving a plan that was not really stuck costs a look, nothing
more:

    pending without a card    the card job: post the card, then expiry and approval start
    approved                  dispatch (the queue refused the job after the approval)
    dispatching               dispatch: look the run up; track it, dispatch once more, or report
    running, no poll lately   track (the polling chain died)

Job keys carry the plan and a time bucket as long as the state's deadline, so a plan
that stays stuck is tried again once per deadline, never piled up.
"""

from __future__ import annotations

import logging
import uuid

from roles import integrator, jobs
from roles.flows.context import Context
from roles.records import PlanStatus, Thread

log = logging.getLogger("sophie.reconciling")

LEASE_KEY = "reconciler"
# GitHub's primary rate limit resets within the hour: a tracking chain waiting on it is alive.
RATE_LIMIT_WAIT_SECONDS = 3600.0
BATCH = 100


def deadlines(ctx: Context) -> dict[PlanStatus, float]:
    """How long a plan may sit in each state (seconds since its record last changed)."""
    t = ctx.tuning
    return {
        # The planning job posts the card right after saving the plan (a lease guards it).
        PlanStatus.PENDING: t.stuck_seconds,
        # The dispatch job is queued with the approval.
        PlanStatus.APPROVED: t.stuck_seconds,
        # The dispatch chain settles by itself: a lookup every recheck until GitHub had time
        # to list the run; one job may run for the whole lease.
        PlanStatus.DISPATCHING: t.dispatch_settle_seconds
        + t.dispatch_lease_seconds
        + t.stuck_seconds,
        # The tracking chain saves the run at every poll.
        PlanStatus.RUNNING: t.poll_seconds + t.dispatch_lease_seconds + t.stuck_seconds,
    }


async def reconcile(ctx: Context) -> dict[str, int]:
    """One sweep; returns how many plans were moved on, per state."""
    owner = uuid.uuid4().hex
    lease = max(10.0, 2.0 * ctx.tuning.reconcile_seconds)
    if not await ctx.store.claim_lease(LEASE_KEY, owner, lease):
        return {}  # another replica is sweeping
    try:
        return await _sweep(ctx)
    finally:
        await ctx.store.release_lease(LEASE_KEY, owner)


async def _sweep(ctx: Context) -> dict[str, int]:
    now = ctx.clock().timestamp()
    due = deadlines(ctx)
    moved: dict[str, int] = {}

    def bucket(status: PlanStatus) -> str:
        return f"reconcile{int(now // max(1.0, due[status]))}"

    async def move(status: PlanStatus, name: jobs.PlanJobName, plan_id: str) -> None:
        log.warning("plan %s stayed %s past its deadline: queuing %s", plan_id, status, name)
        await ctx.again(name, plan_id, bucket(status), 0)
        moved[status.value] = moved.get(status.value, 0) + 1

    status = PlanStatus.PENDING
    for plan_id in await ctx.store.idle_plans(status, due[status], without_card=True, limit=BATCH):
        await move(status, "card", plan_id)
    status = PlanStatus.APPROVED
    for plan_id in await ctx.store.idle_plans(status, due[status], limit=BATCH):
        await move(status, "dispatch", plan_id)
    status = PlanStatus.DISPATCHING
    for plan_id in await ctx.store.idle_plans(status, due[status], limit=BATCH):
        await move(status, "dispatch", plan_id)
    status = PlanStatus.RUNNING
    quiet = await ctx.store.idle_plans(status, due[status], limit=BATCH)
    waited_out: set[str] = set()
    if quiet:
        # A chain waiting out a rate limit has its next look deferred: leave it be unless it
        # has been quiet for longer than any rate limit lasts.
        waited_out = set(await ctx.store.idle_plans(status, RATE_LIMIT_WAIT_SECONDS, limit=BATCH))
    for plan_id in quiet:
        record = await ctx.store.load(plan_id)
        if record is None or record.run is None or record.status != status:
            continue
        if "rate limit" in record.run.detail and plan_id not in waited_out:
            continue
        await move(status, "track", plan_id)
    return moved


# -- a job that fails for good -------------------------------------------------------------

_ADVICE: dict[str, str] = {
    "dispatch": "Nothing runs twice: I will look at GitHub again shortly and dispatch, track "
    "or report it. If this keeps happening, check the workflow and GitHub's status.",
    "track": "The run goes on at GitHub (see the run link); I will look at it again shortly.",
    "card": "The plan is saved; its card will be posted or refreshed as soon as Slack answers.",
    "veto_window": "Nobody vetoed in time, but the plan did not move on; an approver can "
    "approve it on its card.",
    "expire": "The plan could not be marked expired; it expires at the next click anyway.",
    "remind": "The reminder was not sent; the plan still waits for a decision on its card.",
}


async def job_failed(ctx: Context, job: jobs.Job, error: str) -> None:
    """A job failed on its last try: say in the thread what failed and what the person can
    do, and audit it. Never raises (it runs when things are already going wrong)."""
    try:
        await _job_failed(ctx, job, error[:300])
    except Exception:
        log.exception("could not report the failure of %s", job)


async def _job_failed(ctx: Context, job: jobs.Job, error: str) -> None:
    thread: Thread | None = None
    plan_id = ""
    text = ""
    match job:
        case jobs.PlanDirective(directive=directive):
            plan_id = integrator.plan_id_for(directive.event_id)
            record = await ctx.store.load(plan_id)
            if record is not None:
                thread = record.thread
                text = (
                    f"I saved plan {plan_id} but could not finish posting it ({error}). "
                    "I will post its card as soon as Slack answers; nothing runs without approval."
                )
            else:
                memo = await ctx.store.memo(f"planning:{directive.event_id}")
                ts = directive.thread.thread_ts or memo.get("thread_ts", "")
                thread = Thread(directive.thread.channel, ts)
                what = "rollback" if directive.kind == "rollback" else "directive"
                text = (
                    f"I could not plan your {what} ({error}). Nothing will run. "
                    "Please ask again in a few minutes."
                )
        case jobs.Revise(plan_id=plan_id):
            record = await ctx.store.load(plan_id)
            thread = record.thread if record is not None else None
            text = (
                f"I could not revise plan {plan_id} ({error}). Nothing will run; "
                "ask again with the change you want."
            )
        case jobs.OnPlan(name=name, plan_id=plan_id):
            record = await ctx.store.load(plan_id)
            thread = record.thread if record is not None else None
            text = f"The {name.replace('_', ' ')} step of plan {plan_id} failed ({error}). "
            text += _ADVICE.get(name, "")
        case jobs.RunEvent() | jobs.Reconcile():
            log.warning("job %s failed for good: %s (the next poll or sweep covers it)", job, error)
            return  # no plan, no thread to tell
    await ctx.store.audit("job.failed", plan_id, "sophie", {"job": job.name, "error": error})
    if thread is not None and text:
        await ctx.notifier.post_text(thread, text)


async def card_gone(ctx: Context, plan_id: str, channel: str, card_ts: str) -> None:
    """Someone clicked a card whose plan no longer exists: the card says so, without buttons."""
    if await ctx.store.load(plan_id) is not None:
        return
    await ctx.notifier.card_gone(channel, card_ts, plan_id)
