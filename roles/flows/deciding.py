"""Ω: approvals, vetoes, requested changes, veto windows, expiry and reminders.

Who may decide and whether the decisions suffice is judged in
:mod:`roles.approvals` only; this flow signs, records atomically and moves on.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from roles import approvals, jobs
from roles.attestation import decision_statement, sign_statement
from roles.constitution import Constitution
from roles.flows.context import Context, Reply
from roles.plan import ApprovalLevel, Plan
from roles.records import Actor, Decision, DecisionRecord, PlanRecord, PlanStatus

log = logging.getLogger("sophie.deciding")

MAX_DECIDE_ATTEMPTS = 5


def bot_actor(ctx: Context) -> Actor:
    return Actor(team_id=approvals.BOT_TEAM, user_id=f"sophie:{ctx.signer.keyid}", name="SOPHIE")


async def start_approval(ctx: Context, record: PlanRecord, constitution: Constitution) -> None:
    await home_changed(ctx, record)  # the plan now waits on people (its card is posted)
    level = record.plan.approval.level
    if level == ApprovalLevel.AUTONOMOUS:
        await bot_decides(ctx, record, constitution, approval_rule(record.plan))
    elif level == ApprovalLevel.NOTIFICATION:
        window = constitution.environment(record.plan.target.environment).veto_window_seconds
        await ctx.enqueue(
            jobs.OnPlan("veto_window", record.plan.id), f"window:{record.plan.id}", window
        )


def approval_rule(plan: Plan) -> str:
    """The constitution rule that set the plan's level (named in the bot's signature)."""
    reasons = plan.approval.reasons
    return reasons[0].id if reasons else f"environments.{plan.target.environment}"


async def veto_window_closed(ctx: Context, plan_id: str) -> None:
    record = await ctx.store.load(plan_id)
    if record is None or record.status != PlanStatus.PENDING:
        return
    await bot_decides(
        ctx, record, ctx.constitution(), f"{approval_rule(record.plan)}.veto-window-elapsed"
    )


async def bot_decides(
    ctx: Context, record: PlanRecord, constitution: Constitution, rule: str
) -> None:
    decision = signed(ctx, record.plan, constitution, bot_actor(ctx), "approve", rule)
    completes = _completes(ctx, record, decision, constitution)
    result = await ctx.store.decide(
        record.plan.id, record.plan.digest, decision, len(record.decisions), completes
    )
    if result.accepted and completes:
        await ctx.refresh_card_later(record.plan.id)
        await approved(ctx, record.plan.id)


async def approved(ctx: Context, plan_id: str) -> None:
    """Approved plans are dispatched. The approval is already recorded and signed: if the
    queue refuses the job, the reconciler dispatches the plan once it has sat approved for
    ``stuck_seconds`` (so the approver is still told "approved")."""
    try:
        await ctx.enqueue(jobs.OnPlan("dispatch", plan_id), f"dispatch:{plan_id}")
    except Exception:
        log.warning(
            "could not queue the dispatch of %s; the reconciler will", plan_id, exc_info=True
        )


def signed(
    ctx: Context,
    plan: Plan,
    constitution: Constitution,
    actor: Actor,
    decision: Decision,
    rule: str = "",
    groups: tuple[str, ...] = (),
    reason: str = "",
) -> DecisionRecord:
    now = ctx.clock()
    statement = decision_statement(
        plan,
        actor,
        decision,
        now,
        timedelta(seconds=plan.approval.ttl_seconds),
        constitution.digest_hex,
        rule,
        groups,
    )
    return DecisionRecord(
        actor=actor,
        decision=decision,
        at=now,
        groups=groups,
        reason=reason,
        envelope=sign_statement(statement, ctx.signer),
    )


async def refused(ctx: Context, plan_id: str, actor: Actor, what: str, why: str) -> None:
    log.info("refused %s on %s by %s: %s", what, plan_id, actor.user_id, why)
    await ctx.store.audit(
        "decision.refused", plan_id, actor.user_id, {"decision": what, "reason": why}
    )


async def actor_groups(
    ctx: Context, constitution: Constitution, plan: Plan, actor: Actor
) -> set[str]:
    candidates = list(
        dict.fromkeys([*constitution.approvers.groups, *plan.approval.distinct_groups])
    )
    env = constitution.environments.get(plan.target.environment)
    if env is not None and env.rollback_by is not None:
        candidates = list(dict.fromkeys([*candidates, *env.rollback_by.groups]))
    return await ctx.directory.groups_of(actor.user_id, candidates)


def card_binding_problem(record: PlanRecord, digest: str) -> str | None:
    """A click must carry the full digest of the plan its card shows."""
    if not digest or digest != record.plan.digest:
        return "This card is out of date: the plan changed since it was posted."
    return None


async def decide(
    ctx: Context,
    plan_id: str,
    digest: str,
    actor: Actor,
    decision: Decision,
    reason: str = "",
    check_only: bool = False,
) -> Reply:
    """An approver clicked Approve or Veto on a card bound to ``plan_id`` and ``digest``.

    ``check_only`` answers whether they may, without deciding (before a veto modal).
    """
    # Optimistic concurrency: judge on what we loaded; if another decision landed
    # in between, the store says "conflict" and we judge again on fresh state.
    for _ in range(MAX_DECIDE_ATTEMPTS):
        record = await ctx.store.load(plan_id)
        if record is None:
            return Reply(False, "I have no record of that plan.")
        reply, outcome = await _decide_once(
            ctx, record, digest, actor, decision, reason, check_only
        )
        if outcome != "conflict":
            return reply
    return Reply(False, "Too many decisions at once on this plan; please try again.")


async def _decide_once(
    ctx: Context,
    record: PlanRecord,
    digest: str,
    actor: Actor,
    decision: Decision,
    reason: str,
    check_only: bool,
) -> tuple[Reply, str]:
    plan = record.plan
    plan_id = plan.id
    stale_card = card_binding_problem(record, digest)
    if stale_card:
        return Reply(False, stale_card), ""
    if record.status != PlanStatus.PENDING:
        if any(d.actor.user_id == actor.user_id for d in record.decisions):
            return Reply(False, "You have already decided on this plan."), ""
        return Reply(False, f"This plan is already {record.status.value}."), ""
    constitution = ctx.constitution()
    if approvals.expired(plan, ctx.clock()):
        if await ctx.store.transition(
            plan_id, {PlanStatus.PENDING}, PlanStatus.EXPIRED, "approval time-to-live passed"
        ):
            await ctx.refresh_card_later(plan_id)
        return Reply(False, "This plan has expired; ask again for a fresh plan."), ""
    if plan.constitution.digest != constitution.digest_hex:
        if await ctx.store.transition(
            plan_id, {PlanStatus.PENDING}, PlanStatus.STALE, "the constitution changed"
        ):
            await ctx.refresh_card_later(plan_id)
        text = "The constitution changed since this plan was made; it is stale."
        return Reply(False, text), ""
    groups = await actor_groups(ctx, constitution, plan, actor)
    why = approvals.may_decide(constitution, plan, record.decisions, actor, groups, decision)
    if why:
        await refused(ctx, plan_id, actor, decision, why)
        return Reply(False, f"You can't {decision} this plan: {why}."), ""
    if check_only:
        return Reply(True, ""), ""
    # Every decision names the constitution rule that set the plan's level.
    decided = signed(
        ctx,
        plan,
        constitution,
        actor,
        decision,
        approval_rule(plan),
        groups=tuple(sorted(groups)),
        reason=reason,
    )
    completes = decision == "approve" and _completes(ctx, record, decided, constitution)
    result = await ctx.store.decide(plan_id, plan.digest, decided, len(record.decisions), completes)
    if not result.accepted:
        if result.reason == "conflict":
            return Reply(False, ""), "conflict"
        return Reply(False, result.reason or f"This plan is already {result.status.value}."), ""
    await ctx.refresh_card_later(plan_id)
    if decision == "veto":
        if plan.requester.user_id != actor.user_id:  # the requester hears it, with why
            why = f": {reason}" if reason else ""
            await ctx.notifier.tell_user(
                record.thread,
                plan.requester.user_id,
                f"Your plan {plan_id} was vetoed by {actor.name or actor.user_id}{why}. "
                "Nothing will run.",
            )
        return Reply(True, "Vetoed. Nothing will run."), ""
    if completes:
        await approved(ctx, plan_id)
        return Reply(True, "Approved and signed."), ""
    return Reply(True, "Approval recorded and signed; more approvals are needed."), ""


def _completes(
    ctx: Context, record: PlanRecord, decided: DecisionRecord, constitution: Constitution
) -> bool:
    """Would this decision, added to those already given, make the plan runnable?"""
    after = [*record.decisions, decided]
    return approvals.tally(record.plan, after, constitution, ctx.signer, ctx.clock()).complete


async def expire(ctx: Context, plan_id: str) -> None:
    """The approval time-to-live has passed: a pending plan can no longer run."""
    record = await ctx.store.load(plan_id)
    if record is None or record.status != PlanStatus.PENDING:
        return
    if not approvals.expired(record.plan, ctx.clock()):
        return  # the job ran early (clock skew); the next click re-checks anyway
    hours = record.plan.approval.ttl_seconds / 3600
    note = f"approval time-to-live ({hours:g} h) passed; approvals given are void"
    if await ctx.store.transition(plan_id, {PlanStatus.PENDING}, PlanStatus.EXPIRED, note):
        await ctx.notifier.post_text(
            record.thread, f"Plan {plan_id} expired: {note}. Ask again for a fresh plan."
        )
        await refresh_card(ctx, plan_id)


async def remind(ctx: Context, plan_id: str) -> None:
    record = await ctx.store.load(plan_id)
    if record is None or record.status != PlanStatus.PENDING:
        return
    ends = record.plan.created_at + timedelta(seconds=record.plan.approval.ttl_seconds)
    minutes = max(1, int((ends - ctx.clock()).total_seconds() // 60))
    needed = approvals.still_needed(record.plan, record.decisions) or ["a decision"]
    await ctx.notifier.post_text(
        record.thread,
        f"Plan {plan_id} expires in {minutes} min and still needs {', '.join(needed)}.",
    )


async def request_changes(
    ctx: Context, plan_id: str, digest: str, actor: Actor, feedback: str
) -> Reply:
    """Void the plan (and every approval of it) and have Σ revise it with the feedback."""
    feedback = feedback.strip()
    if not feedback:
        return Reply(False, "Say what should change.")
    record = await ctx.store.load(plan_id)
    if record is None:
        return Reply(False, "I have no record of that plan.")
    stale_card = card_binding_problem(record, digest)
    if stale_card:
        return Reply(False, stale_card)
    if record.status != PlanStatus.PENDING:
        return Reply(False, f"This plan is already {record.status.value}.")
    constitution = ctx.constitution()
    groups = await actor_groups(ctx, constitution, record.plan, actor)
    why = approvals.may_decide(
        constitution, record.plan, record.decisions, actor, groups, "request_changes"
    )
    if why:
        await refused(ctx, plan_id, actor, "request_changes", why)
        return Reply(False, f"You can't request changes to this plan: {why}.")
    note = f"changes requested by {actor.user_id}: {feedback[:300]}"
    if not await ctx.store.transition(plan_id, {PlanStatus.PENDING}, PlanStatus.SUPERSEDED, note):
        return Reply(False, "This plan was decided in the meantime.")
    await ctx.store.audit(
        "plan.changes_requested", plan_id, actor.user_id, {"feedback": feedback[:2000]}
    )
    await refresh_card(ctx, plan_id)
    await ctx.enqueue(jobs.Revise(plan_id, feedback[:2000], actor.user_id), f"revise:{plan_id}")
    return Reply(True, "Changes requested: earlier approvals are void; revising the plan.")


async def refresh_card(ctx: Context, plan_id: str) -> None:
    """Show the plan's state on its card; a card never posted (the planning job stopped
    between saving the plan and posting it) is posted now, and the plan goes on."""
    from roles.flows.planning import card_context, settle
    from roles.flows.remembering import ended

    record = await ctx.store.load(plan_id)
    if record is None:
        return
    if record.status.final:
        # Every move to an end (veto, expiry, stale, error, a finished run) refreshes
        # the card: Ψ keeps the outcome here too (once; kept already is a no-op).
        await ended(ctx, plan_id)
    await home_changed(ctx, record)
    if not record.card_ts:
        await settle(ctx, record)
        return
    await ctx.notifier.update_card(record, await card_context(ctx, record))


async def home_changed(ctx: Context, record: PlanRecord) -> None:
    """Tell App Home that ``record`` changed. Cosmetic: a failure is logged, never raised."""
    if ctx.home_changed is None:
        return
    try:
        await ctx.home_changed(record)
    except Exception:
        log.warning("could not refresh App Home for %s", record.plan.id, exc_info=True)
