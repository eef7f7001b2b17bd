"""Ψ the digest: what the team should know, computed from outcomes and pending plans.

Pure: :func:`report` takes what the store holds (outcomes, pending plans, trust scores
now and at the last digest) and the time, and returns every figure the digest shows;
:func:`latest_slot` and friends read the constitution's schedule (five-field cron, in
its time zone, with ``cronsim``). The flow that posts it is
:mod:`roles.flows.digesting`; the message is built in :mod:`handlers.digest_blocks`.

Definitions (README, "The digest"):

- *A deploy* is a run of a plan whose workflow action is ``deploy`` and which ran:
  its result is succeeded, failed or rolled back. Dry runs are left out of every
  DORA figure and target (they prove nothing about the environment).
- *Deployment frequency*: deploys that reached their environment (succeeded or later
  rolled back) per day over the window (7 days by default).
- *Lead time*: directive → deployed (:attr:`Outcome.lead_seconds`), median.
- *Change failure rate*: (failed + rolled back) / deploys.
- *Time to restore*: failure → the environment good again
  (:attr:`Outcome.restore_seconds`), median over deploys that failed or were rolled back.
- *Rollback time*: a rollback run's dispatch → its end, median.
- *Approval health* (the same window, dry runs included: the decisions were real):
  time to decide is card → last decision, for plans people decided; veto rate is
  vetoed / decided; the autonomous share is plans the bot signed by rule / decided,
  and how many of those were later rolled back.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim

from roles.approvals import still_needed
from roles.constitution import Constitution, check_cron
from roles.outcomes import Outcome
from roles.plan import ApprovalLevel
from roles.records import PlanRecord, PlanStatus

WINDOW_DAYS = 7
EXPIRING_SECONDS = 2 * 3600
# The seed's success metrics.
TARGET_LEAD_SECONDS = 600.0  # directive → live under 10 minutes (p50)
TARGET_SUCCESS = 0.95  # more than 95 % of deploys succeed
TARGET_ROLLBACK_SECONDS = 120.0  # a rollback runs in under 2 minutes (p50)
# Trust scores are kept to 4 decimals (roles/memory.py): smaller differences are noise.
TRUST_EPSILON = 0.00005

RAN = ("succeeded", "failed", "rolled_back")


# -- the schedule ------------------------------------------------------------------------


class ScheduleError(ValueError):
    """The constitution's digest schedule is not a five-field cron expression."""


def _zone(timezone: str) -> ZoneInfo:
    return ZoneInfo(timezone)


def check_schedule(schedule: str) -> None:
    """Refuse anything but a valid five-field cron expression (minute hour dom month dow)."""
    try:
        check_cron(schedule)  # the constitution's own rule (refused at load too)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from exc


def latest_slot(schedule: str, timezone: str, now: datetime) -> datetime | None:
    """The newest time ``schedule`` fired at or before ``now`` (in ``timezone``), or None.

    cronsim's reverse iteration starts strictly before the minute it is given, so it is
    given the next whole minute: the slot of the current minute counts once it has begun.
    """
    check_schedule(schedule)
    local = now.astimezone(_zone(timezone))
    start = local.replace(second=0, microsecond=0) + timedelta(minutes=1)
    try:
        return next(CronSim(schedule, start, reverse=True))
    except StopIteration:
        return None


def previous_slot(schedule: str, timezone: str, slot: datetime) -> datetime | None:
    """The time ``schedule`` fired before ``slot``."""
    check_schedule(schedule)
    local = slot.astimezone(_zone(timezone)).replace(second=0, microsecond=0)
    try:
        return next(CronSim(schedule, local, reverse=True))
    except StopIteration:
        return None


def next_slot(schedule: str, timezone: str, now: datetime) -> datetime | None:
    """The next time ``schedule`` fires after ``now``."""
    check_schedule(schedule)
    local = now.astimezone(_zone(timezone)).replace(second=0, microsecond=0)
    try:
        return next(CronSim(schedule, local))
    except StopIteration:
        return None


def slot_key(channel: str, slot: datetime) -> str:
    """The claim of one slot in one channel: ``digest:<channel>:<slot, UTC, to the minute>``
    (a slot is a wall-clock minute; UTC keeps the two 01:30s of a DST change apart)."""
    return f"digest:{channel}:{slot.astimezone(UTC).strftime('%Y-%m-%dT%H:%MZ')}"


def last_key(channel: str) -> str:
    """Where the digest remembers its last post to ``channel`` (time, trust scores)."""
    return f"digest:{channel}:last"


# -- what the digest shows -----------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """A plan waiting for a decision."""

    plan_id: str
    repo: str
    environment: str
    summary: str
    requester: str  # the requester's name as Slack gave it, else their user id
    level: str
    channel: str
    age_seconds: float
    expires_in_seconds: float
    needed: tuple[str, ...]  # who is still needed, in words ("1 more approver", …)

    @property
    def needs_words(self) -> str:
        if self.needed:
            return ", ".join(self.needed)
        if self.level == ApprovalLevel.NOTIFICATION.value:
            return "no one: it runs when its veto window closes, unless vetoed"
        return "no one"


