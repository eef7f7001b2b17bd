"""Ω Anchor: who may decide on a plan, and whether its decisions are enough to run it."""

from __future__ import annotations

from datetime import datetime, timedelta

from roles.attestation import EnvelopeError, Verifier, open_envelope
from roles.constitution import Constitution
from roles.plan import ApprovalLevel, Plan
from roles.records import Actor, Decision, PlanRecord


def refusal(
    constitution: Constitution,
    record: PlanRecord,
    actor: Actor,
    actor_groups: set[str],
    decision: Decision,
) -> str | None:
    """Why ``actor`` may not take ``decision`` on this plan, or None if they may."""
    approvers = constitution.approvers
    named = actor.user_id in approvers.users
    in_group = bool(actor_groups & set(approvers.groups))
    if not (named or in_group):
        return "you are not an approver in the constitution"
    plan = record.plan
    sod = constitution.separation_of_duties
    if decision == "approve" and sod.no_self_approval and actor.user_id == plan.requester.user_id:
        return "separation of duties: you cannot approve your own request"
    if (
        decision == "approve"
        and sod.distinct_approvers
        and any(d.actor.user_id == actor.user_id for d in record.approvals)
    ):
        return "you have already approved this plan; another approver is needed"
    return None


def expired(plan: Plan, now: datetime) -> bool:
    return now >= plan.created_at + timedelta(seconds=plan.approval.ttl_seconds)


def check_quorum(
    record: PlanRecord, constitution: Constitution, verifier: Verifier, now: datetime
) -> str | None:
    """Re-verify every approval envelope against the plan as it is now.

    Returns a reason the plan may not run, or None. This is what makes an
    approval bind to the exact plan, target and constitution it was given for.
    """
    plan = record.plan
    if plan.constitution.digest != constitution.digest_hex:
        return "the constitution changed since this plan was checked"
    if record.veto is not None:
        return "the plan was vetoed"
    needed = plan.approval.quorum
    level = plan.approval.level
    valid: dict[str, tuple[str, ...]] = {}
    for decision in record.approvals:
        try:
            verified = open_envelope(decision.envelope, verifier)
        except EnvelopeError as exc:
            return f"approval by {decision.actor.user_id} does not verify: {exc}"
        pred = verified.predicate
        if verified.subject_digest != plan.digest:
            return "the plan changed after it was approved"
        if (pred["repo"], pred["environment"], pred["ref"], pred["workflow"]) != (
            plan.target.repo,
            plan.target.environment,
            plan.target.ref,
            plan.target.workflow,
        ):
            return "the target changed after it was approved"
        if pred["constitutionDigest"] != constitution.digest_hex:
            return "the approval was given under another constitution"
        if datetime.fromisoformat(pred["expiresAt"]) <= now:
            return f"the approval by {decision.actor.user_id} has expired"
        if pred["decision"] == "approve":
            approver = pred["approver"]
            valid[approver["userId"]] = tuple(approver.get("groups", ()))
    if level in (ApprovalLevel.AUTONOMOUS, ApprovalLevel.NOTIFICATION):
        return None if valid else "no signed decision"
    if len(valid) < needed:
        return f"{len(valid)} of {needed} approvals"
    if level == ApprovalLevel.SUPERVISION:
        env_rule = constitution.environment(plan.target.environment)
        groups = list(dict.fromkeys([*plan.approval.distinct_groups, *env_rule.distinct_groups]))
        missing = _missing_groups(list(valid.values()), groups)
        if missing:
            return "needs an approver from " + ", ".join(missing)
    return None


def _missing_groups(approvers: list[tuple[str, ...]], groups: list[str]) -> list[str]:
    """Groups still unrepresented when each approver may stand for one group."""
    remaining = list(groups)
    for member_of in approvers:
        for group in remaining:
            if group in member_of:
                remaining.remove(group)
                break
    return remaining


def still_needed(record: PlanRecord) -> list[str]:
    """What a pending plan still waits for, in words for the card and reminders."""
    plan = record.plan
    if plan.approval.level in (ApprovalLevel.AUTONOMOUS, ApprovalLevel.NOTIFICATION):
        return []
    approvals = record.approvals
    needed = []
    missing = plan.approval.quorum - len({d.actor.user_id for d in approvals})
    if missing > 0:
        needed.append(f"{missing} more approver{'s' if missing > 1 else ''}")
    for group in _missing_groups([d.groups for d in approvals], plan.approval.distinct_groups):
        needed.append(f"an approver from group {group}")
    return needed
