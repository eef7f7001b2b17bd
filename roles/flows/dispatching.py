"""Σ dispatch: an approved plan reaches GitHub exactly once, even across retries and crashes."""

from __future__ import annotations

import logging

from roles import approvals, integrator, what_runs
from roles.flows import changing, queueing
from roles.flows.context import Context, lease_owner, track_tag
from roles.flows.deciding import refresh_card
from roles.ports import CIRateLimited, CIUncertain
from roles.records import PlanRecord, PlanStatus, RunInfo

log = logging.getLogger("sophie.dispatching")

MAX_DISPATCH_ATTEMPTS = 3
# Correlation ids are ``<plan id>.<n>``: the run that deploys a checked change counts its
# attempts from here, so it is never mistaken for the implement run before it.
DEPLOY_AFTER_CHANGE = 10


async def dispatch(ctx: Context, plan_id: str) -> None:
    """Only the holder of the plan's dispatch lease talks to GitHub, so no other job
    can act while a dispatch call is in flight. A marker (correlation id, "unknown"
    outcome) is saved before GitHub is called; a job that finds the plan already
    dispatching looks for the run by that id before it would ever dispatch again.
    """
    # The owner is the job: when a killed worker's job runs again it takes its own lease
    # back at once; any other job waits until the lease is released or lapses.
    lease, owner = f"dispatch:{plan_id}", lease_owner()
    if not await ctx.store.claim_lease(lease, owner, ctx.tuning.dispatch_lease_seconds):
        log.info("plan %s is being dispatched by another worker", plan_id)
        return
    try:
        await _dispatch_held(ctx, plan_id)
    finally:
        await ctx.store.release_lease(lease, owner)


async def gate(ctx: Context, record: PlanRecord) -> str | None:
    """Why an approved plan may not run now: the decisions must still add up, and what
    runs must still be exactly what the constitution derives for it."""
    constitution = ctx.constitution()
    counted = approvals.tally(record.plan, record.decisions, constitution, ctx.signer, ctx.clock())
    if not counted.complete:
        return counted.reason
    return what_runs.mismatch(constitution, record.plan) or await changing.change_problem(
        ctx, record
    )


async def _dispatch_held(ctx: Context, plan_id: str) -> None:
    record = await ctx.store.load(plan_id)
    if record is None:
        return
    if record.status == PlanStatus.DISPATCHING:
        await _resume(ctx, record)
        return
    if record.status == PlanStatus.RUNNING and record.run is not None:
        # A re-run of a dispatch job whose worker died after the run started: make
        # sure tracking goes on. The key follows the stored poll count, so a chain
        # that is still alive merges with this one instead of doubling.
        await ctx.again("track", plan_id, track_tag(record.run, record.run.polls), 0)
        return
    if record.status != PlanStatus.APPROVED:
        log.info("plan %s not dispatched: it is %s", plan_id, record.status.value)
        return
    # One deploy per repo@environment: wait in line (told in the thread) if another runs.
    if not await queueing.take_slot(ctx, record):
        return
    if not await ctx.store.transition(plan_id, {PlanStatus.APPROVED}, PlanStatus.DISPATCHING):
        log.info("plan %s not dispatched: it is %s", plan_id, record.status.value)
        return
    record.status = PlanStatus.DISPATCHING
    why = await gate(ctx, record)
    if why:
        await ctx.store.transition(plan_id, {PlanStatus.DISPATCHING}, PlanStatus.STALE, why)
        await queueing.release(ctx, record.plan)
        await ctx.notifier.post_text(record.thread, f"Not dispatched: {why}.")
        await refresh_card(ctx, plan_id)
        return
    await _dispatch_once(ctx, record, attempt=1)


