"""Δ Diff Engine: check a draft against the constitution, score its risk, set its approval.

Risk is computed from the plan itself and combined with what the model said
by taking the higher; the approval level is the highest that any rule asks
for. Nothing a model writes can lower either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from roles.constitution import Constitution
from roles.draft import PlanDraft
from roles.navigator import Reading
from roles.plan import (
    Action,
    Approval,
    ApprovalLevel,
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


def assess_risk(draft: PlanDraft, reading: Reading, constitution: Constitution) -> Risk:
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

    score = round(min(1.0, sum(f.weight for f in factors)), 3)
    level = max_risk(_level_for(score, constitution), draft.risk.level)
    for mf in draft.risk.factors:
        if mf.id not in {f.id for f in factors}:
            factors.append(RiskFactor(id=mf.id, message=mf.message, weight=0.0))
    return Risk(level=level, score=score, factors=factors, mitigations=draft.risk.mitigations)


def _denials(draft: PlanDraft, reading: Reading, constitution: Constitution) -> list[RuleHit]:
    hits = [p for p in reading.problems if p.effect == "deny"]
    allowed = set(constitution.actions)
    for step in draft.steps:
        if step.action not in allowed:
            hits.append(
                RuleHit(
                    id="actions.not-allowed",
                    message=f"Action '{step.action.value}' is not allowed by the constitution",
                    effect="deny",
                )
            )
    texts = [reading.text, draft.summary, *(s.description for s in draft.steps)]
    for rule in constitution.forbidden:
        if any(re.search(rule.pattern, t, re.I) for t in texts):
            hits.append(RuleHit(id=f"forbidden.{rule.id}", message=rule.message, effect="deny"))
    return hits


def decide_approval(
    reading: Reading,
    risk: Risk,
    constitution: Constitution,
    confidence: float,
    disagreements: list[str],
) -> Approval:
    env_rule = constitution.environment(reading.environment)
    level = env_rule.approval
    reasons = [
        RuleHit(
            id=f"environments.{reading.environment}",
            message=f"'{reading.environment}' requires {level.value}",
            effect="info",
        )
    ]

    def raise_to(target: ApprovalLevel, rule_id: str, message: str) -> None:
        nonlocal level
        if target.rank > level.rank:
            level = max_approval(level, target)
            reasons.append(RuleHit(id=rule_id, message=message, effect="raise_approval"))

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

    if level == ApprovalLevel.SUPERVISION:
        quorum = max(2, env_rule.quorum, len(env_rule.distinct_groups))
    elif level == ApprovalLevel.APPROVAL:
        quorum = 1
    else:
        quorum = 0
    return Approval(
        level=level, quorum=quorum, ttl_seconds=constitution.approval_ttl_seconds, reasons=reasons
    )


def evaluate(
    draft: PlanDraft,
    reading: Reading,
    constitution: Constitution,
    confidence: float,
    disagreements: list[str] | None = None,
) -> Verdict:
    risk = assess_risk(draft, reading, constitution)
    approval = decide_approval(reading, risk, constitution, confidence, disagreements or [])
    warnings = [p for p in reading.problems if p.effect == "warn"]
    return Verdict(
        risk=risk,
        approval=approval,
        denials=_denials(draft, reading, constitution),
        warnings=warnings,
    )
