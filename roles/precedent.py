"""Ψ precedent: the earlier plans most like this one, and what became of them.

Found among the newest outcomes of the same repo@environment, ranked by similarity
(what the change touches: step actions, words of the directive, summary and steps,
the intent) and recency. Shown on the card ("3 similar changes to acme/auth-service
in staging: 2 succeeded, 1 rolled back") and given to the planner.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from roles.outcomes import Outcome, words_of
from roles.plan import Plan

# How many of a repo@environment's newest outcomes are compared (bounded work per plan).
CANDIDATES = 500
SHOWN = 3
# Similarity below this is not precedent; recency halves every this many days.
MIN_SIMILARITY = 0.2
HALF_LIFE_DAYS = 30.0


@dataclass(frozen=True)
class Precedent:
    repo: str
    environment: str
    similar: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.result for o in self.similar))

    def lines(self) -> list[str]:
        """For the planner: one line per similar plan."""
        return [
            f"{o.plan_id} ({o.environment}, {o.result.replace('_', ' ')}): {o.summary}"
            for o in self.similar
        ]


@dataclass(frozen=True)
class Probe:
    """What a new plan touches, to compare with earlier outcomes."""

    plan_id: str
    intent: str
    words: frozenset[str]
    steps: frozenset[str] = frozenset()

    @classmethod
    def of(cls, plan: Plan) -> Probe:
        return cls(
            plan.id,
            plan.interpretation.intent.value,
            frozenset(words_of(plan)),
            frozenset(s.action.value for s in plan.steps),
        )


def _jaccard(a: frozenset[str] | set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def similarity(probe: Probe, outcome: Outcome) -> float:
    """0..1: shared words weigh most, then shared step actions, then the same intent.
    A probe without steps (before the plan exists) is judged on words and intent."""
    score = 0.6 * _jaccard(probe.words, set(outcome.words))
    if probe.steps:
        score += 0.3 * _jaccard(probe.steps, set(outcome.steps))
    else:
        score /= 0.7  # the same scale without the steps' share
    if probe.intent == outcome.intent:
        score += 0.1
    return min(1.0, score)


def find(
    repo: str,
    environment: str,
    probe: Probe,
    history: list[Outcome],
    now: float,
    shown: int = SHOWN,
) -> Precedent:
    """The ``shown`` most similar outcomes (similarity × recency), most relevant first."""
    ranked: list[tuple[float, Outcome]] = []
    for outcome in history:
        if outcome.plan_id == probe.plan_id or outcome.dry_run:
            continue
        sim = similarity(probe, outcome)
        if sim < MIN_SIMILARITY:
            continue
        age_days = max(0.0, now - outcome.ended_at) / 86_400
        ranked.append((sim * math.pow(0.5, age_days / HALF_LIFE_DAYS), outcome))
    ranked.sort(key=lambda r: (-r[0], -r[1].ended_at))
    return Precedent(repo, environment, [o for _, o in ranked[:shown]])