async def _dispatch_once(ctx: Context, record: PlanRecord, attempt: int) -> None:
    plan_id = record.plan.id
    implementing = changing.implementing(record)
    # The run that deploys a checked change carries it, and runs on its branch.
    change = None if implementing or record.run is None else record.run.change
    marker = RunInfo(
        dry_run=ctx.ci.dry_run,
        status="queued",
        correlation_id=f"{plan_id}.{attempt + (DEPLOY_AFTER_CHANGE if change else 0)}",
        dispatched_at=ctx.clock().timestamp(),
        attempts=attempt,
        dispatch_state="unknown",
        phase="implement" if implementing else "run",
        change=change,
    )
    await ctx.store.save_run(plan_id, marker)
    envelopes = [d.envelope for d in record.approvals]
    bundle_url = ctx.tuning.bundle_url(plan_id) if ctx.tuning.bundle_url else None
    try:
        # The constitution travels with the plan, so the workflow verifies without
        # reaching SOPHIE (its digest is bound in every signed decision).
        inputs = integrator.workflow_inputs(
            record.plan,
            envelopes,
            bundle_url,
            marker.correlation_id,
            ctx.constitution(),
            implementing=implementing,
            change=change,
        )
        ref = change.branch if change is not None else ""
        run = await ctx.ci.dispatch(record.plan, inputs, marker.correlation_id, ref)
    except CIRateLimited as exc:
        marker.dispatch_state = "not_sent"
        marker.detail = str(exc)
        await ctx.store.save_run(plan_id, marker)
        await ctx.notifier.post_text(
            record.thread,
            f"GitHub's {exc.kind} rate limit delays plan {plan_id}: "
            f"dispatching in {exc.retry_after:.0f} s.",
        )
        await ctx.again("dispatch", plan_id, _tag(ctx, "rl", attempt), exc.retry_after)
        return
    except CIUncertain as exc:
        marker.detail = str(exc)[:300]
        await ctx.store.save_run(plan_id, marker)
        await ctx.notifier.post_text(
            record.thread,
            f"GitHub did not confirm the dispatch of {plan_id} ({str(exc)[:200]}); "
            "checking whether the run started before trying again.",
        )
        await ctx.again(
            "dispatch", plan_id, _tag(ctx, "check", attempt), ctx.tuning.dispatch_recheck_seconds
        )
        return
    except Exception as exc:  # refused (4xx, bad inputs): the thread must hear why
        log.exception("dispatch of %s failed", plan_id)
        await ctx.store.transition(
            plan_id, {PlanStatus.DISPATCHING}, PlanStatus.ERROR, str(exc)[:300]
        )
        await queueing.release(ctx, record.plan)
        await ctx.notifier.post_text(record.thread, f"Dispatch failed: {str(exc)[:300]}")
        await refresh_card(ctx, plan_id)
        return
    await running(ctx, record, marker, run)


async def running(ctx: Context, record: PlanRecord, marker: RunInfo, run: RunInfo) -> None:
    plan_id = record.plan.id
    run.correlation_id = marker.correlation_id
    run.dispatched_at = marker.dispatched_at
    run.attempts = marker.attempts
    run.dispatch_state = ""
    run.phase = marker.phase
    run.change = marker.change
    await ctx.store.save_run(plan_id, run)
    await ctx.store.audit(
        "plan.dispatched",
        plan_id,
        "sophie",
        {"run_id": run.run_id, "correlation_id": run.correlation_id, "dry_run": run.dry_run},
    )
    record.run = run
    record.status = PlanStatus.RUNNING
    run.message_ts = await ctx.notifier.post_run_status(record)
    run.shown = run.signature()
    await ctx.store.save_run(plan_id, run)
    await ctx.store.transition(plan_id, {PlanStatus.DISPATCHING}, PlanStatus.RUNNING)
    await refresh_card(ctx, plan_id)
    delay = 0 if run.dry_run else ctx.tuning.poll_seconds
    await ctx.again("track", plan_id, track_tag(run, 0), delay)


async def _resume(ctx: Context, record: PlanRecord) -> None:
    plan_id = record.plan.id
    marker = record.run
    if marker is None:  # stopped before the marker was saved: nothing was sent
        await _dispatch_once(ctx, record, attempt=1)
        return
    if marker.dispatch_state == "":  # accepted and saved; only the status move was lost
        await ctx.store.transition(plan_id, {PlanStatus.DISPATCHING}, PlanStatus.RUNNING)
        await ctx.again("track", plan_id, track_tag(marker, marker.polls), 0)
        return
    if marker.dispatch_state == "not_sent":
        await _dispatch_once(ctx, record, attempt=marker.attempts + 1)
        return
    try:
        found = await ctx.ci.find_run(record.plan, marker.correlation_id)
    except CIRateLimited as exc:
        await ctx.again("dispatch", plan_id, _tag(ctx, "rl-look", marker.attempts), exc.retry_after)
        return
    # Any other lookup error escapes: the job is retried with backoff (bot/jobs.py), and
    # past the dispatch deadline the reconciler looks again. Never dispatch blind.
    if found is not None:
        log.info("found the run of %s by correlation id; not dispatching again", plan_id)
        await running(ctx, record, marker, found)
        return
    waited = ctx.clock().timestamp() - marker.dispatched_at
    if waited < ctx.tuning.dispatch_settle_seconds:
        await ctx.again(
            "dispatch",
            plan_id,
            _tag(ctx, "look", marker.attempts),
            ctx.tuning.dispatch_recheck_seconds,
        )
    elif marker.attempts < MAX_DISPATCH_ATTEMPTS:
        # GitHub lists a dispatched run within seconds; after this long it never started.
        await _dispatch_once(ctx, record, attempt=marker.attempts + 1)
    else:
        note = f"GitHub did not start the workflow after {marker.attempts} attempts"
        await ctx.store.transition(plan_id, {PlanStatus.DISPATCHING}, PlanStatus.ERROR, note)
        await queueing.release(ctx, record.plan)
        await ctx.notifier.post_text(record.thread, f"Dispatch failed: {note}.")
        await refresh_card(ctx, plan_id)


def _tag(ctx: Context, kind: str, attempt: int) -> str:
    """Each follow-up has its own job identity (a reused id is "already done" and the
    dispatch would stall): what it is, which attempt, and when it was asked for."""
    return f"{kind}{attempt}.{int(ctx.clock().timestamp() * 1000)}"
