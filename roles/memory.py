"""Ψ Memory: trust scores and precedent from what happened before."""

from __future__ import annotations

from roles.constitution import TrustRules


def trust_key(repo: str, environment: str) -> str:
    return f"{repo}@{environment}"


def next_trust(current: float, succeeded: bool, rules: TrustRules) -> float:
    """Trust rises slowly with each success and falls faster with each failure."""
    if succeeded:
        value = current + rules.success_delta * (1.0 - current)
    else:
        value = current - rules.failure_delta
    return round(min(1.0, max(0.0, value)), 4)
