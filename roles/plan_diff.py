"""What changed between a plan and its revision (shown on the revised card)."""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import SequenceMatcher

from roles.plan import Plan, Step


@dataclass(frozen=True)
class PlanDiff:
    added: list[Step] = field(default_factory=list)
    removed: list[Step] = field(default_factory=list)
    changed: list[tuple[Step, Step]] = field(default_factory=list)
    risk: tuple[str, str] | None = None
    approval: tuple[str, str] | None = None
    artifacts_added: list[str] = field(default_factory=list)
    artifacts_removed: list[str] = field(default_factory=list)
    target: tuple[str, str] | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.added
            or self.removed
            or self.changed
            or self.risk
            or self.approval
            or self.artifacts_added
            or self.artifacts_removed
            or self.target
        )


def _key(step: Step) -> tuple[str, str]:
    return step.action.value, step.description


def diff(old: Plan, new: Plan) -> PlanDiff:
    """Steps are matched in order by action; a matched step whose text or inputs moved is
    "changed", unmatched ones are added or removed."""
    added: list[Step] = []
    removed: list[Step] = []
    changed: list[tuple[Step, Step]] = []
    a = [s.action.value for s in old.steps]
    b = [s.action.value for s in new.steps]
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            for before, after in zip(old.steps[i1:i2], new.steps[j1:j2], strict=True):
                if (before.description, before.inputs) != (after.description, after.inputs):
                    changed.append((before, after))
        else:
            removed += old.steps[i1:i2]
            added += new.steps[j1:j2]

    def pair(x: str, y: str) -> tuple[str, str] | None:
        return (x, y) if x != y else None

    old_target = f"{old.target.repo}@{old.target.ref} → {old.target.environment}"
    new_target = f"{new.target.repo}@{new.target.ref} → {new.target.environment}"
    return PlanDiff(
        added=added,
        removed=removed,
        changed=changed,
        risk=pair(old.risk.level.value, new.risk.level.value),
        approval=pair(
            f"{old.approval.level.value} ({old.approval.quorum})",
            f"{new.approval.level.value} ({new.approval.quorum})",
        ),
        artifacts_added=[x for x in new.artifacts if x not in old.artifacts],
        artifacts_removed=[x for x in old.artifacts if x not in new.artifacts],
        target=pair(old_target, new_target),
    )
