"""Ψ the headline figures App Home shows: deploys in the last days, success rate, lead time.

Pure, from kept outcomes (:mod:`roles.outcomes`), with the digest's definitions (README,
"The digest"): *a deploy* is a plan whose workflow action is ``deploy`` and which ran
(succeeded, failed or later rolled back); dry runs are left out (they prove nothing
about the environment). The success rate is succeeded / deploys (a deploy later rolled
back is not a success); the lead time is directive → deployed
(:attr:`Outcome.lead_seconds`), its median over the deploys that reached their
environment. Only outcomes of the viewer's workspace count.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from roles.outcomes import Outcome

DAYS = 7
RAN = ("succeeded", "failed", "rolled_back")


@dataclass(frozen=True)
class Headline:
    days: int
    deploys: int
    succeeded: int
    lead_p50_seconds: float | None
    # The store gave as many outcomes as were asked for: the figures are a lower bound.
    partial: bool = False

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.deploys if self.deploys else None


def is_deploy(outcome: Outcome) -> bool:
    return outcome.action == "deploy" and outcome.result in RAN and not outcome.dry_run


def headline(
    outcomes: Iterable[Outcome],
    team: str,
    now: float,
    days: int = DAYS,
    partial: bool = False,
) -> Headline:
    """The figures over ``(now - days, now]`` for the workspace ``team``."""
    start = now - days * 86400
    deploys = [
        o
        for o in outcomes
        if is_deploy(o)
        and start < o.ended_at <= now
        and bool(team)
        and o.requester.partition("/")[0] == team
    ]
    leads = [s for o in deploys if (s := o.lead_seconds) is not None]
    return Headline(
        days=days,
        deploys=len(deploys),
        succeeded=sum(1 for o in deploys if o.result == "succeeded"),
        lead_p50_seconds=float(statistics.median(leads)) if leads else None,
        partial=partial,
    )
