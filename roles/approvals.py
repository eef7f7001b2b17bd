"""The one place decisions are judged and counted.

:func:`may_decide` says whether a person may take a decision on a plan (who they
are, which workspace they click from, separation of duties); :func:`tally` says
whether the signed decisions a plan has complete its approval level (signatures,
binding to the plan's digest, target, constitution and workspace, expiry,
quorum, distinct approvers and groups). The card, the atomic decision in the
store, the dispatch gate and ``sophie verify`` all call these two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from roles.attestation import EnvelopeError, Verifier, open_change_decision, open_envelope
from roles.constitution import Approvers, Constitution
from roles.plan import ApprovalLevel, Plan
from roles.records import Actor, DecisionRecord

Act = Literal["approve", "veto", "request_changes", "rollback"]

# Decisions the bot signs itself (autonomous plans, elapsed veto windows).
BOT_TEAM = "sophie"


def same_workspace(plan: Plan, actor: Actor) -> bool:
    """Decisions bind to the workspace (and Enterprise Grid org) the directive came from.

    The team must be the requester's (an empty team matches nothing); where the
    directive carried an Enterprise Grid org, the decision must carry the same one.
    """
    if not actor.team_id or actor.team_id != plan.requester.team_id:
        return False
    org = plan.requester.enterprise_id
    return not org or actor.enterprise_id == org


def _authorised(who: Approvers, actor: Actor, groups: set[str]) -> bool:
    return actor.user_id in who.users or bool(groups & set(who.groups))


def may_decide(
    constitution: Constitution,
    plan: Plan,
    decisions: Sequence[DecisionRecord],
    actor: Actor,
    actor_groups: set[str],
    act: Act,
) -> str | None:
    """Why ``actor`` may not ``act`` on this plan, or None if they may."""
    if actor.is_bot:
        return "decisions by the bot are signed only by its own rules"
    if not actor.user_id:
        return "the request names no Slack user"
    if not same_workspace(plan, actor):
        return "this plan belongs to another Slack workspace"
    if act == "rollback":
        return may_roll_back(constitution, plan.target.environment, actor, actor_groups)
    if act == "request_changes" and actor.user_id == plan.requester.user_id:
        return None  # the requester may always ask for their own plan to change
    if not _authorised(constitution.approvers, actor, actor_groups):
        return "you are not an approver in the constitution"
    if any(d.actor.user_id == actor.user_id for d in decisions):
        return "you have already decided on this plan"
    sod = constitution.separation_of_duties
    if act == "approve" and sod.no_self_approval and actor.user_id == plan.requester.user_id:
        return "separation of duties: you cannot approve your own request"
    return None


def rollback_starters(constitution: Constitution, environment: str) -> Approvers:
    """Who may start a rollback of ``environment`` (default: the approvers)."""
    env = constitution.environments.get(environment)
    return (env.rollback_by if env else None) or constitution.approvers


def may_roll_back(
    constitution: Constitution, environment: str, actor: Actor, actor_groups: set[str]
) -> str | None:
    """Why ``actor`` may not start a rollback of ``environment``, or None if they may."""
    if actor.is_bot:
        return "rollbacks are started by people"
    if not _authorised(rollback_starters(constitution, environment), actor, actor_groups):
        return f"you may not roll back {environment} under the constitution"
    return None


def may_lock(
    constitution: Constitution, environment: str, actor: Actor, actor_groups: set[str]
) -> str | None:
    """Why ``actor`` may not lock or unlock deploys to ``environment``, or None."""
    if environment not in constitution.environments:
        return f"'{environment}' is not an environment of the constitution"
    who = constitution.deploys.lock_by or constitution.approvers
    if actor.is_bot or not _authorised(who, actor, actor_groups):
        return f"you may not lock or unlock {environment} under the constitution"
    return None


def expired(plan: Plan, now: datetime) -> bool:
    return now >= plan.created_at + timedelta(seconds=plan.approval.ttl_seconds)


@dataclass(frozen=True)
class Tally:
    """What the signed decisions on a plan add up to."""

    complete: bool
    reason: str = ""  # why the plan may not run yet (empty when complete)
    approvers: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _binding_problem(
    pred: dict[str, Any], plan: Plan, constitution: Constitution, now: datetime
) -> str | None:
    target = plan.target
    if pred.get("planId") != plan.id:
        return "an approval was given for another plan"
    signed = tuple(pred.get(k, "") for k in ("repo", "environment", "ref", "workflow"))
    if signed != (target.repo, target.environment, target.ref, target.workflow):
        return "the target changed after it was approved"
    signed_runs = (pred.get("action", ""), pred.get("sha", ""), pred.get("artifacts", []))
    if signed_runs != (target.action, target.sha, list(plan.artifacts)):
        return "what runs changed after it was approved"
    if pred.get("constitutionDigest") != constitution.digest_hex:
        return "the approval was given under another constitution"
    expires = _instant(pred.get("expiresAt"))
    if expires is None:
        return "an approval has no valid expiry"
    if expires <= now:
        return "an approval has expired"
    return None


def _instant(value: object) -> datetime | None:
    """A timezone-aware instant from a signed ISO 8601 string (None if it is not one)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _signed_approver(pred: dict[str, Any]) -> tuple[Actor, tuple[str, ...]] | None:
    who = pred.get("approver")
    if not isinstance(who, dict):
        return None
    groups = who.get("groups", [])
    if not isinstance(groups, list):
        return None
    actor = Actor(
        team_id=str(who.get("teamId", "")),
        user_id=str(who.get("userId", "")),
        enterprise_id=str(who.get("enterpriseId", "")),
    )
    return actor, tuple(str(g) for g in groups)


