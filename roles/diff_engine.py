"""Δ Diff Engine: check a draft against the constitution, score its risk, set its approval.

Risk is computed from the plan itself and combined with what the model said
by taking the higher; the approval level is the highest that any rule asks
for. Nothing a model writes can lower either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from roles import freezes, policies, what_runs
from roles.constitution import WEEKDAYS, Constitution
from roles.draft import PlanDraft
from roles.navigator import Reading
from roles.plan import (
    Action,
    Approval,
    ApprovalLevel,
    Intent,
    Risk,
    RiskFactor,
    RiskLevel,
    RuleHit,
    max_approval,
    max_risk,
)

_SENSITIVE = re.compile(
    r"\b(auth\w*|login|password|session|payment\w*|billing|permission\w*|secur\w*|crypto\w*)\b",
    re.I,
)
_SECRETS = re.compile(r"\b(secret|credential|password|api[ _-]?key|token|private key)s?\b", re.I)


@dataclass(frozen=True)
class Verdict:
    risk: Risk
    approval: Approval
    runs: what_runs.Derived
    denials: list[RuleHit] = field(default_factory=list)
    warnings: list[RuleHit] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.denials


def _level_for(score: float, constitution: Constitution) -> RiskLevel:
    t = constitution.risk.thresholds
    if score >= t.critical:
        return RiskLevel.CRITICAL
    if score >= t.high:
        return RiskLevel.HIGH
    if score >= t.medium:
        return RiskLevel.MEDIUM
    return RiskLevel.LOW


def out_of_hours(constitution: Constitution, now: datetime) -> str | None:
    """Why ``now`` is outside the constitution's business hours, or None."""
    hours = constitution.risk.business_hours
    if hours is None:
        return None
    local = now.astimezone(ZoneInfo(hours.timezone))
    day = WEEKDAYS[local.weekday()]
    clock = local.strftime("%H:%M")
    if day not in hours.days:
        return f"{day.capitalize()} is outside business days ({hours.timezone})"
    if not hours.start <= clock < hours.end:
        return f"{clock} is outside business hours {hours.start}–{hours.end} ({hours.timezone})"
    return None


def assess_risk(
    draft: PlanDraft, reading: Reading, constitution: Constitution, now: datetime | None = None
) -> Risk:
    env_rule = constitution.environment(reading.environment)
    actions = [s.action for s in draft.steps]
    text = " ".join([reading.text, *(s.description for s in draft.steps)])
    factors: list[RiskFactor] = []

    def add(fid: str, message: str, weight: float) -> None:
        factors.append(RiskFactor(id=fid, message=message, weight=weight))

    if env_rule.protected or reading.environment == "production":
        add("production", f"Targets the protected environment '{reading.environment}'", 0.45)
    elif Action.DEPLOY in actions or Action.ROLLBACK in actions:
        add("deploys", f"Changes what runs in '{reading.environment}'", 0.1)
    if Action.CODE_CHANGE in actions:
        add("code-change", "Changes application code", 0.05)
    if _SENSITIVE.search(text):
        add("sensitive-component", "Touches authentication, payments or security code", 0.15)
    if Action.DB_MIGRATION in actions:
        add("data-migration", "Migrates data; may not be reversible", 0.3)
    if _SECRETS.search(text):
        add("secrets", "Mentions secrets or credentials", 0.25)
    if draft.rollback.strategy == "restore_backup":
        add("hard-rollback", "Rollback needs a backup restore", 0.1)
    if len(draft.steps) > 10:
        add("blast-radius", f"{len(draft.steps)} steps: a wide change", 0.1)
    if Action.DEPLOY not in actions and Action.ROLLBACK not in actions:
        add("no-deploy", "Nothing is deployed; artifacts only", 0.0)
    elif constitution.risk.business_hours is not None:
        why = out_of_hours(constitution, now or datetime.now(UTC))
        if why:
            add("out-of-hours", why, constitution.risk.business_hours.weight)

    score = round(min(1.0, sum(f.weight for f in factors)), 3)
    level = max_risk(_level_for(score, constitution), draft.risk.level)
    for mf in draft.risk.factors:
        if mf.id not in {f.id for f in factors}:
            factors.append(RiskFactor(id=mf.id, message=mf.message, weight=0.0))
    return Risk(level=level, score=score, factors=factors, mitigations=draft.risk.mitigations)


def request_for(
    reading: Reading,
    rollback_to: tuple[str, str] | None = None,
    draft: PlanDraft | None = None,
    model_ready: bool = False,
) -> what_runs.Request:
    if reading.intent == Intent.ROLLBACK:
        sha, ref = rollback_to or ("", "")
        return what_runs.Request("rollback", True, sha, ref)
    actions = [s.action for s in draft.steps] if draft is not None else []
    implement, _ = what_runs.implements(reading.repo, actions, model_ready)
    return what_runs.Request("directive", reading.deploys, ref=reading.ref, implement=implement)


