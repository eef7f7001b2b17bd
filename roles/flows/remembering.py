"""Ψ remembers: a plan's outcome is kept once, trust moves once, earlier outcomes are
amended (rolled back, restored), and the timings reach the metrics."""

from __future__ import annotations

import logging
from typing import Literal

from roles import memory, outcomes
from roles.constitution import Constitution
from roles.flows.context import Context
from roles.outcomes import Outcome

log = logging.getLogger("sophie.remembering")

# How far back a rollback looks for the deployments it undid.
ROLLBACK_LOOKBACK = 50

Move = Literal["success", "failure", "rollback"]


async def ended(ctx: Context, plan_id: str) -> Outcome | None:
    """Keep the outcome of a plan that has just ended. Idempotent: a second call (a
    retried job, another replica) finds it kept and changes nothing, so trust moves
    at most once per outcome."""
    record = await ctx.store.load(plan_id)
    if record is None or not record.status.final:
        return None
    now = ctx.clock().timestamp()
    outcome = outcomes.outcome_of(record, now)
    if outcome is None or not await ctx.store.record_outcome(outcome):
        return None
    ctx.metrics.outcome(outcome)
    if outcome.dry_run or outcome.result not in ("succeeded", "failed"):
        return outcome  # a dry run proves nothing; a veto or expiry is no run
    constitution = ctx.constitution()
    await move_trust(
        ctx, constitution, outcome, "success" if outcome.result == "succeeded" else "failure"
    )
    if outcome.result == "succeeded" and outcome.action in ("deploy", "rollback"):
        if outcome.action == "rollback":
            await _undone(ctx, constitution, outcome, record.plan.target.sha)
        await _restored(ctx, outcome)
    return outcome


def trust_keys(outcome: Outcome) -> list[str]:
    """Whose trust an outcome moves: the repo@environment, the requester, the models
    that planned it and the people who approved it."""
    keys = memory.relevant_keys(
        outcome.repo, outcome.environment, outcome.requester, outcome.models
    )
    keys += [memory.approver_key(a) for a in outcome.approvers]
    return list(dict.fromkeys(keys))


async def move_trust(ctx: Context, constitution: Constitution, outcome: Outcome, how: Move) -> None:
    for key in trust_keys(outcome):
        current = await ctx.store.trust(key, constitution.trust.initial)
        await ctx.store.set_trust(key, memory.moved(current, how, constitution.trust))


async def _undone(
    ctx: Context, constitution: Constitution, rollback: Outcome, restored_sha: str
) -> None:
    """A rollback restored ``restored_sha``: the deployments above it were undone."""
    history = await ctx.store.outcomes_in(rollback.repo, rollback.environment, ROLLBACK_LOOKBACK)
    for earlier in history:
        if earlier.plan_id == rollback.plan_id or earlier.ended_at > rollback.ended_at:
            continue
        if not earlier.deployed or earlier.dry_run:
            continue
        if earlier.sha and earlier.sha == restored_sha:
            break  # the deployment it went back to
        if earlier.result == "rolled_back":
            continue  # undone by an earlier rollback already
        undone = outcomes.rolled_back(earlier, rollback.ended_at)
        await ctx.store.update_outcome(undone)
        ctx.metrics.restored(undone)
        await move_trust(ctx, constitution, earlier, "rollback")
        log.info("%s was rolled back by %s", earlier.plan_id, rollback.plan_id)
        if not restored_sha:
            break  # no known target: only what ran last was undone


async def _restored(ctx: Context, good: Outcome) -> None:
    """A success in an environment restores the failures before it (time to restore)."""
    history = await ctx.store.outcomes_in(good.repo, good.environment, ROLLBACK_LOOKBACK)
    for earlier in history:
        if earlier.ended_at >= good.ended_at or earlier.restored_at:
            continue
        if earlier.result == "failed" and earlier.action in ("deploy", "rollback"):
            fixed = outcomes.restored(earlier, good.ended_at)
            await ctx.store.update_outcome(fixed)
            ctx.metrics.restored(fixed)
