"""The SOPHIE loop, in one place.

    directive → Φ interpret → Σ propose → Δ evaluate → Ω card
              → Ω decisions (signed) → Σ dispatch → track → Ψ remember → thread

Each public method is one step that a Slack listener or a background job
calls; state lives in the store, so any replica can pick up any step.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from roles import (
    anchor,
    diff_engine,
    integrator,
    memory,
    navigator,
    offline_planner,
    plan_diff,
)
from roles.attestation import decision_statement, sign_statement
from roles.constitution import Constitution
from roles.offline_planner import OfflinePlanner
from roles.plan import ApprovalLevel, Intent, Plan
from roles.ports import (
    CardContext,
    CIGateway,
    CIRateLimited,
    CIUncertain,
    Directory,
    Notifier,
    Planner,
    PlanningFailed,
    PlanStore,
    Scheduler,
    Signer,
)
from roles.records import (
    Actor,
    Decision,
    DecisionRecord,
    Directive,
    PlanRecord,
    PlanStatus,
    RunInfo,
)

log = logging.getLogger("sophie.executor")

EVENT_TTL_SECONDS = 24 * 3600
MAX_DISPATCH_ATTEMPTS = 3
MAX_DECIDE_ATTEMPTS = 5
REMINDER_LEAD_SECONDS = 3600
BOT_TEAM = "sophie"


@dataclass(frozen=True)
class Reply:
    """What the person who clicked is told (ephemerally)."""

    ok: bool
    text: str


@dataclass(frozen=True)
class Tuning:
    poll_seconds: float = 10.0
    max_polls: int = 720
    # GitHub lists a dispatched run within seconds: after this long unseen, it never started.
    dispatch_settle_seconds: float = 45.0
    dispatch_recheck_seconds: float = 10.0
    # Slack allows about one chat.update per second per message; stay under it.
    status_edit_seconds: float = 1.5
    # How long one job may hold a plan's dispatch: the job timeout, so that when the
    # queue runs a dead worker's job again (timeout + 10 s later) the lease is gone.
    dispatch_lease_seconds: float = 120.0
    # Where a workflow fetches plan + envelopes too large for dispatch inputs.
    bundle_url: Callable[[str], str] | None = None


class Sophie:
    def __init__(
        self,
        *,
        constitution: Callable[[], Constitution],
        planner: Planner,
        store: PlanStore,
        signer: Signer,
        ci: CIGateway,
        notifier: Notifier,
        scheduler: Scheduler,
        directory: Directory,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tuning: Tuning = Tuning(),
    ) -> None:
        self.constitution = constitution
        self.planner = planner
        self.store = store
        self.signer = signer
        self.ci = ci
        self.notifier = notifier
        self.scheduler = scheduler
        self.directory = directory
        self.clock = clock
        self.tuning = tuning
        self._last_edit: dict[str, float] = {}

    # -- directive in ------------------------------------------------------

    async def receive(self, directive: Directive) -> bool:
        """Accept a directive once per Slack event; the planning runs as a job."""
        if not await self.store.claim_event(f"event:{directive.event_id}", EVENT_TTL_SECONDS):
            log.info("duplicate event %s ignored", directive.event_id)
            return False
        await self.scheduler.enqueue(
            "plan", f"plan:{directive.event_id}", {"directive": _directive_payload(directive)}
        )
        return True

    async def plan(
        self, directive: Directive, previous: PlanRecord | None = None, feedback: str = ""
    ) -> PlanRecord | None:
        """Φ Σ Δ: interpret, propose, evaluate; then post the card.

        With ``previous`` and ``feedback`` this is a revision after "request changes".
        """
        constitution = self.constitution()
        if previous is not None:
            reading = navigator.revise(previous.plan.directive, feedback, constitution)
        else:
            reading = navigator.interpret(directive.text, constitution)
        if not directive.thread.thread_ts:
            thread = await self.notifier.open_thread(
                directive.thread.channel, directive.requester.user_id, reading.text
            )
            directive = replace(directive, thread=thread)
        if not reading.text:
            await self.notifier.post_text(directive.thread, "That directive is empty.")
            return None
        precedent = await self.store.precedent(reading.repo.name, reading.intent.value, 3)
        rollback_to: tuple[str, str] | None = None
        if reading.intent == Intent.ROLLBACK:
            rollback_to = await self._rollback_target(reading, directive)
            if rollback_to is None and not self.ci.dry_run:
                await self.notifier.post_text(
                    directive.thread,
                    f"There is no earlier successful deployment of {reading.repo.name} to "
                    f"{reading.environment} to roll back to. Nothing will run.",
                )
                return None
        try:
            # Rollbacks are planned offline: deterministic, instant, no model in the way.
            planner = OfflinePlanner() if reading.intent == Intent.ROLLBACK else self.planner
            proposal = await planner.propose(reading, constitution, precedent)
        except PlanningFailed as exc:
            log.warning("planning failed for %s: %s", directive.event_id, exc)
            await self.notifier.post_text(
                directive.thread, f"I could not produce a valid plan: {exc}. Nothing will run."
            )
            return None
        if rollback_to is not None:
            proposal = replace(
                proposal, draft=offline_planner.pin_rollback(proposal.draft, *rollback_to)
            )
        verdict = diff_engine.evaluate(
            proposal.draft, reading, constitution, proposal.confidence, proposal.disagreements
        )
        plan_id = integrator.plan_id_for(directive.event_id)
        existing = await self.store.load(plan_id)
        if existing is not None:
            # A retried job: the plan exists; make sure its card was posted, nothing more.
            if existing.card_ts is None:
                existing.card_ts = await self.notifier.post_card(
                    existing, await self._card_context(existing)
                )
                await self.store.set_card(plan_id, existing.card_ts)
            return existing
        plan = integrator.assemble(
            plan_id,
            self.clock().replace(microsecond=0),
            reading,
            directive.requester,
            proposal,
            verdict,
            constitution,
        )
        if previous is not None:
            plan = Plan.model_validate(
                {
                    **plan.document(),
                    "directive": previous.plan.directive,
                    "revision": previous.plan.revision + 1,
                    "revises": previous.plan.id,
                    "changes_requested": feedback[:4000] or None,
                }
            )
        status = PlanStatus.PENDING if verdict.allowed else PlanStatus.BLOCKED
        record = PlanRecord(plan=plan, status=status, thread=directive.thread)
        await self.store.save_new(record)
        record.card_ts = await self.notifier.post_card(record, await self._card_context(record))
        await self.store.set_card(plan.id, record.card_ts)
        log.info("plan %s for %s: %s", plan.id, directive.event_id, status.value)
        if status == PlanStatus.PENDING:
            await self._schedule_expiry(plan)
            await self._start_approval(record, constitution)
        return record

    async def _rollback_target(
        self, reading: navigator.Reading, directive: Directive
    ) -> tuple[str, str] | None:
        key = f"{reading.repo.name}:{reading.environment}"
        if directive.rollback_from:
            prepared = await self.store.prepared_rollback(key)
            if prepared is not None and prepared[0] == directive.rollback_from:
                return prepared[1], prepared[2]  # computed when that run finished
        try:
            return await self.ci.rollback_target(
                reading.repo.name, reading.environment, directive.rollback_from or None
            )
        except Exception:
            log.exception("could not read the deployment history of %s", key)
            return None

    async def start_rollback(self, plan_id: str, actor: Actor) -> Reply:
        """The Rollback button: a rollback plan for the same repo and environment."""
        record = await self.store.load(plan_id)
        if record is None:
            return Reply(False, "I have no record of that plan.")
        target = record.plan.target
        directive = Directive(
            text=f"Roll back {target.repo} in {target.environment} "
            "to the last known good deployment",
            requester=actor,
            thread=record.thread,
            source="button",
            event_id=f"rollback:{plan_id}",
            rollback_from=(record.run.head_sha if record.run else "") or "",
        )
        if not await self.receive(directive):
            return Reply(False, "A rollback of this run was already requested.")
        return Reply(True, f"Preparing the rollback of {target.environment}…")

    async def _prepare_rollback(self, record: PlanRecord) -> None:
        """After a deployment, find what it would roll back to, so the button is instant."""
        run = record.run
        if run is None or run.dry_run or not run.head_sha:
            return
        target = record.plan.target
        try:
            found = await self.ci.rollback_target(target.repo, target.environment, run.head_sha)
        except Exception:
            log.exception("could not prepare a rollback for %s", record.plan.id)
            return
        if found is not None:
            await self.store.set_prepared_rollback(
                f"{target.repo}:{target.environment}", run.head_sha, *found
            )

    async def _card_context(self, record: PlanRecord) -> CardContext:
        plan = record.plan
        changes = None
        if plan.revises:
            previous = await self.store.load(plan.revises)
            if previous is not None:
                changes = plan_diff.diff(previous.plan, plan)
        window_ends = None
        if plan.approval.level == ApprovalLevel.NOTIFICATION:
            env = self.constitution().environments.get(plan.target.environment)
            if env is not None:
                window_ends = plan.created_at.timestamp() + env.veto_window_seconds
        return CardContext(changes=changes, window_ends=window_ends)

    async def _schedule_expiry(self, plan: Plan) -> None:
        ttl = plan.approval.ttl_seconds
        await self.scheduler.enqueue("expire", f"expire:{plan.id}", {"plan_id": plan.id}, ttl)
        lead = min(REMINDER_LEAD_SECONDS, ttl // 10)
        if plan.approval.level.rank >= ApprovalLevel.APPROVAL.rank and lead >= 60:
            await self.scheduler.enqueue(
                "remind", f"remind:{plan.id}", {"plan_id": plan.id}, ttl - lead
            )

    async def expire(self, plan_id: str) -> None:
        """The approval time-to-live has passed: a pending plan can no longer run."""
        record = await self.store.load(plan_id)
        if record is None or record.status != PlanStatus.PENDING:
            return
        if not anchor.expired(record.plan, self.clock()):
            return  # the job ran early (clock skew); the next click re-checks anyway
        hours = record.plan.approval.ttl_seconds / 3600
        note = f"approval time-to-live ({hours:g} h) passed; approvals given are void"
        if await self.store.transition(plan_id, {PlanStatus.PENDING}, PlanStatus.EXPIRED, note):
            await self.notifier.post_text(
                record.thread, f"Plan {plan_id} expired: {note}. Ask again for a fresh plan."
            )
            await self.refresh_card(plan_id)

    async def remind(self, plan_id: str) -> None:
        record = await self.store.load(plan_id)
        if record is None or record.status != PlanStatus.PENDING:
            return
        ends = record.plan.created_at + timedelta(seconds=record.plan.approval.ttl_seconds)
        minutes = max(1, int((ends - self.clock()).total_seconds() // 60))
        needed = anchor.still_needed(record) or ["a decision"]
        await self.notifier.post_text(
            record.thread,
            f"Plan {plan_id} expires in {minutes} min and still needs {', '.join(needed)}.",
        )

    # -- request changes -------------------------------------------------------

    async def request_changes(
        self, plan_id: str, digest_prefix: str, actor: Actor, feedback: str
    ) -> Reply:
        """Void the plan (and every approval of it) and have Σ revise it with the feedback."""
        feedback = feedback.strip()
        if not feedback:
            return Reply(False, "Say what should change.")
        record = await self.store.load(plan_id)
        if record is None:
            return Reply(False, "I have no record of that plan.")
        if not record.plan.digest.startswith(digest_prefix):
            return Reply(False, "This card is out of date: the plan changed since it was posted.")
        if record.status != PlanStatus.PENDING:
            return Reply(False, f"This plan is already {record.status.value}.")
        constitution = self.constitution()
        if actor.user_id != record.plan.requester.user_id:
            groups = await self.directory.groups_of(
                actor.user_id, list(constitution.approvers.groups)
            )
            why = anchor.refusal(constitution, record, actor, groups, "veto")
            if why:
                await self._refused(plan_id, actor, "request_changes", why)
                return Reply(False, f"You can't request changes to this plan: {why}.")
        note = f"changes requested by {actor.user_id}: {feedback[:300]}"
        if not await self.store.transition(
            plan_id, {PlanStatus.PENDING}, PlanStatus.SUPERSEDED, note
        ):
            return Reply(False, "This plan was decided in the meantime.")
        await self.store.audit(
            "plan.changes_requested", plan_id, actor.user_id, {"feedback": feedback[:2000]}
        )
        await self.refresh_card(plan_id)
        await self.scheduler.enqueue(
            "revise",
            f"revise:{plan_id}",
            {"plan_id": plan_id, "feedback": feedback[:2000], "user_id": actor.user_id},
        )
        return Reply(True, "Changes requested: earlier approvals are void; revising the plan.")

    async def revise(self, plan_id: str, feedback: str) -> PlanRecord | None:
        previous = await self.store.load(plan_id)
        if previous is None or previous.status != PlanStatus.SUPERSEDED:
            return None
        requester = previous.plan.requester
        directive = Directive(
            text=previous.plan.directive,
            requester=Actor(requester.team_id, requester.user_id, requester.name),
            thread=previous.thread,
            source="mention",
            event_id=f"revise:{plan_id}",
        )
        return await self.plan(directive, previous=previous, feedback=feedback)

    async def _start_approval(self, record: PlanRecord, constitution: Constitution) -> None:
        level = record.plan.approval.level
        if level == ApprovalLevel.AUTONOMOUS:
            await self._bot_decides(
                record, constitution, f"environments.{record.plan.target.environment}"
            )
        elif level == ApprovalLevel.NOTIFICATION:
            window = constitution.environment(record.plan.target.environment).veto_window_seconds
            await self.scheduler.enqueue(
                "veto_window", f"window:{record.plan.id}", {"plan_id": record.plan.id}, window
            )

    async def veto_window_closed(self, plan_id: str) -> None:
        record = await self.store.load(plan_id)
        if record is None or record.status != PlanStatus.PENDING:
            return
        await self._bot_decides(record, self.constitution(), "veto-window-elapsed")

    async def _bot_decides(self, record: PlanRecord, constitution: Constitution, rule: str) -> None:
        bot = Actor(team_id=BOT_TEAM, user_id=f"sophie:{self.signer.keyid}", name="SOPHIE")
        decision = self._signed(record.plan, constitution, bot, "approve", rule)
        completes = self._completes(record, decision, constitution)
        result = await self.store.decide(
            record.plan.id, record.plan.digest, decision, len(record.decisions), completes
        )
        if result.accepted and completes:
            await self._refresh_card(record.plan.id)
            await self._approved(record.plan.id)

    # -- Ω decisions ---------------------------------------------------------

    def _signed(
        self,
        plan: Plan,
        constitution: Constitution,
        actor: Actor,
        decision: Decision,
        rule: str = "",
        groups: tuple[str, ...] = (),
        reason: str = "",
    ) -> DecisionRecord:
        now = self.clock()
        statement = decision_statement(
            plan,
            actor,
            decision,
            now,
            timedelta(seconds=plan.approval.ttl_seconds),
            constitution.digest_hex,
            rule,
            groups,
        )
        return DecisionRecord(
            actor=actor,
            decision=decision,
            at=now,
            groups=groups,
            reason=reason,
            envelope=sign_statement(statement, self.signer),
        )

    async def _refused(self, plan_id: str, actor: Actor, what: str, why: str) -> None:
        log.info("refused %s on %s by %s: %s", what, plan_id, actor.user_id, why)
        await self.store.audit(
            "decision.refused", plan_id, actor.user_id, {"decision": what, "reason": why}
        )

    async def decide(
        self,
        plan_id: str,
        digest_prefix: str,
        actor: Actor,
        decision: Decision,
        reason: str = "",
        check_only: bool = False,
    ) -> Reply:
        """An approver clicked Approve or Veto on a card showing digest ``digest_prefix``.

        ``check_only`` answers whether they may, without deciding (before a veto modal).
        """
        # Optimistic concurrency: judge on what we loaded; if another decision landed
        # in between, the store says "conflict" and we judge again on fresh state.
        for _ in range(MAX_DECIDE_ATTEMPTS):
            record = await self.store.load(plan_id)
            if record is None:
                return Reply(False, "I have no record of that plan.")
            reply, outcome = await self._decide_once(
                record, digest_prefix, actor, decision, reason, check_only
            )
            if outcome != "conflict":
                return reply
        return Reply(False, "Too many decisions at once on this plan; please try again.")

    async def _decide_once(
        self,
        record: PlanRecord,
        digest_prefix: str,
        actor: Actor,
        decision: Decision,
        reason: str,
        check_only: bool,
    ) -> tuple[Reply, str]:
        plan = record.plan
        plan_id = plan.id
        if not plan.digest.startswith(digest_prefix):
            return Reply(
                False, "This card is out of date: the plan changed since it was posted."
            ), ""
        if record.status != PlanStatus.PENDING:
            if any(d.actor.user_id == actor.user_id for d in record.decisions):
                return Reply(False, "You have already decided on this plan."), ""
            return Reply(False, f"This plan is already {record.status.value}."), ""
        constitution = self.constitution()
        now = self.clock()
        if anchor.expired(plan, now):
            if await self.store.transition(
                plan_id, {PlanStatus.PENDING}, PlanStatus.EXPIRED, "approval time-to-live passed"
            ):
                await self._refresh_card(plan_id)
            return Reply(False, "This plan has expired; ask again for a fresh plan."), ""
        if plan.constitution.digest != constitution.digest_hex:
            if await self.store.transition(
                plan_id, {PlanStatus.PENDING}, PlanStatus.STALE, "the constitution changed"
            ):
                await self._refresh_card(plan_id)
            text = "The constitution changed since this plan was made; it is stale."
            return Reply(False, text), ""
        candidates = list(
            dict.fromkeys([*constitution.approvers.groups, *plan.approval.distinct_groups])
        )
        groups = await self.directory.groups_of(actor.user_id, candidates)
        why = anchor.refusal(constitution, record, actor, groups, decision)
        if why:
            await self._refused(plan_id, actor, decision, why)
            return Reply(False, f"You can't {decision} this plan: {why}."), ""
        if check_only:
            return Reply(True, ""), ""
        signed = self._signed(
            plan, constitution, actor, decision, groups=tuple(sorted(groups)), reason=reason
        )
        completes = decision == "approve" and self._completes(record, signed, constitution)
        result = await self.store.decide(
            plan_id, plan.digest, signed, len(record.decisions), completes
        )
        if not result.accepted:
            if result.reason == "conflict":
                return Reply(False, ""), "conflict"
            return Reply(False, result.reason or f"This plan is already {result.status.value}."), ""
        await self._refresh_card(plan_id)
        if decision == "veto":
            return Reply(True, "Vetoed. Nothing will run."), ""
        if completes:
            await self._approved(plan_id)
            return Reply(True, "Approved and signed."), ""
        return Reply(True, "Approval recorded and signed; more approvals are needed."), ""

    def _completes(
        self, record: PlanRecord, signed: DecisionRecord, constitution: Constitution
    ) -> bool:
        """Would this decision, added to those already given, make the plan runnable?"""
        after = replace(record, decisions=[*record.decisions, signed])
        return anchor.check_quorum(after, constitution, self.signer, self.clock()) is None

    async def _approved(self, plan_id: str) -> None:
        await self.scheduler.enqueue("dispatch", f"dispatch:{plan_id}", {"plan_id": plan_id})

    async def _refresh_card(self, plan_id: str) -> None:
        await self.scheduler.enqueue(
            "card", f"card:{plan_id}:{self.clock().timestamp()}", {"plan_id": plan_id}
        )

    async def refresh_card(self, plan_id: str) -> None:
        record = await self.store.load(plan_id)
        if record is not None and record.card_ts:
            await self.notifier.update_card(record, await self._card_context(record))

    # -- Σ execution ---------------------------------------------------------

    async def dispatch(self, plan_id: str) -> None:
        """Dispatch an approved plan exactly once, even across retries and crashes.

        Only the holder of the plan's dispatch lease talks to GitHub, so no other job
        can act while a dispatch call is in flight. A marker (correlation id, "unknown"
        outcome) is saved before GitHub is called; a job that finds the plan already
        dispatching looks for the run by that id before it would ever dispatch again.
        """
        owner = uuid.uuid4().hex
        if not await self.store.claim_dispatch(plan_id, owner, self.tuning.dispatch_lease_seconds):
            log.info("plan %s is being dispatched by another worker", plan_id)
            return
        try:
            await self._dispatch_held(plan_id)
        finally:
            await self.store.release_dispatch(plan_id, owner)

    async def _dispatch_held(self, plan_id: str) -> None:
        record = await self.store.load(plan_id)
        if record is None:
            return
        if record.status == PlanStatus.DISPATCHING:
            await self._resume_dispatch(record)
            return
        if record.status == PlanStatus.RUNNING and record.run is not None:
            # A re-run of a dispatch job whose worker died after the run started: make
            # sure tracking goes on. The key follows the stored poll count, so a chain
            # that is still alive merges with this one instead of doubling.
            await self._again("track", plan_id, str(record.run.polls), 0)
            return
        if not await self.store.transition(plan_id, {PlanStatus.APPROVED}, PlanStatus.DISPATCHING):
            log.info("plan %s not dispatched: it is %s", plan_id, record.status.value)
            return
        record.status = PlanStatus.DISPATCHING
        why = anchor.check_quorum(record, self.constitution(), self.signer, self.clock())
        if why:
            await self.store.transition(plan_id, {PlanStatus.DISPATCHING}, PlanStatus.STALE, why)
            await self.notifier.post_text(record.thread, f"Not dispatched: {why}.")
            await self.refresh_card(plan_id)
            return
        await self._dispatch_once(record, attempt=1)

    async def _dispatch_once(self, record: PlanRecord, attempt: int) -> None:
        plan_id = record.plan.id
        marker = RunInfo(
            dry_run=self.ci.dry_run,
            status="queued",
            correlation_id=f"{plan_id}.{attempt}",
            dispatched_at=self.clock().timestamp(),
            attempts=attempt,
            dispatch_state="unknown",
        )
        await self.store.save_run(plan_id, marker)
        envelopes = [d.envelope for d in record.approvals]
        bundle_url = self.tuning.bundle_url(plan_id) if self.tuning.bundle_url else None
        try:
            inputs = integrator.workflow_inputs(
                record.plan, envelopes, bundle_url, marker.correlation_id
            )
            run = await self.ci.dispatch(record.plan, inputs, marker.correlation_id)
        except CIRateLimited as exc:
            marker.dispatch_state = "not_sent"
            marker.detail = str(exc)
            await self.store.save_run(plan_id, marker)
            await self.notifier.post_text(
                record.thread,
                f"GitHub's {exc.kind} rate limit delays plan {plan_id}: "
                f"dispatching in {exc.retry_after:.0f} s.",
            )
            await self._again("dispatch", plan_id, f"rl{attempt}", exc.retry_after)
            return
        except CIUncertain as exc:
            marker.detail = str(exc)[:300]
            await self.store.save_run(plan_id, marker)
            await self.notifier.post_text(
                record.thread,
                f"GitHub did not confirm the dispatch of {plan_id} ({str(exc)[:200]}); "
                "checking whether the run started before trying again.",
            )
            await self._again(
                "dispatch", plan_id, f"check{attempt}", self.tuning.dispatch_recheck_seconds
            )
            return
        except Exception as exc:  # refused (4xx, bad inputs): the thread must hear why
            log.exception("dispatch of %s failed", plan_id)
            await self.store.transition(
                plan_id, {PlanStatus.DISPATCHING}, PlanStatus.ERROR, str(exc)[:300]
            )
            await self.notifier.post_text(record.thread, f"Dispatch failed: {str(exc)[:300]}")
            await self.refresh_card(plan_id)
            return
        await self._running(record, marker, run)

    async def _running(self, record: PlanRecord, marker: RunInfo, run: RunInfo) -> None:
        plan_id = record.plan.id
        run.correlation_id = marker.correlation_id
        run.dispatched_at = marker.dispatched_at
        run.attempts = marker.attempts
        run.dispatch_state = ""
        await self.store.save_run(plan_id, run)
        await self.store.audit(
            "plan.dispatched",
            plan_id,
            "sophie",
            {"run_id": run.run_id, "correlation_id": run.correlation_id, "dry_run": run.dry_run},
        )
        record.run = run
        record.status = PlanStatus.RUNNING
        run.message_ts = await self.notifier.post_run_status(record)
        run.shown = run.signature()
        await self.store.save_run(plan_id, run)
        await self.store.transition(plan_id, {PlanStatus.DISPATCHING}, PlanStatus.RUNNING)
        await self.refresh_card(plan_id)
        await self._again("track", plan_id, "0", 0 if run.dry_run else self.tuning.poll_seconds)

    async def _resume_dispatch(self, record: PlanRecord) -> None:
        plan_id = record.plan.id
        marker = record.run
        if marker is None:  # stopped before the marker was saved: nothing was sent
            await self._dispatch_once(record, attempt=1)
            return
        if marker.dispatch_state == "":  # accepted and saved; only the status move was lost
            await self.store.transition(plan_id, {PlanStatus.DISPATCHING}, PlanStatus.RUNNING)
            await self._again("track", plan_id, "resume", 0)
            return
        if marker.dispatch_state == "not_sent":
            await self._dispatch_once(record, attempt=marker.attempts + 1)
            return
        found = await self.ci.find_run(record.plan, marker.correlation_id)
        if found is not None:
            log.info("found the run of %s by correlation id; not dispatching again", plan_id)
            await self._running(record, marker, found)
            return
        waited = self.clock().timestamp() - marker.dispatched_at
        if waited < self.tuning.dispatch_settle_seconds:
            await self._again(
                "dispatch", plan_id, f"look{waited:.1f}", self.tuning.dispatch_recheck_seconds
            )
        elif marker.attempts < MAX_DISPATCH_ATTEMPTS:
            # GitHub lists a dispatched run within seconds; after this long it never started.
            await self._dispatch_once(record, attempt=marker.attempts + 1)
        else:
            note = f"GitHub did not start the workflow after {marker.attempts} attempts"
            await self.store.transition(plan_id, {PlanStatus.DISPATCHING}, PlanStatus.ERROR, note)
            await self.notifier.post_text(record.thread, f"Dispatch failed: {note}.")
            await self.refresh_card(plan_id)

    async def _again(self, job: str, plan_id: str, tag: str, delay: float) -> None:
        await self.scheduler.enqueue(job, f"{job}:{plan_id}:{tag}", {"plan_id": plan_id}, delay)

    async def track(self, plan_id: str, reschedule: bool = True) -> bool:
        """One look at the run; schedules the next unless it has finished. True when done.

        Webhook-triggered looks pass ``reschedule=False``: the polling chain is already
        scheduled, and a second chain per delivery would multiply the polling.
        """
        record = await self.store.load(plan_id)
        if record is None or record.run is None or record.status != PlanStatus.RUNNING:
            return True
        previous = record.run
        try:
            if previous.run_id is None and not previous.dry_run:
                # GHES gave no run details: find the run by the correlation id first.
                found = await self.ci.find_run(record.plan, previous.correlation_id)
                run = await self.ci.refresh(record.plan, found) if found else previous
            else:
                run = await self.ci.refresh(record.plan, previous)
        except CIRateLimited as exc:
            if "rate limit" not in previous.detail:
                await self.notifier.post_text(
                    record.thread,
                    f"GitHub's {exc.kind} rate limit delays tracking of {plan_id}; "
                    f"next look in {exc.retry_after:.0f} s.",
                )
            previous.detail = str(exc)
            await self.store.save_run(plan_id, previous)
            if reschedule:
                await self._again("track", plan_id, f"rl{previous.polls}", exc.retry_after)
            return False
        except Exception:
            log.exception("could not refresh run of %s; will retry", plan_id)
            run = replace(previous)
        for kept in ("message_ts", "correlation_id", "dispatched_at", "attempts", "shown"):
            setattr(run, kept, getattr(previous, kept))
        run.polls = previous.polls + 1
        record.run = run
        if run.signature() != run.shown and (run.status == "completed" or self._may_edit(previous)):
            await self.notifier.post_run_status(record)
            run.shown = run.signature()
        await self.store.save_run(plan_id, run)
        if run.status != "completed":
            if run.polls >= self.tuning.max_polls:
                await self._finish(record, PlanStatus.FAILED, "gave up tracking the run")
                return True
            if reschedule:
                await self._again("track", plan_id, str(run.polls), self.tuning.poll_seconds)
            return False
        await self._finish(record, PlanStatus.SUCCEEDED if run.succeeded else PlanStatus.FAILED)
        return True

    def _may_edit(self, previous: RunInfo) -> bool:
        """Slack allows about one update per second per message; stay well under it."""
        now = self.clock().timestamp()
        last = self._last_edit.get(previous.message_ts or "", 0.0)
        if now - last < self.tuning.status_edit_seconds:
            return False
        self._last_edit[previous.message_ts or ""] = now
        return True

    async def run_event(self, run_id: int) -> None:
        """A webhook said something happened to this run: look now, not at the next poll."""
        plan_id = await self.store.plan_for_run(run_id)
        if plan_id is not None:
            await self.track(plan_id, reschedule=False)

    async def _finish(self, record: PlanRecord, status: PlanStatus, note: str = "") -> None:
        plan_id = record.plan.id
        if not await self.store.transition(plan_id, {PlanStatus.RUNNING}, status, note):
            return
        record.status = status
        constitution = self.constitution()
        # Ψ: remember the outcome and move trust, except for dry runs which prove nothing.
        await self.store.remember(record.plan, status)
        assert record.run is not None
        if not record.run.dry_run:
            key = memory.trust_key(record.plan.target.repo, record.plan.target.environment)
            current = await self.store.trust(key, constitution.trust.initial)
            await self.store.set_trust(
                key, memory.next_trust(current, status == PlanStatus.SUCCEEDED, constitution.trust)
            )
        if integrator.workflow_action(record.plan) == "deploy":
            await self._prepare_rollback(record)
        await self.notifier.post_result(record)
        await self.refresh_card(plan_id)


def _directive_payload(d: Directive) -> dict[str, str]:
    return {
        "text": d.text,
        "team_id": d.requester.team_id,
        "user_id": d.requester.user_id,
        "user_name": d.requester.name,
        "channel": d.thread.channel,
        "thread_ts": d.thread.thread_ts,
        "source": d.source,
        "event_id": d.event_id,
        "rollback_from": d.rollback_from,
    }


def directive_from_payload(p: dict[str, str]) -> Directive:
    from roles.records import Thread

    return Directive(
        text=p["text"],
        requester=Actor(team_id=p["team_id"], user_id=p["user_id"], name=p["user_name"]),
        thread=Thread(channel=p["channel"], thread_ts=p["thread_ts"]),
        source=p["source"],  # type: ignore[arg-type]
        event_id=p["event_id"],
        rollback_from=p.get("rollback_from", ""),
    )


__all__ = ["Reply", "RunInfo", "Sophie", "Tuning", "directive_from_payload"]
