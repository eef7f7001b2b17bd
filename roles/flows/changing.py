"""Δ on what was produced: the implement run's commit is checked before anything built
from it deploys, and a passing change is signed and sent on to the run that deploys it."""

from __future__ import annotations

import logging
from dataclasses import replace

from roles import attestation, change_check
from roles.flows import reviewing
from roles.flows.context import Context, lease_owner
from roles.plan import RuleHit
from roles.ports import CIRateLimited
from roles.records import PlanRecord, PlanStatus, ProducedChange, RunInfo

log = logging.getLogger("sophie.changing")


def implementing(record: PlanRecord) -> bool:
    """The next run of this plan writes its change (it has none checked yet)."""
    if not record.plan.target.implement:
        return False
    change = record.run.change if record.run is not None else None
    return change is None or change.verdict != "checked"


async def change_problem(ctx: Context, record: PlanRecord) -> str | None:
    """Why a plan that implements may not deploy the change it carries, or None.

    The dispatch gate asks this with the approvals: the change statement must verify
    with SOPHIE's keys and bind this plan (digest, constitution) to the commit, and the
    environment's rule for generated changes must allow it.
    """
    if not record.plan.target.implement or implementing(record):
        return None
    assert record.run is not None and record.run.change is not None
    change = record.run.change
    constitution = ctx.constitution()
    try:
        opened = attestation.open_change_envelope(change.statement, ctx.signer)
    except attestation.EnvelopeError as exc:
        return f"the change statement does not verify: {exc}"
    why = attestation.change_binding_problem(
        opened.statement, record.plan, constitution.digest_hex, change.commit
    )
    if why:
        return why
    env_rule = constitution.environments[record.plan.target.environment]
    status = change_check.ChangeStatus(
        checked=True,
        on_default_branch=change.on_default_branch,
        diff_approved=await reviewing.diff_approved(ctx, record),
    )
    return change_check.deploy_allowed(env_rule, status)


async def implemented(ctx: Context, record: PlanRecord, run: RunInfo) -> bool:
    """The implement run succeeded: check its change, then deploy it or say why not.

    True when the plan has moved on (to its deploy, or to its end); False when the look
    must be repeated later (GitHub's rate limit). One job at a time, under a lease.
    """
    plan_id = record.plan.id
    lease, owner = f"change:{plan_id}", lease_owner()
    if not await ctx.store.claim_lease(lease, owner, ctx.tuning.dispatch_lease_seconds):
        return True  # another job is checking it
    try:
        fresh = await ctx.store.load(plan_id)
        if fresh is None or fresh.status != PlanStatus.RUNNING or fresh.run is None:
            return True
        if fresh.run.phase != "implement":
            return True  # already checked and sent on by an earlier try
        return await _check(ctx, fresh, run)
    finally:
        await ctx.store.release_lease(lease, owner)


async def _check(ctx: Context, record: PlanRecord, run: RunInfo) -> bool:
    from roles.flows import tracking  # tracking calls this module

    plan = record.plan
    report = run.change
    if run.dry_run:
        await tracking.finish(ctx, record, PlanStatus.SUCCEEDED, "dry run")
        return True
    if report is None:
        why = "the implement job reported no change (no sophie-change notice)"
        await tracking.finish(ctx, record, PlanStatus.FAILED, why)
        return True
    constitution = ctx.constitution()
    repo_rule = constitution.repo(plan.target.repo)
    env_rule = constitution.environments.get(plan.target.environment)
    if repo_rule is None or env_rule is None:
        why = f"{plan.target.repo} → {plan.target.environment} is no longer in the constitution"
        await tracking.finish(ctx, record, PlanStatus.FAILED, why)
        return True
    misreported = change_check.report_problem(plan.id, report.branch, report.base, run.head_sha)
    if misreported:
        await _refuse(ctx, record, run, report, misreported)
        return True
    try:
        # Δ reads the change from GitHub, never from the job's own account of it.
        change = await ctx.ci.compare(plan.target.repo, report.base, report.commit)
    except CIRateLimited:
        return False
    verdict = change_check.check_change(plan, repo_rule, env_rule, constitution, change)
    checked = replace(
        report,
        files=len(change.files),
        additions=change.additions,
        deletions=change.deletions,
        file_list=[(f.path, f.additions, f.deletions) for f in change.files][:100],
        change_digest=change.digest(),
    )
    if report.tests_passed is False:
        verdict = replace(
            verdict,
            denials=[
                *verdict.denials,
                RuleHit(
                    id="change.tests-failed",
                    message=f"the repo's tests failed ({report.tests_summary[:200]})",
                    effect="deny",
                ),
            ],
        )
    if not verdict.allowed:
        await _refuse(ctx, record, run, checked, verdict.reason)
        return True
    statement = attestation.change_statement(plan, change, constitution.digest_hex, ctx.clock())
    checked = replace(
        checked,
        verdict="checked",
        statement=attestation.sign_statement(statement, ctx.signer),
        on_default_branch=await ctx.ci.commit_on_default_branch(
            plan.target.repo, checked.commit, repo_rule.default_ref
        ),
    )
    await _save(ctx, record, run, checked)
    await ctx.store.audit(
        "change.checked",
        plan.id,
        "sophie",
        {"commit": checked.commit, "change_digest": checked.change_digest, **change.stat()},
    )
    await ctx.notifier.post_change(record)
    blocked = await change_problem(ctx, record)
    if blocked:
        # Only the environment's rule for generated changes can hold a change just signed:
        # the plan waits for review (the slot freed) and the second card asks for it.
        await tracking.finish(ctx, record, PlanStatus.REVIEW, blocked)
        await reviewing.ask(ctx, plan.id)
        return True
    # Back to approved: the dispatch job (gate, slot, marker) sends the deploy run.
    if await ctx.store.transition(plan.id, {PlanStatus.RUNNING}, PlanStatus.APPROVED):
        await ctx.again("dispatch", plan.id, f"change.{checked.commit[:12]}", 0)
    return True


async def _refuse(
    ctx: Context, record: PlanRecord, run: RunInfo, change: ProducedChange, reason: str
) -> None:
    """Every refusal alike: kept on the run, audited, shown in the thread, the plan ended."""
    from roles.flows import tracking

    refused = replace(change, verdict="refused", reason=reason)
    await _save(ctx, record, run, refused)
    await ctx.store.audit(
        "change.refused",
        record.plan.id,
        "sophie",
        {"commit": refused.commit, "reason": reason[:500]},
    )
    await ctx.notifier.post_change(record)
    await tracking.finish(ctx, record, PlanStatus.FAILED, f"the change was refused: {reason}")


async def _save(ctx: Context, record: PlanRecord, run: RunInfo, change: ProducedChange) -> None:
    run.change = change
    record.run = run
    await ctx.store.save_run(record.plan.id, run)
