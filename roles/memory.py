"""Ψ Memory: trust scores from what happened before."""

from __future__ import annotations

from typing import Literal

from roles.constitution import TrustRules


def trust_key(repo: str, environment: str) -> str:
    return f"{repo}@{environment}"


def requester_key(who: str) -> str:
    """``who`` is ``team/user``."""
    return f"requester:{who}"


def approver_key(who: str) -> str:
    return f"approver:{who}"


def model_key(model: str) -> str:
    return f"model:{model}"


def moved(
    current: float, how: Literal["success", "failure", "rollback"], rules: TrustRules
) -> float:
    """Trust rises slowly with each success and falls faster with each failure, and
    faster still when what it did had to be rolled back."""
    if how == "success":
        value = current + rules.success_delta * (1.0 - current)
    elif how == "failure":
        value = current - rules.failure_delta
    else:
        value = current - rules.rollback_delta
    return round(min(1.0, max(0.0, value)), 4)


def next_trust(current: float, succeeded: bool, rules: TrustRules) -> float:
    return moved(current, "success" if succeeded else "failure", rules)


def relevant_keys(repo: str, environment: str, requester: str, models: list[str]) -> list[str]:
    """The scores a plan's autonomy depends on: its repo@environment, its requester
    (``team/user``) and the models that planned it."""
    keys = [trust_key(repo, environment), requester_key(requester)]
    keys += [model_key(m) for m in models if m != "offline"]
    return keys


def lowest(scores: dict[str, float]) -> tuple[str, float] | None:
    """The lowest score and its key (ties: the first)."""
    if not scores:
        return None
    key = min(scores, key=lambda k: scores[k])
    return key, scores[key]
