"""The protocols (ports) through which the roles reach the outside world."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from roles.change_check import Change
from roles.constitution import Constitution
from roles.digest import DigestReport
from roles.draft import PlanDraft
from roles.navigator import Reading
from roles.outcomes import Outcome
from roles.plan import Plan
from roles.plan_diff import PlanDiff
from roles.precedent import Precedent
from roles.records import (
    DecideResult,
    DecisionRecord,
    DeployLock,
    Directive,
    PlanRecord,
    PlanStatus,
    RunInfo,
    SlotClaim,
    Thread,
)


@dataclass(frozen=True)
class Proposal:
    """A planner's answer: the chosen draft and how much to trust it."""

    draft: PlanDraft
    planner: str  # "offline" or "llm"
    models: list[str]
    confidence: float
    disagreements: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    agreement: float | None = None  # between models, when more than one was asked


@dataclass(frozen=True)
class CardContext:
    """What the card shows beyond the record: the diff to the previous version, and
    when a notification-level plan's veto window ends (epoch seconds)."""

    changes: PlanDiff | None = None
    window_ends: float | None = None
    # An approved plan waiting for its environment: in the deploy queue, locked, frozen.
    waiting: str | None = None
    # Ψ: similar earlier plans and what became of them (roles/precedent.py).
    precedent: Precedent | None = None


class PlanningFailed(Exception):
    """No acceptable plan could be produced; the message is safe to show."""


class Planner(Protocol):
    offline: bool

    async def propose(
        self, reading: Reading, constitution: Constitution, precedent: list[str]
    ) -> Proposal: ...


class PlanStore(Protocol):
    async def claim_event(self, key: str, ttl_seconds: int) -> bool: ...
    async def event_state(self, key: str) -> str | None:
        """ "pending" while an event's work is being queued, "done" once it is, else None."""
        ...

    async def confirm_event(self, key: str, ttl_seconds: int) -> None:
        """The event's work is durably queued: keep the claim for ``ttl_seconds``."""
        ...

    async def release_event(self, key: str) -> None:
        """Queuing failed: drop the claim so the sender's retry is accepted."""
        ...

    async def within_rate(self, counters: list[tuple[str, int]], window_seconds: int) -> bool:
        """Count one hit on each (counter, limit); False (and nothing counted) if any
        counter is already at its limit in the current window."""
        ...

    async def take_slot(self, slot: str, plan_id: str) -> SlotClaim:
        """Take the repo@environment's deploy slot, or join (or keep) a place in its queue."""
        ...

    async def release_slot(self, slot: str, plan_id: str) -> str | None:
        """Free the slot; the plan now at the head of the queue, to be dispatched, if any."""
        ...

    async def lock(self, slot: str, lock: DeployLock) -> bool: ...
    async def unlock(self, slot: str) -> str | None: ...
    async def locks(self) -> dict[str, DeployLock]: ...
    async def slot(self, slot: str) -> tuple[str | None, list[str]]: ...
    async def save_new(self, record: PlanRecord) -> None: ...
    async def load(self, plan_id: str) -> PlanRecord | None: ...
    async def set_card(self, plan_id: str, card_ts: str) -> None: ...
    async def decide(
        self, plan_id: str, digest: str, record: DecisionRecord, seen: int, completes: bool
    ) -> DecideResult: ...
    async def transition(
        self, plan_id: str, from_: set[PlanStatus], to: PlanStatus, note: str = ""
    ) -> bool: ...
    async def save_run(self, plan_id: str, run: RunInfo) -> None: ...

    # -- Ψ: outcomes (roles/outcomes.py) ------------------------------------------------

    async def record_outcome(self, outcome: Outcome) -> bool:
        """Keep a plan's outcome; False (and nothing changed) if it was already kept."""
        ...

    async def update_outcome(self, outcome: Outcome) -> None:
        """Amend a kept outcome (rolled back, restored)."""
        ...

    async def outcomes_in(self, repo: str, environment: str, limit: int) -> list[Outcome]:
        """The newest outcomes in ``repo``@``environment``, newest first."""
        ...

    async def outcomes_between(self, start: float, end: float, limit: int) -> list[Outcome]:
        """Outcomes that ended in [start, end), oldest first."""
        ...

    async def trusts(self) -> dict[str, float]:
        """Every trust score kept, by key."""
        ...

    async def add_change_decision(
        self, plan_id: str, change_digest: str, record: DecisionRecord
    ) -> bool:
        """Record one person's decision on a checked change (False: they already decided)."""
        ...

    async def change_decisions(self, plan_id: str, change_digest: str) -> list[DecisionRecord]:
        """The decisions on the second card of a checked change, oldest first."""
        ...

    async def plan_for_run(self, run_id: int) -> str | None: ...
    async def claim_delivery(self, delivery_id: str) -> bool: ...
    async def prepared_rollback(self, key: str) -> tuple[str, str, str] | None: ...
    async def set_prepared_rollback(self, key: str, current: str, sha: str, ref: str) -> None: ...
    async def recent(self, limit: int) -> list[PlanRecord]: ...
    async def trust(self, key: str, initial: float) -> float: ...
    async def audit(self, kind: str, plan_id: str, actor: str, detail: dict[str, Any]) -> str: ...
    async def set_trust(self, key: str, value: float) -> None: ...

    # -- durability: leases, what a retried job already did, plans left behind ------------

    async def claim_lease(self, key: str, owner: str, seconds: float) -> bool:
        """A short exclusive lease on ``key`` (posting a card, one reconciler sweep)."""
        ...

    async def release_lease(self, key: str, owner: str) -> None:
        """Give the lease back if ``owner`` still holds it."""
        ...

    async def memo(self, key: str) -> dict[str, str]:
        """What an earlier try of a job remembered under ``key`` (empty the first time)."""
        ...

    async def set_memo(self, key: str, name: str, value: str, ttl_seconds: int) -> None:
        """Remember one side effect of a job, so a retried job reuses it."""
        ...

    async def idle_plans(
        self, status: PlanStatus, idle_seconds: float, without_card: bool = False, limit: int = 100
    ) -> list[str]:
        """Plans in ``status`` (pending, approved, dispatching or running) whose record has not
        changed for ``idle_seconds``, oldest first; ``without_card``: only those with no card."""
        ...


