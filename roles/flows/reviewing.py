"""The second card: a checked change that an environment deploys only when reviewed.

Δ checked the change and signed it, but the environment's ``generated_change`` rule is
``reviewed`` and the commit is not on the default branch. The plan ends in ``review``
(nothing deployed, the deploy slot freed) and a second card asks for the diff itself to
be approved, by the people and at the level the plan needed. Each approval is a signed
change decision (its own statement type, bound to the change digest and commit); when
they add up, the plan goes back through the dispatch gate and that commit deploys.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from roles import approvals
from roles.attestation import change_decision_statement, sign_statement
from roles.flows.context import Context, Reply
from roles.flows.deciding import actor_groups, approval_rule, refused
from roles.records import Actor, DecisionRecord, PlanRecord, PlanStatus

log = logging.getLogger("sophie.reviewing")

CARD_MEMO_SECONDS = 30 * 24 * 3600

NOT_WAITING = "This change is not waiting for review; nothing was done."
OUT_OF_DATE = "This card is out of date: the change it shows is not the one checked."
NOT_THIS_CARD = "This button does not belong to the change on this card; nothing was done."


async def ask(ctx: Context, plan_id: str) -> None:
    """Post the second card once (a retried job finds it posted)."""
    record = await ctx.store.load(plan_id)
    if record is None or record.status != PlanStatus.REVIEW:
        return
    run = record.run
    change = run.change if run is not None else None
    if run is None or change is None or change.verdict != "checked":
        return
    memo_key = f"review:{record.plan.id}:{change.change_digest}"
    if (await ctx.store.memo(memo_key)).get("card"):
        return
    ts = await ctx.notifier.post_change_card(record, [])
    change.review_ts = ts or ""
    await ctx.store.save_run(record.plan.id, run)
    await ctx.store.set_memo(memo_key, "card", ts or "-", CARD_MEMO_SECONDS)


def binding_problem(record: PlanRecord, change_digest: str, channel: str, message_ts: str) -> str:
    """Why a click on a second card may not act on ``record``'s change ("" when it may)."""
    change = record.run.change if record.run is not None else None
    if record.status != PlanStatus.REVIEW or change is None or change.verdict != "checked":
        return NOT_WAITING
    if not change_digest or change_digest != change.change_digest:
        return OUT_OF_DATE
    if channel != record.thread.channel or not change.review_ts or message_ts != change.review_ts:
        return NOT_THIS_CARD
    return ""


async def decide(
    ctx: Context,
    plan_id: str,
    change_digest: str,
    actor: Actor,
    channel: str,
    message_ts: str,
) -> Reply:
    """Someone pressed "Approve this change" on the second card."""
    record = await ctx.store.load(plan_id)
    if record is None:
        return Reply(False, "I have no record of that plan.")
    why = binding_problem(record, change_digest, channel, message_ts)
    if why:
        await refused(ctx, plan_id, actor, "approve_change", why)
        return Reply(False, why)
    assert record.run is not None and record.run.change is not None
    change = record.run.change
    plan = record.plan
    constitution = ctx.constitution()
    if approvals.expired(plan, ctx.clock()):
        return Reply(False, "This plan has expired; ask again for a fresh plan.")
    if plan.constitution.digest != constitution.digest_hex:
        return Reply(False, "The constitution changed since this plan was made; it is stale.")
    decisions = await ctx.store.change_decisions(plan_id, change_digest)
    groups = await actor_groups(ctx, constitution, plan, actor)
    denied = approvals.may_decide(constitution, plan, decisions, actor, groups, "approve")
    if denied:
        await refused(ctx, plan_id, actor, "approve_change", denied)
        return Reply(False, f"You can't approve this change: {denied}.")
    now = ctx.clock()
    statement = change_decision_statement(
        plan,
        change_digest,
        change.commit,
        actor,
        "approve",
        now,
        timedelta(seconds=plan.approval.ttl_seconds),
        constitution.digest_hex,
        approval_rule(plan),
        tuple(sorted(groups)),
    )
    decided = DecisionRecord(
        actor=actor,
        decision="approve",
        at=now,
        envelope=sign_statement(statement, ctx.signer),
        groups=tuple(sorted(groups)),
    )
    if not await ctx.store.add_change_decision(plan_id, change_digest, decided):
        return Reply(False, "You have already approved this change.")
    await ctx.store.audit(
        "change.approved",
        plan_id,
        actor.user_id,
        {"commit": change.commit, "change_digest": change_digest},
    )
    decisions = await ctx.store.change_decisions(plan_id, change_digest)
    counted = approvals.tally(plan, decisions, constitution, ctx.signer, now, change_digest)
    await ctx.notifier.update_change_card(record, decisions)
    if not counted.complete:
        return Reply(True, f"Approval recorded and signed; still needed: {counted.reason}.")
    if await ctx.store.transition(
        plan_id, {PlanStatus.REVIEW}, PlanStatus.APPROVED, "the change was approved"
    ):
        # The dispatch gate recounts these decisions and the plan's own before it runs.
        await ctx.again("dispatch", plan_id, f"reviewed.{change_digest[:12]}", 0)
    return Reply(True, "Approved and signed: the change deploys.")


async def diff_approved(ctx: Context, record: PlanRecord) -> bool:
    """Whether the second card's decisions on the record's change add up (re-verified)."""
    change = record.run.change if record.run is not None else None
    if change is None or not change.change_digest:
        return False
    decisions = await ctx.store.change_decisions(record.plan.id, change.change_digest)
    if not decisions:
        return False
    counted = approvals.tally(
        record.plan, decisions, ctx.constitution(), ctx.signer, ctx.clock(), change.change_digest
    )
    return counted.complete