def derive(
    draft: PlanDraft,
    reading: Reading,
    constitution: Constitution,
    rollback_to: tuple[str, str] | None = None,
    model_ready: bool = False,
) -> what_runs.Derived:
    """What runs for this reading: the kernel's answer (the draft adds only artifacts,
    and whether there are change steps to implement)."""
    requested = list(dict.fromkeys([*reading.artifacts, *draft.artifacts]))
    return what_runs.derive(
        constitution,
        reading.repo,
        reading.environment,
        requested,
        request_for(reading, rollback_to, draft, model_ready),
    )


def draft_problems(
    draft: PlanDraft,
    reading: Reading,
    constitution: Constitution,
    rollback_to: tuple[str, str] | None = None,
) -> list[str]:
    """Where a model's draft strays outside what the constitution and Φ fixed.

    These are fed back to the model for one repair; a plan that still has any is
    refused with the reasons on the card.
    """
    runs = derive(draft, reading, constitution, rollback_to)
    problems = [
        h.message
        for h in what_runs.step_problems(constitution, runs.target, runs.artifacts, draft.steps)
    ]
    problems += [
        h.message
        for h in runs.refusals
        if h.id == "artifacts.not-allowed"
        and not any(h.message.startswith(f"Artifact '{a}'") for a in reading.artifacts)
    ]
    known_envs = set(constitution.environments)
    targeting = (Action.DEPLOY, Action.ROLLBACK, Action.DB_MIGRATION, Action.SMOKE_TEST)
    for n, step in enumerate(draft.steps, start=1):
        if step.action not in targeting:
            continue
        for env in known_envs - {reading.environment}:
            if re.search(rf"\b{re.escape(env)}\b", step.description, re.I):
                problems.append(
                    f"step {n} ({step.action.value}) speaks of '{env}'; "
                    f"the target is '{reading.environment}'"
                )
    for rule in constitution.forbidden:
        texts = [draft.summary, *(s.description for s in draft.steps)]
        if any(re.search(rule.pattern, t, re.I) for t in texts):
            problems.append(f"the plan matches forbidden rule '{rule.id}': {rule.message}")
    return problems


def policy_input(
    draft: PlanDraft, reading: Reading, risk: Risk, approval: Approval, constitution: Constitution
) -> dict[str, Any]:
    """What Rego policies see: the plan as it will be, before anyone approves it."""
    return {
        "apiVersion": "sophie/v1",
        "directive": reading.text,
        "intent": reading.intent.value,
        "summary": draft.summary,
        "target": {
            "repo": reading.repo.name,
            "environment": reading.environment,
            "ref": reading.ref,
            "workflow": reading.repo.workflow,
        },
        "steps": [
            {
                "action": s.action.value,
                "description": s.description,
                "inputs": {i.name: i.value for i in s.inputs},
            }
            for s in draft.steps
        ],
        "artifacts": list(dict.fromkeys([*reading.artifacts, *draft.artifacts])),
        "risk": risk.model_dump(mode="json"),
        "rollback": draft.rollback.model_dump(mode="json"),
        "approval": approval.model_dump(mode="json"),
        "constitution": {"version": constitution.version},
    }


def _denials(
    draft: PlanDraft, reading: Reading, constitution: Constitution, runs: what_runs.Derived
) -> list[RuleHit]:
    hits = [p for p in reading.problems if p.effect == "deny"]
    hits += runs.refusals
    hits += what_runs.step_problems(constitution, runs.target, runs.artifacts, draft.steps)
    texts = [reading.text, draft.summary, *(s.description for s in draft.steps)]
    for rule in constitution.forbidden:
        if any(re.search(rule.pattern, t, re.I) for t in texts):
            hits.append(RuleHit(id=f"forbidden.{rule.id}", message=rule.message, effect="deny"))
    return hits


def needs(level: ApprovalLevel) -> str:
    """An approval level in plain words, for the reasons shown on the card."""
    return {
        ApprovalLevel.AUTONOMOUS: "no approval (it runs at once)",
        ApprovalLevel.NOTIFICATION: "no approval, with a veto window",
        ApprovalLevel.APPROVAL: "one approver",
        ApprovalLevel.SUPERVISION: "two or more approvers",
    }[level]


