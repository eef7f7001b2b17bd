"""Δ over several models: compare candidate plans structurally and pick the consensus.

Confidence comes from how much the valid candidates agree and how many models
produced a valid plan at all, never from what a model says about itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import SequenceMatcher
from itertools import combinations

from roles.draft import PlanDraft
from roles.plan import Action, RiskLevel

# Steps whose presence changes what can go wrong: a difference here matters.
DESTRUCTIVE = frozenset({Action.DB_MIGRATION, Action.ROLLBACK, Action.CONFIG_CHANGE})
_ENV_INPUTS = ("environment", "env", "target_environment")


@dataclass(frozen=True)
class Candidate:
    """One model's answer after validation (and at most one repair)."""

    model: str
    draft: PlanDraft | None
    problems: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def valid(self) -> bool:
        return self.draft is not None


@dataclass(frozen=True)
class Consensus:
    chosen: Candidate
    agreement: float  # mean similarity of the chosen plan to the other valid ones, 0..1
    confidence: float
    disagreements: list[str]
    notes: list[str]


def environments(draft: PlanDraft) -> frozenset[str]:
    return frozenset(
        item.value.strip().lower()
        for step in draft.steps
        for item in step.inputs
        if item.name in _ENV_INPUTS
    )


def destructive(draft: PlanDraft) -> frozenset[Action]:
    return frozenset(s.action for s in draft.steps if s.action in DESTRUCTIVE)


def similarity(a: PlanDraft, b: PlanDraft) -> float:
    """1.0 for structurally identical plans; weights favour what changes the outcome."""
    acts_a = [s.action.value for s in a.steps]
    acts_b = [s.action.value for s in b.steps]
    set_a, set_b = set(acts_a), set(acts_b)
    jaccard = len(set_a & set_b) / len(set_a | set_b) if set_a | set_b else 1.0
    order = SequenceMatcher(None, acts_a, acts_b, autojunk=False).ratio()
    same_env = 1.0 if environments(a) == environments(b) else 0.0
    same_destructive = 1.0 if destructive(a) == destructive(b) else 0.0
    risk_gap = abs(a.risk.level.rank - b.risk.level.rank) / (len(RiskLevel) - 1)
    return round(
        0.30 * jaccard
        + 0.25 * order
        + 0.15 * same_env
        + 0.15 * same_destructive
        + 0.15 * (1.0 - risk_gap),
        4,
    )


def _disagreements(drafts: list[PlanDraft]) -> list[str]:
    found = []
    if len({environments(d) for d in drafts}) > 1:
        found.append("the environment")
    if len({destructive(d) for d in drafts}) > 1:
        found.append("destructive steps")
    if len({d.risk.level for d in drafts}) > 1:
        found.append("the risk level")
    return found


def build(candidates: list[Candidate]) -> Consensus:
    """The most agreed-upon valid candidate; raises ValueError when none is valid."""
    valid = [c for c in candidates if c.draft is not None]
    if not valid:
        raise ValueError("no model produced a valid plan")
    notes = [
        f"{c.model} gave no usable plan: {'; '.join(c.problems)[:200]}"
        for c in candidates
        if c.draft is None
    ]
    if len(valid) == 1:
        # Alone it is uncorroborated when others were asked and failed.
        chosen, agreement = valid[0], 1.0 if len(candidates) == 1 else 0.5
    else:
        scores = {i: 0.0 for i in range(len(valid))}
        for i, j in combinations(range(len(valid)), 2):
            s = similarity(valid[i].draft, valid[j].draft)  # type: ignore[arg-type]
            scores[i] += s
            scores[j] += s
        # Ties go to the earlier model: SOPHIE_LLM_MODELS lists them in order of preference.
        best = max(scores, key=lambda i: (scores[i], -i))
        chosen, agreement = valid[best], round(scores[best] / (len(valid) - 1), 4)
    drafts = [c.draft for c in valid if c.draft is not None]
    disagreements = _disagreements(drafts)
    return Consensus(
        chosen=chosen,
        agreement=agreement,
        confidence=confidence(len(candidates), len(valid), agreement, chosen.repaired),
        disagreements=disagreements,
        notes=notes,
    )


def confidence(asked: int, valid: int, agreement: float, repaired: bool) -> float:
    """A single model is uncorroborated (0.7 at best); several that agree earn up to 0.95."""
    if asked <= 1:
        base = 0.7
    else:
        base = 0.5 + 0.45 * agreement
        base *= 0.6 + 0.4 * (valid / asked)
    if repaired:
        base -= 0.1
    return round(max(0.0, min(0.95, base)), 3)
