"""What SOPHIE remembers about a plan while it moves from card to deployment."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from roles.plan import Plan


class PlanStatus(enum.StrEnum):
    PENDING = "pending"
    BLOCKED = "blocked"
    APPROVED = "approved"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    VETOED = "vetoed"
    EXPIRED = "expired"
    STALE = "stale"
    SUPERSEDED = "superseded"  # changes were requested; a revised plan replaces it
    # The change was implemented and checked, but the environment deploys only reviewed
    # code: its pull request is to be reviewed and merged (nothing was deployed).
    REVIEW = "review"
    ERROR = "error"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = {
    PlanStatus.BLOCKED,
    PlanStatus.SUCCEEDED,
    PlanStatus.FAILED,
    PlanStatus.VETOED,
    PlanStatus.EXPIRED,
    PlanStatus.STALE,
    PlanStatus.SUPERSEDED,
    PlanStatus.REVIEW,
    PlanStatus.ERROR,
}

Decision = Literal["approve", "veto"]


@dataclass(frozen=True)
class Actor:
    team_id: str
    user_id: str
    name: str = ""
    # Enterprise Grid: the organisation the workspace belongs to ("" elsewhere).
    enterprise_id: str = ""

    @property
    def is_bot(self) -> bool:
        return self.user_id.startswith("sophie:")


@dataclass(frozen=True)
class Thread:
    """Where the conversation about a plan happens."""

    channel: str
    thread_ts: str


@dataclass(frozen=True)
class Directive:
    text: str
    requester: Actor
    thread: Thread
    source: Literal["mention", "command", "message", "cli", "button", "api"]
    event_id: str
    # A rollback is a command (the Rollback button, /sophie rollback), never a word:
    # only kind "rollback" can plan one, whatever the text says.
    kind: Literal["directive", "rollback"] = "directive"
    # For rollbacks started from a run: the commit to move away from.
    rollback_from: str = ""
    # Slack's channel_type ("im" for a DM, "channel", "group", "mpim"), where known.
    channel_type: str = ""


@dataclass(frozen=True)
class DecisionRecord:
    actor: Actor
    decision: Decision
    at: datetime
    envelope: dict[str, Any]
    groups: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Link:
    name: str
    url: str


@dataclass
class ProducedChange:
    """What the implement job reported (the ``sophie-change`` notice) and Δ's verdict on it."""

    branch: str
    commit: str
    base: str
    pull_request: str = ""
    files: int = 0
    additions: int = 0
    deletions: int = 0
    tests_command: str = ""
    tests_passed: bool | None = None
    tests_summary: str = ""
    # "reported" by the job; "checked" (Δ passed it and signed the change statement) or
    # "refused" (``reason`` says why; nothing built from it deploys).
    verdict: Literal["reported", "checked", "refused"] = "reported"
    reason: str = ""
    change_digest: str = ""
    statement: dict[str, Any] | None = None  # the signed change statement (DSSE envelope)
    on_default_branch: bool = False  # merged after review when Δ checked it
    review_ts: str = ""  # the second card, when the environment wants the diff reviewed
    file_list: list[tuple[str, int, int]] = field(default_factory=list)  # path, +, −

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProducedChange:
        data = dict(data)
        data["file_list"] = [tuple(f) for f in data.get("file_list", [])]
        return cls(**data)


@dataclass
class RunInfo:
    dry_run: bool
    status: Literal["queued", "in_progress", "completed"]
    conclusion: str | None = None
    run_id: int | None = None
    html_url: str | None = None
    staging_url: str | None = None
    artifacts: list[Link] = field(default_factory=list)
    current_job: str | None = None
    current_step: str | None = None
    failing_job: str | None = None
    failing_step: str | None = None
    log_url: str | None = None
    head_sha: str | None = None
    message_ts: str | None = None
    polls: int = 0
    detail: str = ""
    # Finds the run when GitHub cannot return its id (GHES), and after a crash.
    correlation_id: str = ""
    dispatched_at: float = 0.0
    attempts: int = 0
    # "" once GitHub accepted it; "unknown" while a dispatch call is in flight or its
    # outcome is unclear (look before retrying); "not_sent" when it surely was not.
    dispatch_state: str = ""
    shown: str = ""  # the state the status message shows (edits are rate limited)
    images: list[str] = field(default_factory=list)
    release_assets: list[Link] = field(default_factory=list)
    # "implement": the run that writes the plan's change (then Δ checks it); "run": the
    # run that builds and deploys (or rolls back).
    phase: Literal["implement", "run"] = "run"
    # The produced change, from the implement run on: carried into the run that deploys it.
    change: ProducedChange | None = None
    build_seconds: float = 0.0  # how long the build job took (GitHub's job timestamps)
    rollback_to: str = ""  # ref@sha the Rollback button would deploy (prepared at the end)

    def signature(self) -> str:
        """What the status message would show; an edit is due when this changes."""
        return f"{self.status}|{self.conclusion}|{self.current_job}|{self.current_step}"

    @property
    def succeeded(self) -> bool:
        return self.status == "completed" and self.conclusion in ("success", "dry_run")


@dataclass
class PlanRecord:
    plan: Plan
    status: PlanStatus
    thread: Thread
    card_ts: str | None = None
    decisions: list[DecisionRecord] = field(default_factory=list)
    run: RunInfo | None = None
    note: str = ""

    @property
    def approvals(self) -> list[DecisionRecord]:
        return [d for d in self.decisions if d.decision == "approve"]

    @property
    def veto(self) -> DecisionRecord | None:
        return next((d for d in self.decisions if d.decision == "veto"), None)


@dataclass(frozen=True)
class DecideResult:
    accepted: bool
    status: PlanStatus
    reason: str = ""


@dataclass(frozen=True)
class SlotClaim:
    """The answer to "may this plan deploy to its repo@environment now?"."""

    taken: bool
    position: int = 0  # 1 = next in line
    holder: str = ""  # the plan deploying now ("" when the slot is locked and free)
    newly_queued: bool = False


@dataclass(frozen=True)
class DeployLock:
    """``/sophie lock``: deploys to a repo@environment wait until it is unlocked."""

    by: str
    reason: str
    at: float