class Signer(Protocol):
    @property
    def keyid(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...
    def verify(self, keyid: str, data: bytes, signature: bytes) -> bool: ...


class CIRateLimited(Exception):
    """The CI provider asked us to wait; nothing was done."""

    def __init__(self, retry_after: float, kind: str) -> None:
        super().__init__(f"GitHub {kind} rate limit: retry in {retry_after:.0f} s")
        self.retry_after = retry_after
        self.kind = kind


class CIUncertain(Exception):
    """A dispatch may or may not have happened (a 5xx, a timeout): look before retrying."""


class CIGateway(Protocol):
    dry_run: bool

    async def dispatch(
        self, plan: Plan, inputs: dict[str, str], correlation_id: str, ref: str = ""
    ) -> RunInfo:
        """Start the workflow on ``ref`` (default: the plan's); the run can later be found
        by ``correlation_id``. The run that deploys a generated change runs on its branch."""
        ...

    async def find_run(self, plan: Plan, correlation_id: str) -> RunInfo | None:
        """The run a dispatch with ``correlation_id`` started, if GitHub lists it yet."""
        ...

    async def refresh(self, plan: Plan, run: RunInfo) -> RunInfo: ...

    async def rollback_target(
        self, repo: str, environment: str, current_sha: str | None
    ) -> tuple[str, str] | None:
        """(sha, ref) of the newest successful deployment older than the current one."""
        ...

    async def compare(self, repo: str, base: str, head: str) -> Change:
        """What commit ``head`` changed relative to ``base`` (for Δ)."""
        ...

    async def commit_on_default_branch(self, repo: str, sha: str, default_ref: str) -> bool:
        """Whether ``sha`` is on ``default_ref`` (merged after review)."""
        ...


class Notifier(Protocol):
    async def open_thread(self, channel: str, requester: str, text: str) -> Thread: ...
    async def post_card(self, record: PlanRecord, context: CardContext) -> str: ...
    async def find_card(self, record: PlanRecord) -> str | None:
        """The ts of this plan's card if it is already in its thread (a post whose reply
        was lost), else None (also when the thread cannot be read)."""
        ...

    async def update_card(self, record: PlanRecord, context: CardContext) -> None: ...
    async def post_run_status(self, record: PlanRecord) -> str | None: ...
    async def post_result(self, record: PlanRecord) -> None: ...
    async def post_change(self, record: PlanRecord) -> None:
        """The produced change in the thread: pull request, files ±, tests, Δ's verdict."""
        ...

    async def post_change_card(
        self, record: PlanRecord, decisions: list[DecisionRecord]
    ) -> str | None:
        """The second card (approve the checked diff); its ts."""
        ...

    async def update_change_card(
        self, record: PlanRecord, decisions: list[DecisionRecord]
    ) -> None: ...

    async def post_text(self, thread: Thread, text: str) -> None: ...
    async def tell_user(self, thread: Thread, user_id: str, text: str) -> None: ...
    async def card_gone(self, channel: str, card_ts: str, plan_id: str) -> None:
        """The plan behind this card no longer exists: say so on the card, without buttons."""
        ...

    async def post_digest(
        self, channel: str, report: DigestReport, key: str = "", look_first: bool = False
    ) -> str:
        """Post the digest (and its chart) to ``channel``; the message's ts. ``key`` names
        the schedule slot (carried in the message's metadata); ``look_first``: an earlier
        try may have posted it, so look for a message with ``key`` first and, if there is
        one, post nothing and return its ts."""
        ...


class Metrics(Protocol):
    def outcome(self, outcome: Outcome) -> None:
        """A plan's outcome was kept: count it and observe its timings."""
        ...

    def restored(self, outcome: Outcome) -> None:
        """An earlier outcome was amended: rolled back, or its environment restored."""
        ...


class NoMetrics:
    """Implements :class:`Metrics` by doing nothing (tests, tools)."""

    def outcome(self, outcome: Outcome) -> None:
        return None

    def restored(self, outcome: Outcome) -> None:
        return None


class Directory(Protocol):
    async def groups_of(self, user_id: str, candidate_groups: list[str]) -> set[str]: ...


class Scheduler(Protocol):
    async def enqueue(
        self, job: str, key: str, payload: dict[str, Any], delay_seconds: float = 0
    ) -> None: ...


__all__ = [
    "CIGateway",
    "CIRateLimited",
    "CIUncertain",
    "CardContext",
    "Directive",
    "Directory",
    "Notifier",
    "PlanStore",
    "Planner",
    "PlanningFailed",
    "Proposal",
    "Scheduler",
    "Signer",
]
