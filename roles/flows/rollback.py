"""Rollback is a command, not a word: the Rollback button and ``/sophie rollback``.

Only these start a plan of kind "rollback"; its target commit comes from the
deployment history (never from a model or from wording), and who may ask for
one is the constitution's to say (:func:`roles.approvals.may_decide`).
"""

from __future__ import annotations

import logging

from roles import approvals, navigator
from roles.flows import intake
from roles.flows.context import Context, Reply
from roles.flows.deciding import actor_groups, refused
from roles.records import Actor, Directive, PlanRecord

log = logging.getLogger("sophie.rollback")


async def start(ctx: Context, plan_id: str, actor: Actor) -> Reply:
    """Roll back what plan ``plan_id`` deployed, to the last known good deployment."""
    record = await ctx.store.load(plan_id)
    if record is None:
        return Reply(False, "I have no record of that plan.")
    target = record.plan.target
    constitution = ctx.constitution()
    groups = await actor_groups(ctx, constitution, record.plan, actor)
    why = approvals.may_decide(constitution, record.plan, [], actor, groups, "rollback")
    if why:
        await refused(ctx, plan_id, actor, "rollback", why)
        return Reply(False, f"You can't start this rollback: {why}.")
    directive = Directive(
        text=f"Roll back {target.repo} in {target.environment} to the last known good deployment",
        requester=actor,
        thread=record.thread,
        source="button",
        event_id=f"rollback:{plan_id}",
        kind="rollback",
        rollback_from=(record.run.head_sha if record.run else "") or "",
    )
    if await intake.receive(ctx, directive) != intake.Intake.ACCEPTED:
        return Reply(False, "A rollback of this run was already requested.")
    return Reply(True, f"Preparing the rollback of {target.environment}…")


async def target(
    ctx: Context, reading: navigator.Reading, directive: Directive
) -> tuple[str, str] | None:
    """(sha, ref) of the deployment to restore, from the deployment history."""
    key = f"{reading.repo.name}:{reading.environment}"
    if directive.rollback_from:
        prepared = await ctx.store.prepared_rollback(key)
        if prepared is not None and prepared[0] == directive.rollback_from:
            return prepared[1], prepared[2]  # computed when that run finished
    try:
        return await ctx.ci.rollback_target(
            reading.repo.name, reading.environment, directive.rollback_from or None
        )
    except Exception:
        log.exception("could not read the deployment history of %s", key)
        return None


async def prepare(ctx: Context, record: PlanRecord) -> None:
    """After a deployment, find what it would roll back to, so the button is instant and
    the result can say what Rollback would deploy."""
    run = record.run
    if run is None or run.dry_run or not run.head_sha:
        return
    t = record.plan.target
    try:
        found = await ctx.ci.rollback_target(t.repo, t.environment, run.head_sha)
    except Exception:
        log.exception("could not prepare a rollback for %s", record.plan.id)
        return
    if found is not None:
        await ctx.store.set_prepared_rollback(f"{t.repo}:{t.environment}", run.head_sha, *found)
        sha, ref = found
        run.rollback_to = f"{ref}@{sha[:12]}"
        await ctx.store.save_run(record.plan.id, run)