def tally(
    plan: Plan,
    decisions: Sequence[DecisionRecord],
    constitution: Constitution,
    verifier: Verifier,
    now: datetime,
    change_digest: str = "",
) -> Tally:
    """Re-verify every signed decision against the plan as it is now, and count them.

    Fails closed: any decision that does not verify, is bound to something else,
    has expired, or was given by someone who may not give it voids the tally.

    With ``change_digest``, the decisions are those of the second card on the change Δ
    checked: change decisions (their own statement type) on that digest, judged by the
    same rules, and at least one person even where the plan's level needs nobody.
    """
    if plan.constitution.digest != constitution.digest_hex:
        return Tally(False, "the constitution changed since this plan was checked")
    if expired(plan, now):
        return Tally(False, "the plan's approval time-to-live has passed")
    approvers: dict[str, tuple[str, ...]] = {}
    by_bot = False
    for decision in decisions:
        try:
            if change_digest:
                verified = open_change_decision(decision.envelope, verifier)
            else:
                verified = open_envelope(decision.envelope, verifier)
            subject = verified.subject_digest
            pred = verified.predicate
        except EnvelopeError as exc:
            return Tally(False, f"the decision by {decision.actor.user_id} does not verify: {exc}")
        except (KeyError, IndexError, TypeError, ValueError):
            return Tally(False, f"the decision by {decision.actor.user_id} is malformed")
        if subject != plan.digest:
            return Tally(False, "the plan changed after it was approved")
        problem = _binding_problem(pred, plan, constitution, now)
        if change_digest and pred.get("changeDigest") != change_digest:
            problem = "the change was approved as another diff"
        if problem:
            return Tally(False, problem)
        signed = _signed_approver(pred)
        if signed is None:
            return Tally(False, f"the decision by {decision.actor.user_id} names no approver")
        actor, groups = signed
        if pred.get("decision") == "veto":
            return Tally(False, "the plan was vetoed")
        if pred.get("decision") != "approve":
            return Tally(False, f"unknown decision {pred.get('decision')!r}")
        if actor.is_bot and change_digest:
            return Tally(False, "only people approve a produced change")
        if actor.is_bot:
            # The bot's own decision names the key that signed it, and its team.
            if actor.team_id != BOT_TEAM or actor.user_id != f"sophie:{verified.keyid}":
                return Tally(False, "a decision claims to be the bot's but another key signed it")
            by_bot = True
            continue
        why = may_decide(constitution, plan, [], actor, set(groups), "approve")
        if why:
            return Tally(False, f"the approval by {actor.user_id} does not count: {why}")
        if actor.user_id in approvers:
            return Tally(False, f"{actor.user_id} approved twice")
        approvers[actor.user_id] = groups
    level = plan.approval.level
    if level in (ApprovalLevel.AUTONOMOUS, ApprovalLevel.NOTIFICATION):
        if by_bot or approvers:
            return Tally(True, approvers=approvers)
        return Tally(False, "1 more approver" if change_digest else "no signed decision")
    missing = needed_for_change(plan, approvers) if change_digest else needed(plan, approvers)
    if missing:
        return Tally(False, ", ".join(missing), approvers)
    return Tally(True, approvers=approvers)


# The fewest people each level needs, whatever a (possibly edited) plan says.
_MIN_QUORUM = {ApprovalLevel.APPROVAL: 1, ApprovalLevel.SUPERVISION: 2}


def needed(plan: Plan, approvers: dict[str, tuple[str, ...]]) -> list[str]:
    """What a plan still waits for, given who approved it and their groups (in words).

    The plan's distinct groups were fixed from the constitution when it was checked,
    and the constitution's digest is part of every approval, so they are the rules'.
    """
    level = plan.approval.level
    if level in (ApprovalLevel.AUTONOMOUS, ApprovalLevel.NOTIFICATION):
        return []
    out = []
    quorum = max(plan.approval.quorum, _MIN_QUORUM[level])
    missing = quorum - len(approvers)
    if missing > 0:
        out.append(f"{missing} more approver{'s' if missing > 1 else ''}")
    for group in _missing_groups(list(approvers.values()), plan.approval.distinct_groups):
        out.append(f"an approver from group {group}")
    return out


def needed_for_change(plan: Plan, approvers: dict[str, tuple[str, ...]]) -> list[str]:
    """What a checked change's second card still waits for: the plan's level, and at
    least one person where that level needs nobody."""
    if plan.approval.level in (ApprovalLevel.AUTONOMOUS, ApprovalLevel.NOTIFICATION):
        return [] if approvers else ["1 more approver"]
    return needed(plan, approvers)


def still_needed(plan: Plan, decisions: Sequence[DecisionRecord]) -> list[str]:
    """For the card and reminders, from the recorded (already judged) decisions."""
    return needed(plan, {d.actor.user_id: d.groups for d in decisions if d.decision == "approve"})


def _missing_groups(approvers: list[tuple[str, ...]], groups: list[str]) -> list[str]:
    """Groups still unrepresented when each approver may stand for one group only.

    A maximum matching of approvers to groups (augmenting paths): a greedy choice
    could let someone in two groups take the one only another approver can fill.
    """
    wanted = list(dict.fromkeys(groups))
    holder: dict[str, int] = {}  # group -> index of the approver standing for it

    def assign(person: int, seen: set[str]) -> bool:
        for group in wanted:
            if group in approvers[person] and group not in seen:
                seen.add(group)
                if group not in holder or assign(holder[group], seen):
                    holder[group] = person
                    return True
        return False

    for person in range(len(approvers)):
        assign(person, set())
    return [g for g in wanted if g not in holder]