def decide_approval(
    reading: Reading,
    risk: Risk,
    constitution: Constitution,
    confidence: float,
    disagreements: list[str],
    now: datetime | None = None,
    trust: tuple[str, float] | None = None,
) -> Approval:
    """The level a plan needs. ``trust`` is the lowest relevant trust score (its key and
    value: see :func:`roles.memory.relevant_keys`); autonomy needs it at the floor."""
    env_rule = constitution.environment(reading.environment)
    level = env_rule.approval
    reasons = [
        RuleHit(
            id=f"environments.{reading.environment}",
            message=f"'{reading.environment}' needs {needs(level)}",
            effect="info",
        )
    ]
    if reading.intent == Intent.ROLLBACK and env_rule.rollback_approval is not None:
        level = env_rule.rollback_approval
        reasons = [
            RuleHit(
                id=f"environments.{reading.environment}.rollback_approval",
                message=f"Rollbacks in '{reading.environment}' need {needs(level)}",
                effect="info",
            )
        ]

    base = level

    def raise_to(target: ApprovalLevel, rule_id: str, message: str) -> None:
        # Every rule that asks for more than the environment is listed, even when an
        # earlier one already raised the level as far: the card shows all the reasons.
        nonlocal level
        if target.rank > base.rank:
            level = max_approval(level, target)
            reasons.append(RuleHit(id=rule_id, message=message, effect="raise_approval"))

    for name in reading.lookalike_environments:
        guessed = constitution.environments.get(name)
        if guessed is not None:
            raise_to(
                guessed.approval,
                "assumption.lookalike-environment",
                f"The directive nearly names '{name}', which needs {needs(guessed.approval)}",
            )
    for freeze in freezes.active(constitution, reading.environment, now or datetime.now(UTC)):
        if freeze.effect == "raise":
            raise_to(
                freeze.level, f"deploys.freezes.{freeze.id}", f"Deploy freeze: {freeze.reason}"
            )
    rules = constitution.risk
    if risk.level.rank >= RiskLevel(rules.raise_to_supervision_at).rank:
        raise_to(ApprovalLevel.SUPERVISION, "risk.supervision", f"Risk is {risk.level.value}")
    if risk.level.rank >= RiskLevel(rules.raise_to_approval_at).rank:
        raise_to(ApprovalLevel.APPROVAL, "risk.approval", f"Risk is {risk.level.value}")
    if confidence < rules.low_confidence:
        raise_to(
            ApprovalLevel.APPROVAL,
            "confidence.low",
            f"Confidence {confidence:.2f} is below {rules.low_confidence:.2f}",
        )
    if disagreements:
        raise_to(
            ApprovalLevel.SUPERVISION if len(disagreements) > 1 else ApprovalLevel.APPROVAL,
            "consensus.disagreement",
            "Models disagree on " + ", ".join(disagreements),
        )
    floor = constitution.trust.minimum_for_autonomous
    earned = reading.intent != Intent.ROLLBACK  # a rollback's level is the team's own rule
    if level == ApprovalLevel.AUTONOMOUS and earned and trust is not None and trust[1] < floor:
        # Autonomy is earned: below the floor a person may still veto it.
        raise_to(
            ApprovalLevel.NOTIFICATION,
            "trust.below-floor",
            f"Trust in {trust[0]} is {trust[1]:.2f}, below {floor:.2f} for autonomy",
        )

    if level == ApprovalLevel.SUPERVISION:
        quorum = max(2, env_rule.quorum, len(env_rule.distinct_groups))
    elif level == ApprovalLevel.APPROVAL:
        quorum = 1
    else:
        quorum = 0
    return Approval(
        level=level,
        quorum=quorum,
        ttl_seconds=constitution.approval_ttl_seconds,
        reasons=reasons,
        distinct_groups=env_rule.distinct_groups if level == ApprovalLevel.SUPERVISION else [],
    )


def evaluate(
    draft: PlanDraft,
    reading: Reading,
    constitution: Constitution,
    confidence: float,
    disagreements: list[str] | None = None,
    now: datetime | None = None,
    rollback_to: tuple[str, str] | None = None,
    model_ready: bool = False,
    trust: tuple[str, float] | None = None,
) -> Verdict:
    runs = derive(draft, reading, constitution, rollback_to, model_ready)
    risk = assess_risk(draft, reading, constitution, now)
    approval = decide_approval(
        reading, risk, constitution, confidence, disagreements or [], now, trust
    )
    warnings = [p for p in reading.problems if p.effect == "warn"]
    if reading.intent != Intent.ROLLBACK:
        actions = [s.action for s in draft.steps]
        _, why_not = what_runs.implements(reading.repo, actions, model_ready)
        if why_not:
            warnings.append(
                RuleHit(
                    id="implement.unavailable",
                    message=(
                        f"The change steps cannot be implemented: {why_not}. Approving "
                        f"deploys {runs.target.ref} as it is; the change steps only describe"
                    ),
                    effect="warn",
                )
            )
    denials = _denials(draft, reading, constitution, runs)
    try:
        verdicts = policies.evaluate(
            constitution.policy_sources, policy_input(draft, reading, risk, approval, constitution)
        )
    except policies.PolicyError as exc:
        # A policy that cannot run must not let a plan through unchecked.
        verdicts = policies.PolicyResult(
            denials=[RuleHit(id="policy.error", message=str(exc)[:300], effect="deny")]
        )
    return Verdict(
        risk=risk,
        approval=approval,
        runs=runs,
        denials=[*denials, *verdicts.denials],
        warnings=[*warnings, *verdicts.warnings],
    )
