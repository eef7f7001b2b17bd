"""Ψ: what became of each plan, and how long each step took.

One :class:`Outcome` per plan, written when the plan ends (succeeded, failed, vetoed,
expired, stale, error) and amended when a later rollback restores an earlier
deployment (``rolled_back``) or a later success restores a failed environment
(``restored_at``). Digest, trust, precedent and metrics all read these records.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from roles.plan import Plan
from roles.records import PlanRecord, PlanStatus

# A plan waiting in review has no outcome yet: it deploys once its diff is approved.
Result = Literal["succeeded", "failed", "rolled_back", "vetoed", "expired", "stale", "error"]

_WORD = re.compile(r"[a-z][a-z0-9_-]{2,30}")
_STOP = frozenset(
    "the and for with into from this that then deploy deployed deploying staging production "
    "please add make change changes update our are was were will can should".split()
)


def words_in(*texts: str) -> tuple[str, ...]:
    """The words that say what a change touches (for precedent), without the filler."""
    text = " ".join(texts).lower()
    return tuple(sorted({w for w in _WORD.findall(text) if w not in _STOP}))[:40]


def words_of(plan: Plan) -> tuple[str, ...]:
    """What the change touches, in words: directive, summary, steps."""
    return words_in(
        plan.directive, plan.interpretation.summary, *(s.description for s in plan.steps)
    )


def _ts(value: str | None) -> float | None:
    """A Slack message ts is the epoch second it was posted."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


@dataclass
class Outcome:
    plan_id: str
    repo: str
    environment: str
    intent: str
    action: str  # deploy | build | rollback
    result: Result
    summary: str
    requester: str  # team/user
    approvers: list[str] = field(default_factory=list)  # team/user, people only
    autonomous: bool = False  # no person approved it (the bot signed by rule)
    level: str = ""
    models: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # step actions
    words: list[str] = field(default_factory=list)
    sha: str = ""  # the commit the run built or deployed
    run_url: str = ""  # the run's page, where there was one
    dry_run: bool = False
    # Timings, epoch seconds (0 = did not happen).
    directive_at: float = 0.0
    card_at: float = 0.0
    decided_at: float = 0.0
    dispatched_at: float = 0.0
    ended_at: float = 0.0
    build_seconds: float = 0.0
    restored_at: float = 0.0  # failed or rolled back: when the environment was good again

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Outcome:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def deployed(self) -> bool:
        """A deployment reached its environment (a rollback of it later still counts)."""
        return self.action in ("deploy", "rollback") and self.result in ("succeeded", "rolled_back")

    @property
    def lead_seconds(self) -> float | None:
        """Directive → deployed (DORA lead time, as SOPHIE sees it)."""
        if not self.deployed or not self.directive_at or not self.ended_at:
            return None
        return max(0.0, self.ended_at - self.directive_at)

    @property
    def restore_seconds(self) -> float | None:
        if not self.restored_at or not self.ended_at:
            return None
        return max(0.0, self.restored_at - self.ended_at)


_RESULT = {
    PlanStatus.SUCCEEDED: "succeeded",
    PlanStatus.FAILED: "failed",
    PlanStatus.VETOED: "vetoed",
    PlanStatus.EXPIRED: "expired",
    PlanStatus.STALE: "stale",
    PlanStatus.ERROR: "error",
}


def result_of(status: PlanStatus) -> Result | None:
    """The outcome a final status records (None: not an outcome, e.g. superseded)."""
    value = _RESULT.get(status)
    return value  # type: ignore[return-value]


def outcome_of(record: PlanRecord, ended_at: float) -> Outcome | None:
    """The outcome of a plan that has just ended (None if its status records none)."""
    result = result_of(record.status)
    if result is None:
        return None
    plan = record.plan
    people = [
        f"{d.actor.team_id}/{d.actor.user_id}" for d in record.approvals if not d.actor.is_bot
    ]
    decided = [d.at.timestamp() for d in record.decisions]
    run = record.run
    return Outcome(
        plan_id=plan.id,
        repo=plan.target.repo,
        environment=plan.target.environment,
        intent=plan.interpretation.intent.value,
        action=plan.target.action,
        result=result,
        summary=plan.interpretation.summary[:300],
        requester=f"{plan.requester.team_id}/{plan.requester.user_id}",
        approvers=people,
        autonomous=bool(record.approvals) and not people,
        level=plan.approval.level.value,
        models=list(plan.provenance.models),
        steps=[s.action.value for s in plan.steps],
        words=list(words_of(plan)),
        sha=(run.head_sha or "") if run is not None else "",
        run_url=(run.html_url or "") if run is not None else "",
        dry_run=run.dry_run if run is not None else False,
        directive_at=_ts(record.thread.thread_ts) or plan.created_at.timestamp(),
        card_at=_ts(record.card_ts) or 0.0,
        decided_at=max(decided) if decided else 0.0,
        dispatched_at=run.dispatched_at if run is not None else 0.0,
        ended_at=ended_at,
        build_seconds=run.build_seconds if run is not None else 0.0,
    )


def rolled_back(outcome: Outcome, at: float) -> Outcome:
    """A later rollback restored an earlier deployment: this one was undone."""
    return replace(outcome, result="rolled_back", restored_at=outcome.restored_at or at)


def restored(outcome: Outcome, at: float) -> Outcome:
    """A later success in the same environment: it is good again (time to restore)."""
    return replace(outcome, restored_at=outcome.restored_at or at)
