"""The job table: every background job's name and typed payload, defined once.

A queue entry is JSON data (never a pickle); :func:`parse` turns it back into
one of these types or refuses it, so a malformed entry cannot reach a flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from roles.records import Actor, Directive, Thread

PlanJobName = Literal["dispatch", "track", "card", "veto_window", "expire", "remind"]
PLAN_JOBS: tuple[str, ...] = get_args(PlanJobName)


@dataclass(frozen=True)
class PlanDirective:
    """Φ Σ Δ for a directive that arrived (or a rollback that was asked for)."""

    directive: Directive
    name: Literal["plan"] = "plan"

    def payload(self) -> dict[str, Any]:
        d = self.directive
        return {
            "directive": {
                "text": d.text,
                "team_id": d.requester.team_id,
                "user_id": d.requester.user_id,
                "user_name": d.requester.name,
                "channel": d.thread.channel,
                "thread_ts": d.thread.thread_ts,
                "source": d.source,
                "event_id": d.event_id,
                "kind": d.kind,
                "rollback_from": d.rollback_from,
                "enterprise_id": d.requester.enterprise_id,
                "channel_type": d.channel_type,
            }
        }


@dataclass(frozen=True)
class OnPlan:
    """A step on one plan: dispatch, track, refresh its card, close its veto window…"""

    name: PlanJobName
    plan_id: str

    def payload(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id}


@dataclass(frozen=True)
class Revise:
    """Σ revises a plan after "request changes"."""

    plan_id: str
    feedback: str
    user_id: str
    name: Literal["revise"] = "revise"

    def payload(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "feedback": self.feedback, "user_id": self.user_id}


@dataclass(frozen=True)
class RunEvent:
    """A GitHub webhook named a run: look at it now rather than at the next poll."""

    run_id: int
    # From the run's name: finds the plan while its run id is still unknown (GHES).
    correlation_id: str = ""
    name: Literal["run_event"] = "run_event"

    def payload(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "correlation_id": self.correlation_id}


@dataclass(frozen=True)
class Reconcile:
    """A periodic sweep (cron): move on every plan that stayed in a state past its deadline."""

    name: Literal["reconcile"] = "reconcile"

    def payload(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Digest:
    """A periodic check (cron): post the scheduled digest if its slot is due and unclaimed."""

    name: Literal["digest"] = "digest"

    def payload(self) -> dict[str, Any]:
        return {}


Job = PlanDirective | OnPlan | Revise | RunEvent | Reconcile | Digest
NAMES: tuple[str, ...] = ("plan", "revise", "run_event", "reconcile", "digest", *PLAN_JOBS)


class BadJob(ValueError):
    """A queue entry that is not one of the jobs in this table."""


def _directive(p: dict[str, Any]) -> Directive:
    kind = p.get("kind", "directive")
    if kind not in ("directive", "rollback"):
        raise BadJob(f"unknown directive kind {kind!r}")
    return Directive(
        text=str(p["text"]),
        requester=Actor(
            team_id=str(p["team_id"]),
            user_id=str(p["user_id"]),
            name=str(p.get("user_name", "")),
            enterprise_id=str(p.get("enterprise_id", "")),
        ),
        thread=Thread(channel=str(p["channel"]), thread_ts=str(p["thread_ts"])),
        source=p["source"],
        event_id=str(p["event_id"]),
        kind=kind,
        rollback_from=str(p.get("rollback_from", "")),
        channel_type=str(p.get("channel_type", "")),
    )


def parse(name: str, payload: dict[str, Any]) -> Job:
    try:
        if name == "plan":
            return PlanDirective(_directive(payload["directive"]))
        if name == "revise":
            return Revise(
                str(payload["plan_id"]), str(payload["feedback"]), str(payload["user_id"])
            )
        if name == "run_event":
            return RunEvent(int(payload["run_id"]), str(payload.get("correlation_id", "")))
        if name == "reconcile":
            return Reconcile()
        if name == "digest":
            return Digest()
        if name in PLAN_JOBS:
            return OnPlan(name, str(payload["plan_id"]))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadJob(f"job {name}: bad payload ({exc})") from exc
    raise BadJob(f"unknown job {name!r}")
