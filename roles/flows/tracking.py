"""Following a run until it ends; then Ψ remembers and the thread hears the result."""

from __future__ import annotations

import logging
from dataclasses import replace

from roles import integrator, jobs
from roles.flows import changing, queueing, remembering, reviewing, rollback
from roles.flows.context import Context, lease_owner, track_tag
from roles.flows.deciding import refresh_card
from roles.ports import CIRateLimited
from roles.records import PlanRecord, PlanStatus, RunInfo

log = logging.getLogger("sophie.tracking")

# How a run can end (REVIEW: its checked change waits for review; nothing deployed).
ENDED = (PlanStatus.SUCCEEDED, PlanStatus.FAILED, PlanStatus.REVIEW)

# How long the notes of a finished run's wrap-up are kept (a retry comes within minutes).
FINISH_MEMO_SECONDS = 24 * 3600


async def track(ctx: Context, plan_id: str, reschedule: bool = True) -> bool:
    """One look at the run; schedules the next unless it has finished. True when done.

    Webhook-triggered looks pass ``reschedule=False``: the polling chain is already
    scheduled, and a second chain per delivery would multiply the polling.
    """
    record = await ctx.store.load(plan_id)
    if record is None or record.run is None:
        return True
    if record.status != PlanStatus.RUNNING:
        if record.status in ENDED:
            await _wrap_up(ctx, plan_id)  # an earlier try marked the outcome, then stopped
        if record.status == PlanStatus.REVIEW:
            await reviewing.ask(ctx, plan_id)  # posted once; a retry finds it posted
        return True
    previous = record.run
    try:
        if previous.run_id is None and not previous.dry_run:
            # GHES gave no run details: find the run by the correlation id first.
            found = await ctx.ci.find_run(record.plan, previous.correlation_id)
            run = await ctx.ci.refresh(record.plan, found) if found else previous
        else:
            run = await ctx.ci.refresh(record.plan, previous)
    except CIRateLimited as exc:
        if "rate limit" not in previous.detail:
            await ctx.notifier.post_text(
                record.thread,
                f"GitHub's {exc.kind} rate limit delays tracking of {plan_id}; "
                f"next look in {exc.retry_after:.0f} s.",
            )
        previous.detail = str(exc)
        await ctx.store.save_run(plan_id, previous)
        if reschedule:
            await ctx.again(
                "track", plan_id, track_tag(previous, previous.polls, "rl"), exc.retry_after
            )
        return False
    except Exception:
        log.exception("could not refresh run of %s; will retry", plan_id)
        run = replace(previous)
    for kept in ("message_ts", "correlation_id", "dispatched_at", "attempts", "shown", "phase"):
        setattr(run, kept, getattr(previous, kept))
    if run.change is None:
        run.change = previous.change  # the change a deploy run builds stays with it
    run.polls = previous.polls + 1
    record.run = run
    if run.signature() != run.shown and (run.status == "completed" or _may_edit(ctx, previous)):
        await ctx.notifier.post_run_status(record)
        run.shown = run.signature()
    await ctx.store.save_run(plan_id, run)
    if run.status != "completed":
        if run.polls >= ctx.tuning.max_polls:
            await finish(ctx, record, PlanStatus.FAILED, "gave up tracking the run")
            return True
        if reschedule:
            await ctx.again("track", plan_id, track_tag(run, run.polls), ctx.tuning.poll_seconds)
        return False
    if run.phase == "implement" and run.succeeded:
        # Δ checks the produced change; a passing one goes on to the run that deploys it.
        moved = await changing.implemented(ctx, record, run)
        if not moved and reschedule:
            await ctx.again(
                "track", plan_id, track_tag(run, run.polls, "change"), ctx.tuning.poll_seconds
            )
        return moved
    await finish(ctx, record, PlanStatus.SUCCEEDED if run.succeeded else PlanStatus.FAILED)
    return True


def _may_edit(ctx: Context, previous: RunInfo) -> bool:
    """Slack allows about one update per second per message; stay well under it."""
    now = ctx.clock().timestamp()
    last = ctx.last_edit.get(previous.message_ts or "", 0.0)
    if now - last < ctx.tuning.status_edit_seconds:
        return False
    ctx.last_edit[previous.message_ts or ""] = now
    return True


