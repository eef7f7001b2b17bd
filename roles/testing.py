"""In-memory ports, a manual scheduler and a manual clock: flow tests in milliseconds.

These behave like the Redis store and the job queue where the flows depend on it:
a decision is accepted only on a pending plan with an unchanged digest and the
number of decisions the caller judged on (optimistic concurrency); a job key is
queued at most once until it has run; a delayed job runs only when the clock
reaches it. Nothing here sleeps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from roles import jobs
from roles.change_check import Change
from roles.constitution import Constitution
from roles.digest import DigestReport
from roles.outcomes import Outcome
from roles.plan import Plan
from roles.ports import CardContext, CIRateLimited, CIUncertain
from roles.records import (
    DecideResult,
    DecisionRecord,
    DeployLock,
    PlanRecord,
    PlanStatus,
    ProducedChange,
    RunInfo,
    SlotClaim,
    Thread,
)


class ManualClock:
    def __init__(self, start: datetime = datetime(2026, 11, 24, 12, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class MemoryStore:
    """Implements :class:`roles.ports.PlanStore` in memory, with the store's atomic rules."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.plans: dict[str, PlanRecord] = {}
        self.claims: dict[str, str] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self.rates: dict[str, int] = {}
        self.runs: dict[int, str] = {}
        self.deliveries: set[str] = set()
        self.prepared: dict[str, tuple[str, str, str]] = {}
        self.trusts_kept: dict[str, float] = {}
        self.audit_log: list[tuple[str, str, str, dict[str, Any]]] = []
        self.slots: dict[str, str] = {}
        self.queues: dict[str, list[str]] = {}
        self.held_locks: dict[str, DeployLock] = {}
        self.memos: dict[str, dict[str, str]] = {}
        self.changed: dict[str, float] = {}  # plan id → when its record last changed
        self.change_votes: dict[tuple[str, str], dict[str, DecisionRecord]] = {}
        self.outcomes: dict[str, Outcome] = {}

    async def claim_event(self, key: str, ttl_seconds: int) -> bool:
        if key in self.claims:
            return False
        self.claims[key] = "pending"
        return True

    async def event_state(self, key: str) -> str | None:
        return self.claims.get(key)

    async def confirm_event(self, key: str, ttl_seconds: int) -> None:
        self.claims[key] = "done"

    async def release_event(self, key: str) -> None:
        self.claims.pop(key, None)

    async def within_rate(self, counters: list[tuple[str, int]], window_seconds: int) -> bool:
        window = int(self.clock().timestamp() // window_seconds)
        keys = [f"{name}:{window}" for name, _ in counters]
        if any(self.rates.get(k, 0) >= limit for k, (_, limit) in zip(keys, counters, strict=True)):
            return False
        for k in keys:
            self.rates[k] = self.rates.get(k, 0) + 1
        return True

    async def take_slot(self, slot: str, plan_id: str) -> SlotClaim:
        queue = self.queues.setdefault(slot, [])
        active = self.slots.get(slot)
        if active and active != plan_id:
            held = self.plans.get(active)
            if held is None or held.status.final:
                del self.slots[slot]
                active = None
        free = slot not in self.held_locks and (not active or active == plan_id)
        if free and (active or not queue or queue[0] == plan_id):
            self.slots[slot] = plan_id
            if plan_id in queue:
                queue.remove(plan_id)
            return SlotClaim(True)
        new = plan_id not in queue
        if new:
            queue.append(plan_id)
        return SlotClaim(False, queue.index(plan_id) + 1, active or "", new)

    async def release_slot(self, slot: str, plan_id: str) -> str | None:
        if self.slots.get(slot) == plan_id:
            del self.slots[slot]
        queue = self.queues.get(slot, [])
        if slot in self.slots or slot in self.held_locks or not queue:
            return None
        self.slots[slot] = queue.pop(0)
        return self.slots[slot]

    async def lock(self, slot: str, lock: DeployLock) -> bool:
        if slot in self.held_locks:
            return False
        self.held_locks[slot] = lock
        return True

    async def unlock(self, slot: str) -> str | None:
        if self.held_locks.pop(slot, None) is None:
            return None
        return await self.release_slot(slot, "")

    async def locks(self) -> dict[str, DeployLock]:
        return dict(self.held_locks)

    async def slot(self, slot: str) -> tuple[str | None, list[str]]:
        return self.slots.get(slot), list(self.queues.get(slot, []))

    async def save_new(self, record: PlanRecord) -> None:
        self.plans[record.plan.id] = copy.deepcopy(record)
        self.changed[record.plan.id] = self.clock().timestamp()
        await self.audit("plan.created", record.plan.id, record.plan.requester.user_id, {})

    async def load(self, plan_id: str) -> PlanRecord | None:
        record = self.plans.get(plan_id)
        return copy.deepcopy(record) if record is not None else None

    async def set_card(self, plan_id: str, card_ts: str) -> None:
        self.plans[plan_id].card_ts = card_ts

    async def decide(
        self, plan_id: str, digest: str, record: DecisionRecord, seen: int, completes: bool
    ) -> DecideResult:
        plan = self.plans.get(plan_id)
        if plan is None:
            return DecideResult(False, PlanStatus.ERROR, "I have no record of that plan.")
        if plan.status != PlanStatus.PENDING:
            return DecideResult(False, plan.status, f"This plan is already {plan.status.value}.")
        if plan.plan.digest != digest:
            return DecideResult(False, plan.status, "The plan changed since this card was posted.")
        if any(d.actor.user_id == record.actor.user_id for d in plan.decisions):
            return DecideResult(False, plan.status, "You have already decided on this plan.")
        if len(plan.decisions) != seen:
            return DecideResult(False, plan.status, "conflict")
        plan.decisions.append(record)
        self.changed[plan_id] = self.clock().timestamp()
        if record.decision == "veto":
            plan.status = PlanStatus.VETOED
        elif completes:
            plan.status = PlanStatus.APPROVED
        await self.audit(f"decision.{record.decision}", plan_id, record.actor.user_id, {})
        return DecideResult(True, plan.status)

    async def transition(
        self, plan_id: str, from_: set[PlanStatus], to: PlanStatus, note: str = ""
    ) -> bool:
        plan = self.plans.get(plan_id)
        if plan is None or plan.status not in from_:
            return False
        plan.status, plan.note = to, note
        self.changed[plan_id] = self.clock().timestamp()
        await self.audit(f"plan.{to.value}", plan_id, "sophie", {"note": note})
        return True

    async def record_outcome(self, outcome: Outcome) -> bool:
        if outcome.plan_id in self.outcomes:
            return False
        self.outcomes[outcome.plan_id] = replace(outcome)
        return True

    async def update_outcome(self, outcome: Outcome) -> None:
        self.outcomes[outcome.plan_id] = replace(outcome)

    async def outcomes_in(self, repo: str, environment: str, limit: int) -> list[Outcome]:
        kept = [o for o in self.outcomes.values() if (o.repo, o.environment) == (repo, environment)]
        return sorted(kept, key=lambda o: o.ended_at, reverse=True)[:limit]

    async def outcomes_between(self, start: float, end: float, limit: int) -> list[Outcome]:
        kept = [o for o in self.outcomes.values() if start <= o.ended_at < end]
        return sorted(kept, key=lambda o: o.ended_at)[:limit]

    async def trusts(self) -> dict[str, float]:
        return dict(self.trusts_kept)

    async def add_change_decision(
        self, plan_id: str, change_digest: str, record: DecisionRecord
    ) -> bool:
        decided = self.change_votes.setdefault((plan_id, change_digest), {})
        if record.actor.user_id in decided:
            return False
        decided[record.actor.user_id] = record
        return True

    async def change_decisions(self, plan_id: str, change_digest: str) -> list[DecisionRecord]:
        decided = self.change_votes.get((plan_id, change_digest), {})
        return sorted(decided.values(), key=lambda d: d.at)

    async def save_run(self, plan_id: str, run: RunInfo) -> None:
        self.plans[plan_id].run = replace(run)
        self.changed[plan_id] = self.clock().timestamp()
        if run.run_id is not None:
            self.runs[run.run_id] = plan_id

    async def plan_for_run(self, run_id: int) -> str | None:
        return self.runs.get(run_id)

    async def claim_delivery(self, delivery_id: str) -> bool:
        if delivery_id in self.deliveries:
            return False
        self.deliveries.add(delivery_id)
        return True

    async def prepared_rollback(self, key: str) -> tuple[str, str, str] | None:
        return self.prepared.get(key)

    async def set_prepared_rollback(self, key: str, current: str, sha: str, ref: str) -> None:
        self.prepared[key] = (current, sha, ref)

    async def recent(self, limit: int) -> list[PlanRecord]:
        ordered = sorted(self.plans.values(), key=lambda r: r.plan.created_at, reverse=True)
        return [copy.deepcopy(r) for r in ordered[:limit]]

    async def trust(self, key: str, initial: float) -> float:
        return self.trusts_kept.get(key, initial)

    async def audit(self, kind: str, plan_id: str, actor: str, detail: dict[str, Any]) -> str:
        self.audit_log.append((kind, plan_id, actor, detail))
        return str(len(self.audit_log))

    async def set_trust(self, key: str, value: float) -> None:
        self.trusts_kept[key] = value

    # -- durability (leases, job memos, plans left behind): see bot/redis_store.py ----------

    async def claim_lease(self, key: str, owner: str, seconds: float) -> bool:
        now = self.clock().timestamp()
        held = self.leases.get(f"lease:{key}")
        if held is not None and held[1] > now and held[0] != owner:
            return False
        self.leases[f"lease:{key}"] = (owner, now + seconds)
        return True

    async def release_lease(self, key: str, owner: str) -> None:
        if self.leases.get(f"lease:{key}", ("", 0.0))[0] == owner:
            del self.leases[f"lease:{key}"]

    async def memo(self, key: str) -> dict[str, str]:
        return dict(self.memos.get(key, {}))

    async def set_memo(self, key: str, name: str, value: str, ttl_seconds: int) -> None:
        self.memos.setdefault(key, {})[name] = value

    async def idle_plans(
        self, status: PlanStatus, idle_seconds: float, without_card: bool = False, limit: int = 100
    ) -> list[str]:
        """Like the store's status index, with "changed" = the last write seen by this store."""
        cutoff = self.clock().timestamp() - idle_seconds
        found = [
            plan_id
            for plan_id, record in self.plans.items()
            if record.status == status
            and self.changed.get(plan_id, 0.0) <= cutoff
            and not (without_card and record.card_ts)
        ]
        return sorted(found, key=lambda p: self.changed.get(p, 0.0))[:limit]


@dataclass
class QueuedJob:
    name: str
    key: str
    payload: dict[str, Any]
    due: datetime


class ManualScheduler:
    """Implements :class:`roles.ports.Scheduler`: jobs wait until :meth:`run_due` runs them.

    Like the queue, a key is accepted once until its job has run (a second enqueue
    of the same key is dropped), and payloads are checked against the job table.
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.queued: list[QueuedJob] = []
        self.done: set[str] = set()
        self.failures: int = 0  # make the next enqueue calls raise (a Redis outage)

    async def enqueue(
        self, job: str, key: str, payload: dict[str, Any], delay_seconds: float = 0
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the queue is unreachable")
        jobs.parse(job, payload)  # a payload the job table would refuse never gets queued
        if key in self.done or any(q.key == key for q in self.queued):
            return
        due = self.clock() + timedelta(seconds=delay_seconds)
        self.queued.append(QueuedJob(job, key, dict(payload), due))

    def names(self) -> list[str]:
        return [q.name for q in self.queued]

    async def run_due(
        self, sophie: Any, *, rounds: int = 50, only: set[str] | None = None
    ) -> list[str]:
        """Run every job that is due (and those they queue), in order; the names run.
        ``only``: run just the jobs of these names (to act between two steps)."""
        ran: list[str] = []
        for _ in range(rounds):
            due = [
                q for q in self.queued if q.due <= self.clock() and (only is None or q.name in only)
            ]
            if not due:
                return ran
            job = min(due, key=lambda q: q.due)
            self.queued.remove(job)
            self.done.add(job.key)
            await sophie.run(jobs.parse(job.name, job.payload))
            ran.append(job.name)
        raise AssertionError(f"jobs keep coming after {rounds} rounds: {ran[-10:]}")


@dataclass
class Posted:
    kind: str
    thread: Thread
    text: str = ""
    plan_id: str = ""
    status: str = ""


@dataclass
class RecordingNotifier:
    """Implements :class:`roles.ports.Notifier` by remembering what would be posted."""

    posted: list[Posted] = field(default_factory=list)
    _ts: int = 0
    # Each digest posted: (channel, ts, slot key, report).
    digests: list[tuple[str, str, str, DigestReport]] = field(default_factory=list)

    def _next(self) -> str:
        self._ts += 1
        return f"1700000000.{self._ts:06d}"

    async def open_thread(self, channel: str, requester: str, text: str) -> Thread:
        thread = Thread(channel, self._next())
        self.posted.append(Posted("thread", thread, text))
        return thread

    async def post_card(self, record: PlanRecord, context: CardContext) -> str:
        ts = self._next()
        self.posted.append(Posted("card", record.thread, ts, record.plan.id, record.status.value))
        return ts

    async def update_card(self, record: PlanRecord, context: CardContext) -> None:
        self.posted.append(
            Posted("card_update", record.thread, "", record.plan.id, record.status.value)
        )

    async def post_run_status(self, record: PlanRecord) -> str | None:
        status = record.run.status if record.run else ""
        self.posted.append(Posted("run_status", record.thread, "", record.plan.id, status))
        return (record.run.message_ts if record.run else None) or self._next()

    async def post_result(self, record: PlanRecord) -> None:
        self.posted.append(Posted("result", record.thread, "", record.plan.id, record.status.value))

    async def post_change(self, record: PlanRecord) -> None:
        change = record.run.change if record.run else None
        verdict = change.verdict if change else ""
        self.posted.append(Posted("change", record.thread, verdict, record.plan.id))

    async def post_change_card(
        self, record: PlanRecord, decisions: list[DecisionRecord]
    ) -> str | None:
        ts = self._next()
        self.posted.append(Posted("change_card", record.thread, ts, record.plan.id))
        return ts

    async def update_change_card(self, record: PlanRecord, decisions: list[DecisionRecord]) -> None:
        who = ",".join(d.actor.user_id for d in decisions)
        self.posted.append(Posted("change_card_update", record.thread, who, record.plan.id))

    async def post_text(self, thread: Thread, text: str) -> None:
        self.posted.append(Posted("text", thread, text))

    async def tell_user(self, thread: Thread, user_id: str, text: str) -> None:
        self.posted.append(Posted("ephemeral", thread, text))

    def texts(self) -> list[str]:
        return [p.text for p in self.posted if p.kind in ("text", "ephemeral")]

    def of(self, kind: str) -> list[Posted]:
        return [p for p in self.posted if p.kind == kind]

    async def find_card(self, record: PlanRecord) -> str | None:
        return next((p.text for p in self.of("card") if p.plan_id == record.plan.id), None)

    async def card_gone(self, channel: str, card_ts: str, plan_id: str) -> None:
        self.posted.append(Posted("card_gone", Thread(channel, card_ts), "", plan_id))

    async def post_digest(
        self, channel: str, report: DigestReport, key: str = "", look_first: bool = False
    ) -> str:
        if look_first and key:
            found = next((d for d in self.digests if d[0] == channel and d[2] == key), None)
            if found is not None:
                return found[1]
        ts = self._next()
        self.digests.append((channel, ts, key, report))
        self.posted.append(Posted("digest", Thread(channel, ""), key))
        return ts


class ScriptedCI:
    """Implements :class:`roles.ports.CIGateway`: runs complete after ``polls`` looks.

    ``failures`` lists what the next dispatch calls raise ("5xx" → uncertain,
    "429" → rate limited, "4xx" → refused) before one succeeds.
    """

    def __init__(self, *, polls: int = 1, conclusion: str = "success") -> None:
        self.dry_run = False
        self.polls = polls
        self.conclusion = conclusion
        self.failures: list[str] = []
        self.dispatched: list[dict[str, str]] = []
        self.looks: dict[int, int] = {}
        self.history: dict[tuple[str, str], list[tuple[str, str]]] = {}
        # Implement runs: what the job reports, or None (it fails with ``implement_failure``).
        self.change_report: ProducedChange | None = None
        self.implement_failure = "the tests failed: 1 failed, 2 passed"
        # compare(base, head) answers; commits on the default branch.
        self.changes: dict[tuple[str, str], Change] = {}
        self.merged: set[str] = set()
        self.refs: list[str] = []  # the ref of each dispatch
        # The commit each run is on: one for all by default; ``distinct_shas`` gives each
        # run its own (for rollback history).
        self.distinct_shas = False

    async def compare(self, repo: str, base: str, head: str) -> Change:
        return self.changes[(base, head)]

    async def commit_on_default_branch(self, repo: str, sha: str, default_ref: str) -> bool:
        return sha in self.merged

    async def dispatch(
        self, plan: Plan, inputs: dict[str, str], correlation_id: str, ref: str = ""
    ) -> RunInfo:
        if self.failures:
            kind = self.failures.pop(0)
            if kind == "429":
                raise CIRateLimited(1.0, "secondary")
            if kind == "5xx":
                raise CIUncertain("HTTP 502")
            raise ValueError("HTTP 422: the workflow refused the inputs")
        self.dispatched.append(dict(inputs))
        self.refs.append(ref or plan.target.ref)
        run_id = len(self.dispatched)
        sha = f"{run_id:040x}" if self.distinct_shas else "f" * 40
        return RunInfo(dry_run=False, status="queued", run_id=run_id, head_sha=sha)

    async def find_run(self, plan: Plan, correlation_id: str) -> RunInfo | None:
        for n, inputs in enumerate(self.dispatched, start=1):
            if inputs.get("correlation_id") == correlation_id:
                return RunInfo(dry_run=False, status="queued", run_id=n, head_sha="f" * 40)
        return None

    async def refresh(self, plan: Plan, run: RunInfo) -> RunInfo:
        assert run.run_id is not None
        seen = self.looks[run.run_id] = self.looks.get(run.run_id, 0) + 1
        if seen < self.polls:
            return replace(run, status="in_progress")
        if self.dispatched[run.run_id - 1].get("action") == "implement":
            report = self.change_report
            return replace(
                run,
                status="completed",
                conclusion="success" if report else "failure",
                change=replace(report) if report else None,
                detail="" if report else self.implement_failure,
                failing_job=None if report else "Implement the change",
            )
        return replace(run, status="completed", conclusion=self.conclusion)

    async def rollback_target(
        self, repo: str, environment: str, current_sha: str | None
    ) -> tuple[str, str] | None:
        earlier = [d for d in self.history.get((repo, environment), []) if d[0] != current_sha]
        return earlier[-1] if earlier else None


@dataclass
class StaticDirectory:
    """Implements :class:`roles.ports.Directory` from a fixed map of group → members."""

    groups: dict[str, set[str]] = field(default_factory=dict)

    async def groups_of(self, user_id: str, candidate_groups: list[str]) -> set[str]:
        return {g for g in candidate_groups if user_id in self.groups.get(g, set())}


def constant(constitution: Constitution) -> Callable[[], Constitution]:
    return lambda: constitution