@dataclass(frozen=True)
class ApprovalHealth:
    decided: int = 0  # plans that got a decision (approved by people or the bot, or vetoed)
    decide_p50_seconds: float | None = None  # card → decision, plans people decided
    vetoed: int = 0
    veto_rate: float | None = None
    autonomous: int = 0  # signed by the bot by rule (autonomous, elapsed veto windows)
    autonomous_share: float | None = None
    autonomous_rolled_back: int = 0
    expired: int = 0


@dataclass(frozen=True)
class Dora:
    days: int
    deploys: int = 0  # deploys that ran (not dry runs)
    reached: int = 0  # reached their environment (succeeded, or later rolled back)
    failed: int = 0  # failed or rolled back
    per_day: float = 0.0
    lead_p50_seconds: float | None = None
    change_failure_rate: float | None = None
    restore_p50_seconds: float | None = None


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: float | None  # seconds, or a ratio (``unit``)
    unit: str  # "seconds" | "ratio"
    samples: int
    met: bool | None  # None: nothing measured yet


@dataclass(frozen=True)
class TrustMove:
    key: str
    before: float
    after: float
    floor: float  # trust.minimum_for_autonomous

    @property
    def delta(self) -> float:
        return self.after - self.before

    @property
    def crossed(self) -> str:
        """ "below" / "above" when the move crossed the autonomy floor, else ""."""
        if self.before >= self.floor > self.after:
            return "below"
        if self.before < self.floor <= self.after:
            return "above"
        return ""


@dataclass(frozen=True)
class Day:
    day: date
    deploys: int
    lead_p50_seconds: float | None


@dataclass(frozen=True)
class DigestReport:
    now: datetime  # in the digest's time zone
    since: datetime  # the last digest (or one schedule period back)
    timezone: str
    window_days: int
    waiting: list[Waiting] = field(default_factory=list)  # oldest first
    expiring: list[Waiting] = field(default_factory=list)  # soonest first
    ended: list[Outcome] = field(default_factory=list)  # since the last digest, newest first
    ended_counts: dict[str, int] = field(default_factory=dict)  # by result
    health: ApprovalHealth = field(default_factory=ApprovalHealth)
    dora: Dora = field(default_factory=lambda: Dora(WINDOW_DAYS))
    targets: list[Target] = field(default_factory=list)
    trust: list[TrustMove] = field(default_factory=list)  # largest move first
    days: list[Day] = field(default_factory=list)  # the window, oldest day first
    slot: datetime | None = None  # the schedule's slot it was posted for (None: on demand)
    next_at: datetime | None = None  # the schedule's next slot, when there is one
    truncated: bool = False  # more outcomes than were read: figures cover the newest read


def _median(values: Iterable[float]) -> float | None:
    data = list(values)
    return float(statistics.median(data)) if data else None


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _is_deploy(o: Outcome) -> bool:
    return o.action == "deploy" and not o.dry_run and o.result in RAN


def _waiting(record: PlanRecord, now: float) -> Waiting:
    plan = record.plan
    created = plan.created_at.timestamp()
    return Waiting(
        plan_id=plan.id,
        repo=plan.target.repo,
        environment=plan.target.environment,
        summary=plan.interpretation.summary,
        requester=plan.requester.name or plan.requester.user_id,
        level=plan.approval.level.value,
        channel=record.thread.channel,
        age_seconds=max(0.0, now - created),
        expires_in_seconds=created + plan.approval.ttl_seconds - now,
        needed=tuple(still_needed(plan, record.decisions)),
    )


def health_of(outcomes: Sequence[Outcome]) -> ApprovalHealth:
    decided = [o for o in outcomes if o.decided_at > 0]
    by_people = [
        o.decided_at - o.card_at
        for o in decided
        if not o.autonomous and o.card_at > 0 and o.decided_at >= o.card_at
    ]
    vetoed = sum(1 for o in decided if o.result == "vetoed")
    autonomous = [o for o in decided if o.autonomous]
    return ApprovalHealth(
        decided=len(decided),
        decide_p50_seconds=_median(by_people),
        vetoed=vetoed,
        veto_rate=_ratio(vetoed, len(decided)),
        autonomous=len(autonomous),
        autonomous_share=_ratio(len(autonomous), len(decided)),
        autonomous_rolled_back=sum(1 for o in autonomous if o.result == "rolled_back"),
        expired=sum(1 for o in outcomes if o.result == "expired"),
    )


def dora_of(outcomes: Sequence[Outcome], days: int) -> Dora:
    deploys = [o for o in outcomes if _is_deploy(o)]
    reached = [o for o in deploys if o.result in ("succeeded", "rolled_back")]
    failed = [o for o in deploys if o.result in ("failed", "rolled_back")]
    return Dora(
        days=days,
        deploys=len(deploys),
        reached=len(reached),
        failed=len(failed),
        per_day=len(reached) / days if days else 0.0,
        lead_p50_seconds=_median(s for o in reached if (s := o.lead_seconds) is not None),
        change_failure_rate=_ratio(len(failed), len(deploys)),
        restore_p50_seconds=_median(s for o in failed if (s := o.restore_seconds) is not None),
    )


