"""Φ Σ Δ: read a directive, have it planned, check the plan, post the card."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

from roles import (
    approvals,
    diff_engine,
    integrator,
    jobs,
    memory,
    navigator,
    offline_planner,
    outcomes,
    plan_diff,
)
from roles import precedent as precedent_of
from roles.constitution import Constitution
from roles.draft import PlanDraft
from roles.flows import deciding, rollback
from roles.flows.context import Context, lease_owner
from roles.offline_planner import OfflinePlanner
from roles.plan import ApprovalLevel, Plan
from roles.ports import CardContext, PlanningFailed, Proposal
from roles.records import Actor, Directive, PlanRecord, PlanStatus, Thread

log = logging.getLogger("sophie.planning")

REMINDER_LEAD_SECONDS = 3600
# How long a planning job's side effects (its thread, the model's proposal) are remembered.
MEMO_TTL_SECONDS = 24 * 3600


async def plan(
    ctx: Context, directive: Directive, previous: PlanRecord | None = None, feedback: str = ""
) -> PlanRecord | None:
    """Φ Σ Δ: interpret, propose, evaluate; then post the card.

    With ``previous`` and ``feedback`` this is a revision after "request changes".

    A retried job repeats no side effect: the plan id is deterministic, so an existing
    plan is only finished (:func:`settle`); the thread it opened and the model's proposal
    are remembered under the event, so a retry reuses them instead of asking again.
    """
    plan_id = integrator.plan_id_for(directive.event_id)
    existing = await ctx.store.load(plan_id)
    if existing is not None:
        await settle(ctx, existing)
        return existing
    memo_key = f"planning:{directive.event_id}"
    memo = await ctx.store.memo(memo_key)
    constitution = ctx.constitution()
    if previous is not None:
        reading = navigator.revise(previous.plan.directive, feedback, constitution)
    else:
        reading = navigator.interpret(directive.text, constitution, kind=directive.kind)
    if not directive.thread.thread_ts:
        thread_ts = memo.get("thread_ts")
        if thread_ts:
            thread = Thread(directive.thread.channel, thread_ts)
        else:
            thread = await ctx.notifier.open_thread(
                directive.thread.channel, directive.requester.user_id, reading.text
            )
            await ctx.store.set_memo(memo_key, "thread_ts", thread.thread_ts, MEMO_TTL_SECONDS)
        directive = replace(directive, thread=thread)
    if not reading.text:
        await ctx.notifier.post_text(directive.thread, "That directive is empty.")
        return None
    # Ψ: the planner gets the precedent the card will show (found by the directive's words).
    probe = precedent_of.Probe(
        "", reading.intent.value, frozenset(outcomes.words_in(directive.text))
    )
    history = await ctx.store.outcomes_in(
        reading.repo.name, reading.environment, precedent_of.CANDIDATES
    )
    found = precedent_of.find(
        reading.repo.name, reading.environment, probe, history, ctx.clock().timestamp()
    )
    precedent = found.lines()
    rollback_to: tuple[str, str] | None = None
    if directive.kind == "rollback":
        starters = approvals.rollback_starters(constitution, reading.environment)
        groups = await ctx.directory.groups_of(directive.requester.user_id, list(starters.groups))
        why = approvals.may_roll_back(
            constitution, reading.environment, directive.requester, groups
        )
        if why:
            await ctx.store.audit(
                "decision.refused",
                "",
                directive.requester.user_id,
                {"decision": "rollback", "reason": why},
            )
            await ctx.notifier.post_text(directive.thread, f"Rollback refused: {why}.")
            return None
        rollback_to = await rollback.target(ctx, reading, directive)
        if rollback_to is None and not ctx.ci.dry_run:
            await ctx.notifier.post_text(
                directive.thread,
                f"There is no earlier successful deployment of {reading.repo.name} to "
                f"{reading.environment} to roll back to. Nothing will run.",
            )
            return None
    failed = memo.get("failed")
    proposal = _proposal_from(memo.get("proposal"))
    if failed is None and proposal is None:
        try:
            proposal = await _propose(ctx, directive, reading, constitution, precedent)
        except PlanningFailed as exc:
            log.warning("planning failed for %s: %s", directive.event_id, exc)
            failed = f"I could not produce a valid plan: {exc}. Nothing will run."
        except TimeoutError:
            deadline = ctx.tuning.planning_deadline_seconds or 0
            log.warning("planning of %s passed its %.0f s deadline", directive.event_id, deadline)
            failed = (
                f"I could not plan this within {deadline:.0f} s: the model provider is too slow "
                "or unreachable. Nothing will run; please ask again in a few minutes."
            )
        if failed is not None:
            await ctx.store.set_memo(memo_key, "failed", failed, MEMO_TTL_SECONDS)
        else:
            assert proposal is not None
            await ctx.store.set_memo(
                memo_key, "proposal", _proposal_json(proposal), MEMO_TTL_SECONDS
            )
    if failed is not None:
        await ctx.notifier.post_text(directive.thread, failed)
        return None
    assert proposal is not None
    if rollback_to is not None:
        proposal = replace(
            proposal, draft=offline_planner.pin_rollback(proposal.draft, *rollback_to)
        )
    keys = memory.relevant_keys(
        reading.repo.name,
        reading.environment,
        f"{directive.requester.team_id}/{directive.requester.user_id}",
        proposal.models if proposal.planner != "offline" else [],
    )
    scores = {k: await ctx.store.trust(k, constitution.trust.initial) for k in keys}
    verdict = diff_engine.evaluate(
        proposal.draft,
        reading,
        constitution,
        proposal.confidence,
        proposal.disagreements,
        now=ctx.clock(),
        rollback_to=rollback_to,
        model_ready=ctx.tuning.model_ready,
        trust=memory.lowest(scores),
    )
    new = integrator.assemble(
        plan_id,
        ctx.clock().replace(microsecond=0),
        reading,
        directive.requester,
        proposal,
        verdict,
        constitution,
    )
    if previous is not None:
        new = Plan.model_validate(
            {
                **new.document(),
                "directive": previous.plan.directive,
                "revision": previous.plan.revision + 1,
                "revises": previous.plan.id,
                "changes_requested": feedback[:4000] or None,
            }
        )
    status = PlanStatus.PENDING if verdict.allowed else PlanStatus.BLOCKED
    record = PlanRecord(plan=new, status=status, thread=directive.thread)
    await ctx.store.save_new(record)
    log.info("plan %s for %s: %s", new.id, directive.event_id, status.value)
    await settle(ctx, record)
    return record


async def _propose(
    ctx: Context,
    directive: Directive,
    reading: navigator.Reading,
    constitution: Constitution,
    precedent: list[str],
) -> Proposal:
    """Σ proposes, within the planning deadline (TimeoutError past it)."""
    # Rollbacks are planned offline: deterministic, instant, no model in the way.
    planner = OfflinePlanner() if directive.kind == "rollback" else ctx.planner
    deadline = None if planner.offline else ctx.tuning.planning_deadline_seconds
    return await asyncio.wait_for(planner.propose(reading, constitution, precedent), deadline)


def _proposal_json(p: Proposal) -> str:
    return json.dumps(
        {
            "draft": p.draft.model_dump(mode="json"),
            "planner": p.planner,
            "models": p.models,
            "confidence": p.confidence,
            "disagreements": p.disagreements,
            "notes": p.notes,
            "agreement": p.agreement,
        }
    )


def _proposal_from(raw: str | None) -> Proposal | None:
    if not raw:
        return None
    data = json.loads(raw)
    return Proposal(
        draft=PlanDraft.model_validate(data["draft"]),
        planner=str(data["planner"]),
        models=[str(m) for m in data["models"]],
        confidence=float(data["confidence"]),
        disagreements=[str(d) for d in data["disagreements"]],
        notes=[str(n) for n in data["notes"]],
        agreement=None if data["agreement"] is None else float(data["agreement"]),
    )


async def settle(ctx: Context, record: PlanRecord) -> None:
    """What follows a saved plan, each step idempotent: its card once, then for a pending
    plan the expiry, the reminder and the start of the approval (bot decision, veto window).

    The planning job runs this; so does a retried planning job, and the reconciler (through
    the card job) for a plan left pending without a card."""
    if not await ensure_card(ctx, record):
        return  # another job is posting the card and will go on from there
    if record.status == PlanStatus.PENDING:
        await schedule_expiry(ctx, record.plan)
        await deciding.start_approval(ctx, record, ctx.constitution())


async def ensure_card(ctx: Context, record: PlanRecord) -> bool:
    """Post the plan's card unless it is posted: once across retries and replicas (a lease
    guards the post). False when another job holds the lease, or the plan is gone."""
    if record.card_ts:
        return True
    plan_id = record.plan.id
    key, owner = f"card:{plan_id}", lease_owner()
    if not await ctx.store.claim_lease(key, owner, ctx.tuning.dispatch_lease_seconds):
        log.info("the card of %s is being posted by another job", plan_id)
        return False
    try:
        fresh = await ctx.store.load(plan_id)
        if fresh is None:
            return False
        if not fresh.card_ts:
            fresh.card_ts = await _post_card_once(ctx, fresh)
            await ctx.store.set_card(plan_id, fresh.card_ts)
        record.card_ts = fresh.card_ts
        return True
    finally:
        await ctx.store.release_lease(key, owner)


async def _post_card_once(ctx: Context, record: PlanRecord) -> str:
    """An earlier try may have posted the card and stopped before recording it: then the
    card is found in the thread (it carries the plan id) instead of posted again."""
    memo_key = f"card:{record.plan.id}"
    if (await ctx.store.memo(memo_key)).get("posting"):
        found = await ctx.notifier.find_card(record)
        if found:
            log.info("found the card of %s in its thread; not posting it again", record.plan.id)
            return found
    await ctx.store.set_memo(memo_key, "posting", "1", MEMO_TTL_SECONDS)
    return await ctx.notifier.post_card(record, await card_context(ctx, record))


async def revise(ctx: Context, plan_id: str, feedback: str) -> PlanRecord | None:
    previous = await ctx.store.load(plan_id)
    if previous is None or previous.status != PlanStatus.SUPERSEDED:
        return None
    requester = previous.plan.requester
    directive = Directive(
        text=previous.plan.directive,
        requester=Actor(
            requester.team_id, requester.user_id, requester.name, requester.enterprise_id
        ),
        thread=previous.thread,
        source="mention",
        event_id=f"revise:{plan_id}",
    )
    return await plan(ctx, directive, previous=previous, feedback=feedback)


async def card_context(ctx: Context, record: PlanRecord) -> CardContext:
    p = record.plan
    changes = None
    if p.revises:
        previous = await ctx.store.load(p.revises)
        if previous is not None:
            changes = plan_diff.diff(previous.plan, p)
    window_ends = None
    if p.approval.level == ApprovalLevel.NOTIFICATION:
        env = ctx.constitution().environments.get(p.target.environment)
        if env is not None:
            window_ends = p.created_at.timestamp() + env.veto_window_seconds
    waiting = None
    if record.status == PlanStatus.APPROVED:
        waiting = (await ctx.store.memo(f"queue:{p.id}")).get("text")
    history = await ctx.store.outcomes_in(
        p.target.repo, p.target.environment, precedent_of.CANDIDATES
    )
    found = precedent_of.find(
        p.target.repo,
        p.target.environment,
        precedent_of.Probe.of(p),
        history,
        ctx.clock().timestamp(),
    )
    return CardContext(changes=changes, window_ends=window_ends, waiting=waiting, precedent=found)


async def schedule_expiry(ctx: Context, p: Plan) -> None:
    ttl = p.approval.ttl_seconds
    await ctx.enqueue(jobs.OnPlan("expire", p.id), f"expire:{p.id}", ttl)
    lead = min(REMINDER_LEAD_SECONDS, ttl // 10)
    if p.approval.level.rank >= ApprovalLevel.APPROVAL.rank and lead >= 60:
        await ctx.enqueue(jobs.OnPlan("remind", p.id), f"remind:{p.id}", ttl - lead)