async def run_event(ctx: Context, run_id: int, correlation_id: str = "") -> None:
    """A webhook said something happened to this run: look now, not at the next poll.

    A run whose id SOPHIE does not know yet (GitHub Enterprise Server returns none at
    dispatch; or the webhook beat the dispatch reply) is matched by the correlation id
    its name carries, for the plan's current dispatch attempt only; GitHub's own answer
    about the run must carry the same id before the run is adopted.
    """
    plan_id = await ctx.store.plan_for_run(run_id)
    if plan_id is None and correlation_id:
        plan_id = await _adopt(ctx, run_id, correlation_id)
    if plan_id is None:
        return
    await track(ctx, plan_id, reschedule=False)
    record = await ctx.store.load(plan_id)
    run = record.run if record is not None else None
    if record and run and record.status == PlanStatus.RUNNING and run.signature() != run.shown:
        # Slack's edit rate held this change back: show it when the window has passed,
        # not at the next poll (one follow-up per window, however many events came).
        window = max(ctx.tuning.status_edit_seconds, 0.05)
        key = f"run_event:{run_id}:held:{int(ctx.clock().timestamp() / window)}"
        await ctx.enqueue(jobs.RunEvent(run_id, correlation_id), key, window)


async def _adopt(ctx: Context, run_id: int, correlation_id: str) -> str | None:
    plan_id = integrator.plan_of_correlation(correlation_id)
    record = await ctx.store.load(plan_id) if plan_id else None
    if record is None or record.run is None or record.run.run_id is not None:
        return None
    if record.run.correlation_id != correlation_id:
        return None  # an earlier attempt's run, or not ours
    now = ctx.clock().timestamp()
    if record.status == PlanStatus.DISPATCHING:
        # The webhook beat the dispatch call's reply: look again shortly.
        if now - record.run.dispatched_at < ctx.tuning.dispatch_settle_seconds:
            key = f"run_event:{run_id}:{correlation_id}:{int(now * 1000)}"
            await ctx.enqueue(jobs.RunEvent(run_id, correlation_id), key, 0.5)
        return None
    if record.status != PlanStatus.RUNNING:
        return None
    try:  # the gateway refuses a run whose name carries another correlation id
        await ctx.ci.refresh(record.plan, replace(record.run, run_id=run_id))
    except Exception as exc:
        log.warning("run %s is not the run of %s: %s", run_id, correlation_id, exc)
        return None
    # Known by id from now on; shown="" so the status message names the run at once.
    await ctx.store.save_run(plan_id, replace(record.run, run_id=run_id, shown=""))
    log.info("run %s of %s found by its name (correlation %s)", run_id, plan_id, correlation_id)
    return plan_id


async def finish(ctx: Context, record: PlanRecord, status: PlanStatus, note: str = "") -> None:
    """Mark the outcome, then wrap up once. A try that stopped after marking it (its reply
    lost, its worker killed) leaves a note, so the next try wraps up instead of stopping."""
    plan_id = record.plan.id
    await ctx.store.set_memo(_finish_key(record), "status", status.value, FINISH_MEMO_SECONDS)
    await ctx.store.transition(plan_id, {PlanStatus.RUNNING}, status, note)
    await queueing.release(ctx, record.plan)  # the next deploy in line may start
    await _wrap_up(ctx, plan_id)


def _finish_key(record: PlanRecord) -> str:
    """Notes of one run's wrap-up: a plan that implements finishes twice (its implement
    run ending in review, then the run that deploys the approved change)."""
    run = record.run.correlation_id if record.run is not None else ""
    return f"finish:{record.plan.id}:{run}"


async def _wrap_up(ctx: Context, plan_id: str) -> None:
    """Ψ remembers and trust moves, the rollback is prepared, the result is posted: each
    once, under a lease (another job finishing the same run waits its turn)."""
    loaded = await ctx.store.load(plan_id)
    if loaded is None or loaded.run is None:
        return
    memo_key = _finish_key(loaded)
    if not (await ctx.store.memo(memo_key)).get("status"):
        return  # finished before these notes existed, or long ago: nothing is pending
    lease, owner = f"finish:{plan_id}", lease_owner()
    if not await ctx.store.claim_lease(lease, owner, ctx.tuning.dispatch_lease_seconds):
        return
    try:
        done = await ctx.store.memo(memo_key)
        record = await ctx.store.load(plan_id)
        if done.get("result") or record is None or record.run is None:
            return
        if record.status not in ENDED:
            return
        if not done.get("remembered"):
            await _remember(ctx, record)
            await ctx.store.set_memo(memo_key, "remembered", "1", FINISH_MEMO_SECONDS)
        if record.plan.target.action == "deploy" and record.run.phase != "implement":
            await rollback.prepare(ctx, record)
        await ctx.notifier.post_result(record)
        await ctx.store.set_memo(memo_key, "result", "1", FINISH_MEMO_SECONDS)
    finally:
        await ctx.store.release_lease(lease, owner)
    await refresh_card(ctx, plan_id)


async def _remember(ctx: Context, record: PlanRecord) -> None:
    """Ψ: keep the outcome and move trust (once; dry runs prove nothing)."""
    await remembering.ended(ctx, record.plan.id)