def rollback_seconds(outcomes: Sequence[Outcome]) -> list[float]:
    """How long each rollback run took (dispatch → end), dry runs left out."""
    return [
        o.ended_at - o.dispatched_at
        for o in outcomes
        if o.action == "rollback"
        and not o.dry_run
        and o.result in RAN
        and o.dispatched_at > 0
        and o.ended_at >= o.dispatched_at
    ]


def targets_of(outcomes: Sequence[Outcome], dora: Dora) -> list[Target]:
    deploys = [o for o in outcomes if _is_deploy(o)]
    succeeded = sum(1 for o in deploys if o.result == "succeeded")
    success = _ratio(succeeded, len(deploys))
    rollbacks = rollback_seconds(outcomes)
    rollback = _median(rollbacks)
    lead = dora.lead_p50_seconds
    return [
        Target(
            "Directive → live",
            "under 10 min (p50)",
            lead,
            "seconds",
            dora.reached,
            None if lead is None else lead < TARGET_LEAD_SECONDS,
        ),
        Target(
            "Deploys that succeed",
            "over 95 %",
            success,
            "ratio",
            len(deploys),
            None if success is None else success > TARGET_SUCCESS,
        ),
        Target(
            "Rollback",
            "under 2 min (p50)",
            rollback,
            "seconds",
            len(rollbacks),
            None if rollback is None else rollback < TARGET_ROLLBACK_SECONDS,
        ),
    ]


def trust_moves(
    trusts: Mapping[str, float], before: Mapping[str, float] | None, initial: float, floor: float
) -> list[TrustMove]:
    """Scores that moved since ``before`` (a score new since then moved from ``initial``),
    largest move first."""
    earlier = before or {}
    moves = [
        TrustMove(key, earlier.get(key, initial), value, floor)
        for key, value in trusts.items()
        if abs(value - earlier.get(key, initial)) > TRUST_EPSILON
    ]
    moves.sort(key=lambda m: (-abs(m.delta), m.key))
    return moves


def days_of(outcomes: Sequence[Outcome], now: datetime, days: int) -> list[Day]:
    """Deploys that reached their environment, and their median lead time, per local day:
    the ``days`` days up to and including today, oldest first."""
    zone = now.tzinfo or UTC
    today = now.date()
    first = today - timedelta(days=days - 1)
    per_day: dict[date, list[Outcome]] = {first + timedelta(days=i): [] for i in range(days)}
    for o in outcomes:
        if not _is_deploy(o) or o.result not in ("succeeded", "rolled_back"):
            continue
        day = datetime.fromtimestamp(o.ended_at, zone).date()
        if day in per_day:
            per_day[day].append(o)
    return [
        Day(
            day,
            len(found),
            _median(s for o in found if (s := o.lead_seconds) is not None),
        )
        for day, found in per_day.items()
    ]


def report(
    outcomes: Sequence[Outcome],
    pending: Sequence[PlanRecord],
    trusts: Mapping[str, float],
    trusts_before: Mapping[str, float] | None,
    now: datetime,
    since: datetime,
    constitution: Constitution,
    *,
    window_days: int = WINDOW_DAYS,
    slot: datetime | None = None,
    truncated: bool = False,
) -> DigestReport:
    """Every figure of the digest at ``now``. ``outcomes`` must cover the window and
    ``since`` (extra ones are ignored; one that ended at ``since`` was in the last digest);
    ``pending`` are plan records, of which those still
    pending count; ``trusts_before`` are the scores at the last digest (None: none yet)."""
    rules = constitution.digest
    zone = _zone(rules.timezone)
    local_now = now.astimezone(zone)
    at = now.timestamp()
    start = at - window_days * 86_400
    window = [o for o in outcomes if start <= o.ended_at <= at]

    waiting = sorted(
        (_waiting(r, at) for r in pending if r.status == PlanStatus.PENDING),
        key=lambda w: (-w.age_seconds, w.plan_id),
    )
    expiring = sorted(
        (w for w in waiting if w.expires_in_seconds <= EXPIRING_SECONDS),
        key=lambda w: (w.expires_in_seconds, w.plan_id),
    )
    ended = sorted(
        (o for o in outcomes if since.timestamp() < o.ended_at <= at),
        key=lambda o: (-o.ended_at, o.plan_id),
    )
    dora = dora_of(window, window_days)
    try:
        upcoming = next_slot(rules.schedule, rules.timezone, now) if rules.channel else None
    except ScheduleError:
        upcoming = None
    return DigestReport(
        now=local_now,
        since=since.astimezone(zone),
        timezone=rules.timezone,
        window_days=window_days,
        waiting=waiting,
        expiring=expiring,
        ended=ended,
        ended_counts=dict(Counter(o.result for o in ended)),
        health=health_of(window),
        dora=dora,
        targets=targets_of(window, dora),
        trust=trust_moves(
            trusts,
            trusts_before,
            constitution.trust.initial,
            constitution.trust.minimum_for_autonomous,
        ),
        days=days_of(window, local_now, window_days),
        slot=slot.astimezone(zone) if slot is not None else None,
        next_at=upcoming,
        truncated=truncated,
    )
