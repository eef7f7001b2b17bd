"""Block Kit builders: pure functions from records to blocks (tests call them directly)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from handlers.text import escape, truncate, user
from roles import approvals, what_runs
from roles.approvals import still_needed
from roles.plan import ApprovalLevel, Plan, RiskLevel
from roles.plan_diff import PlanDiff
from roles.precedent import Precedent
from roles.records import DecisionRecord, PlanRecord, PlanStatus, ProducedChange

Block = dict[str, Any]

APPROVE = "sophie_approve"
VETO = "sophie_veto"
VIEW_PLAN = "sophie_view_plan"
REQUEST_CHANGES = "sophie_request_changes"
ROLLBACK = "sophie_rollback"
APPROVE_CHANGE = "sophie_approve_change"  # the second card: approve a checked diff
VETO_MODAL = "sophie_veto_modal"
CHANGES_MODAL = "sophie_changes_modal"
REASON_INPUT = ("reason", "reason_input")  # block_id, action_id of the modal's text input

_RISK_EMOJI = {"low": "🟢", "medium": "🟡", "high": "🟠", "critical": "🔴"}
_STATUS_LINE = {
    PlanStatus.APPROVED: "✅ Approved — dispatching",
    PlanStatus.DISPATCHING: "✅ Approved — dispatching",
    PlanStatus.RUNNING: "🚀 Approved — running",
    PlanStatus.SUCCEEDED: "🎉 Approved — succeeded",
    PlanStatus.FAILED: "❌ Approved — the run failed",
    PlanStatus.REVIEW: "🔎 Approved — the change waits for review before it deploys",
    PlanStatus.VETOED: "⛔ Vetoed",
    PlanStatus.EXPIRED: "⌛ Expired",
    PlanStatus.STALE: "♻️ Stale",
    PlanStatus.SUPERSEDED: "✏️ Changes requested — superseded by a revised plan",
    PlanStatus.BLOCKED: "🚫 Blocked by the constitution",
    PlanStatus.ERROR: "⚠️ Error",
}


def _text(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text, 3000)}


def _section(text: str) -> Block:
    return {"type": "section", "text": _text(text)}


def _context(*texts: str) -> Block:
    return {"type": "context", "elements": [_text(truncate(t, 2000)) for t in texts[:10]]}


def button_value(plan: Plan) -> str:
    """Binds a click to the exact plan on the card: its id and its full digest."""
    return f"{plan.id}|{plan.digest}"


def parse_button_value(value: str) -> tuple[str, str]:
    plan_id, _, digest = value.partition("|")
    return plan_id, digest


def approval_text(plan: Plan) -> str:
    level = plan.approval.level
    if level == ApprovalLevel.SUPERVISION:
        return f"supervision: {plan.approval.quorum} distinct approvers"
    if level == ApprovalLevel.APPROVAL:
        return "approval: one authorised approver"
    if level == ApprovalLevel.NOTIFICATION:
        return "notification: runs unless vetoed"
    return "autonomous: runs at once"


_EFFECT = {
    "implemented": "written by the implementer on `sophie/{id}`",
    "performed": "run by the pipeline",
    "descriptive": "describes only: nothing runs it",
}


def _steps(plan: Plan) -> str:
    """Each step says what happens to it, so approvers know what actually runs."""
    lines = [
        f"{i}. `{s.action.value}` {escape(s.description, 200)} "
        f"_({_EFFECT[what_runs.step_effect(plan.target, s.action)].format(id=plan.id)})_"
        for i, s in enumerate(plan.steps, 1)
    ]
    return truncate("*Steps*\n" + "\n".join(lines), 3000)


def _risk(plan: Plan) -> str:
    risk = plan.risk
    factors = "\n".join(f"• {escape(f.message, 200)} (`{f.id}`)" for f in risk.factors) or "• none"
    mitigations = "\n".join(f"• {escape(m, 200)}" for m in risk.mitigations)
    text = f"*Risk* {_RISK_EMOJI[risk.level.value]} {risk.level.value} (score {risk.score:.2f})\n"
    text += factors
    if mitigations:
        text += "\n*Mitigations*\n" + mitigations
    return truncate(text, 3000)


def _rules(plan: Plan) -> str:
    hits = [*plan.approval.reasons, *plan.warnings]
    lines = [f"`{escape(h.id, 80)}` {escape(h.message, 200)}" for h in hits]
    return truncate("*Rules that fired*\n" + "\n".join(lines), 3000)


def card(
    record: PlanRecord,
    changes: PlanDiff | None = None,
    window_ends: float | None = None,
    waiting: str | None = None,
    precedent: Precedent | None = None,
) -> list[Block]:
    """The plan card: what will happen, how risky, who must approve, and the buttons.

    ``changes`` is the diff against the plan this one revises; ``window_ends`` the
    epoch second a notification-level plan runs unless vetoed.
    """
    plan = record.plan
    target = plan.target
    if plan.interpretation.intent.value == "rollback":
        planner = "rollback rule (rollbacks are planned without a model)"
    elif plan.provenance.planner == "offline":
        planner = "offline planner"
    else:
        planner = "LLM: " + ", ".join(escape(m, 60) for m in plan.provenance.models)
    if plan.provenance.agreement is not None:
        planner += f" (agreement {plan.provenance.agreement:.0%})"
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": _title(plan)}},
        _section(
            f"*Directive* from {user(plan.requester.user_id)}\n>{escape(plan.directive, 900)}"
        ),
        _section(
            f"*What SOPHIE understood* ({plan.interpretation.intent.value})\n"
            + escape(plan.interpretation.summary, 1500)
        ),
        {
            "type": "section",
            "fields": [
                _text(f"*Target*\n`{target.repo}`@`{escape(target.ref, 100)}`"),
                _text(f"*Environment*\n{target.environment}"),
                _text(f"*Runs*\n{what_runs_text(plan)}"),
                _text(f"*Confidence*\n{plan.confidence:.0%}"),
                _text(f"*Approval needed*\n{approval_text(plan)}"),
                _text(f"*Artifacts*\n{', '.join(plan.artifacts) or 'none'}"),
            ],
        },
        *_assumption_blocks(plan),
        *_implement_blocks(plan),
        _section(_steps(plan)),
        _section(_risk(plan)),
        _section(
            f"*Rollback* ({plan.rollback.strategy})\n{escape(plan.rollback.description, 500)}"
        ),
        _section(_rules(plan)),
        *_precedent_blocks(precedent),
    ]
    if plan.provenance.disagreements:
        blocks.append(
            _section(
                ":warning: *The models disagree* on "
                + ", ".join(escape(d, 100) for d in plan.provenance.disagreements)
                + ": the approval requirement was raised."
            )
        )
    if plan.revises:
        blocks[1:1] = _revision_blocks(plan, changes)
    blocks += _state_blocks(record, window_ends)
    if waiting and record.status == PlanStatus.APPROVED:
        blocks.append(_context(f"⏳ {escape(waiting, 500)}"))
    blocks.append(
        _context(
            f"Planned by the {planner}",
            f"digest `{plan.digest[:16]}` · constitution v{plan.constitution.version}",
        )
    )
    return blocks


_RESULT_WORDS = {
    "succeeded": "succeeded",
    "failed": "failed",
    "rolled_back": "rolled back",
    "vetoed": "vetoed",
    "expired": "expired",
    "stale": "went stale",
    "error": "errored",
}


def _precedent_blocks(precedent: Precedent | None) -> list[Block]:
    """Ψ: "3 similar changes to acme/auth-service in staging: 2 succeeded, 1 rolled back"."""
    if precedent is None or not precedent.similar:
        return []
    n = len(precedent.similar)
    counts = ", ".join(
        f"{count} {_RESULT_WORDS.get(result, result)}"
        for result, count in sorted(precedent.counts().items(), key=lambda kv: -kv[1])
    )
    head = (
        f"*Before this* — {n} similar change{'s' if n != 1 else ''} to "
        f"`{escape(precedent.repo, 100)}` in {escape(precedent.environment, 40)}: {counts}"
    )
    lines = [
        f"• {_link(o.run_url, o.plan_id) if o.run_url else f'`{o.plan_id}`'} "
        f"{_RESULT_WORDS.get(o.result, o.result)}: {escape(o.summary, 150)}"
        for o in precedent.similar
    ]
    return [_section(truncate(head + "\n" + "\n".join(lines), 3000))]


def what_runs_text(plan: Plan) -> str:
    """What the workflow is told to do: the kernel's answer, never a model's."""
    t = plan.target
    ref = escape(t.ref, 100)
    if t.action == "rollback":
        return f"`{t.workflow}` · rollback to `{t.sha[:12]}`"
    then = "build its artifacts" if t.action == "build" else "deploy it"
    if t.implement:
        return (
            f"`{t.workflow}` · implement on `sophie/{plan.id}` from `{ref}`, "
            f"check the change, {then}"
        )
    if t.action == "build":
        return f"`{t.workflow}` · build `{ref}` as it is (artifacts only)"
    return f"`{t.workflow}` · deploy `{ref}` as it is (its head when the run starts)"


def _implement_blocks(plan: Plan) -> list[Block]:
    """A plan whose change steps will not be written must say so where approvers look."""
    why = next((w.message for w in plan.warnings if w.id == "implement.unavailable"), "")
    return [_section(f":warning: {escape(why, 600)}")] if why else []


def _assumption_blocks(plan: Plan) -> list[Block]:
    assumed = plan.interpretation.assumptions
    if not assumed:
        return []
    lines = "\n".join(f"• {escape(a, 300)}" for a in assumed[:5])
    return [_section(f":grey_question: *Assumed* (say so if this is wrong)\n{lines}")]


def _state_blocks(record: PlanRecord, window_ends: float | None = None) -> list[Block]:
    plan = record.plan
    if record.status != PlanStatus.PENDING:
        return [_section(_final_line(record))]
    blocks: list[Block] = []
    if plan.approval.quorum > 1 or record.approvals:
        given = ", ".join(user(d.actor.user_id) for d in record.approvals) or "none yet"
        needed = still_needed(record.plan, record.decisions)
        line = f"Approvals {len(record.approvals)}/{plan.approval.quorum}: {given}"
        if needed:
            line += " · still needed: " + ", ".join(needed)
        blocks.append(_context(line))
    if plan.approval.level == ApprovalLevel.NOTIFICATION and window_ends is not None:
        blocks.append(
            _context(
                f"⏱ Runs <!date^{int(window_ends)}^{{time}}|when the veto window ends> "
                "unless someone vetoes it"
            )
        )
    if plan.approval.level == ApprovalLevel.AUTONOMOUS:
        # It runs at once by the constitution's rule: a Veto button could not stop it.
        return [*blocks, _context("Runs at once: the constitution needs no approval here.")]
    buttons: list[Block] = []
    if plan.approval.level not in (ApprovalLevel.AUTONOMOUS, ApprovalLevel.NOTIFICATION):
        approve = _button(APPROVE, "Approve", plan, "primary")
        if plan.risk.level.rank >= RiskLevel.HIGH.rank:
            # A deliberate second tap for risky plans (mobile fat-finger protection).
            approve["confirm"] = {
                "title": {"type": "plain_text", "text": "Approve a risky plan?"},
                "text": {
                    "type": "mrkdwn",
                    "text": f"Risk is *{plan.risk.level.value}* for "
                    f"`{plan.target.repo}` → *{plan.target.environment}*. "
                    "Your approval will be signed with your Slack identity.",
                },
                "confirm": {"type": "plain_text", "text": "Approve and sign"},
                "deny": {"type": "plain_text", "text": "Cancel"},
                "style": "danger",
            }
        buttons.append(approve)
    buttons.append(_button(VETO, "Veto", plan, "danger"))
    buttons.append(_button(REQUEST_CHANGES, "Request changes", plan))
    buttons.append(_button(VIEW_PLAN, "View plan YAML", plan))
    blocks.append({"type": "actions", "block_id": "decision", "elements": buttons})
    return blocks


def _button(action_id: str, label: str, plan: Plan, style: str | None = None) -> Block:
    button: Block = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label},
        "value": button_value(plan),
    }
    if style:
        button["style"] = style
    return button


_CHANGES_BY = re.compile(r"^changes requested by ([UW][A-Z0-9]{2,20}): ?(.*)$", re.S)


def _final_line(record: PlanRecord) -> str:
    """The card's last line: what became of the plan, and who did it (the vetoer, the
    person who asked for changes), then who approved it where it was approved."""
    line = _STATUS_LINE.get(record.status, record.status.value)
    if record.status == PlanStatus.SUCCEEDED and record.run is not None and record.run.dry_run:
        line = "🧪 Approved — dry run: nothing was deployed"
    who = ""
    note = record.note
    if record.veto is not None:
        reason = f": {escape(record.veto.reason, 300)}" if record.veto.reason else ""
        who = f" by {user(record.veto.actor.user_id)}{reason}"
    elif record.status == PlanStatus.SUPERSEDED:
        asked = _CHANGES_BY.match(note)
        if asked:
            who = f" by {user(asked.group(1))}"
            note = asked.group(2).strip()
    text = f"*{line}*{who}"
    approved = [
        user(d.actor.user_id) + (" (the constitution's rule)" if d.actor.is_bot else "")
        for d in record.approvals
    ]
    if approved and record.status not in (PlanStatus.BLOCKED, PlanStatus.SUPERSEDED):
        text += "\nApproved by " + ", ".join(approved)
    if note:
        text += f"\n_{escape(note, 500)}_"
    return text


def card_fallback(record: PlanRecord) -> str:
    """Notification text for the card (shown where blocks are not)."""
    plan = record.plan
    return truncate(
        f"Plan {plan.id} for {plan.target.repo} → {plan.target.environment}: "
        f"{record.status.value}, risk {plan.risk.level.value}",
        300,
    )


def run_status(record: PlanRecord) -> tuple[str, list[Block]]:
    """The one status message that is edited in place as the run moves."""
    run = record.run
    assert run is not None
    plan = record.plan
    if run.dry_run:
        text = (
            f"🧪 *Dry run* — no workflow was dispatched for `{plan.id}`.\n"
            f"{escape(run.detail, 1000)}"
        )
        return "Dry run: nothing was dispatched", [_section(text)]
    link = f"<{run.html_url}|run {run.run_id}>" if run.html_url else f"run {run.run_id}"
    if run.phase == "implement":
        link += " (implementing the change)"
    elif run.change is not None:
        link += f" (deploying `{run.change.commit[:12]}`)"
    if run.status == "queued":
        line = f"⏳ Workflow {link} is queued"
    elif run.status == "in_progress":
        line = f"⚙️ Workflow {link} is running"
        if run.current_job:
            line += f": *{escape(run.current_job, 100)}*"
            if run.current_step:
                line += f" › {escape(run.current_step, 100)}"
    else:
        line = f"🏁 Workflow {link} completed: *{escape(run.conclusion or 'unknown', 40)}*"
    fallback = f"Workflow run {run.run_id}: {run.conclusion or run.status}"
    return fallback, [_section(line)]


def result(record: PlanRecord) -> tuple[str, list[Block]]:
    """The final message: the vision's result shape, with the real links."""
    run = record.run
    assert run is not None
    plan = record.plan
    if run.dry_run:
        text = (
            f"*Dry run complete* for `{plan.id}`: the plan was approved and signed, "
            "but nothing ran because GITHUB_TOKEN is not set."
        )
        return "Dry run complete", [_section(text)]
    if run.phase == "implement":
        return _implement_result(record)
    ok = run.succeeded
    status = "completed" if ok else "failed"
    lines = [f"{'✅' if ok else '❌'} *{status}* · plan `{plan.id}`"]
    if not ok and run.failing_job:
        # A failure leads with where it failed; the rest follows.
        where = escape(run.failing_job, 100)
        if run.failing_step:
            where += f" › {escape(run.failing_step, 100)}"
        log = f" — {_link(run.log_url, 'log')}" if run.log_url else ""
        lines.append(f"*Failed at:* {where}{log}")
    if not ok and run.detail:
        lines.append(f"*Why:* {escape(run.detail, 500)}")
    lines += [
        # The URL the deployment reported for this plan's environment (one per environment).
        f"*{escape(plan.target.environment.capitalize(), 40)} URL:* "
        f"{_link(run.staging_url) if run.staging_url else 'none reported'}",
        f"*Dashboard:* {_link(run.html_url) if run.html_url else 'n/a'}",
    ]
    if run.artifacts:
        lines.append(
            "*Artifacts:*\n"
            + "\n".join(f"• {_link(a.url, escape(a.name, 100))}" for a in run.artifacts[:20])
        )
    else:
        lines.append("*Artifacts:* none")
    if run.release_assets:
        lines.append(
            "*Release assets:*\n"
            + "\n".join(f"• {_link(a.url, escape(a.name, 100))}" for a in run.release_assets[:20])
        )
    if run.images:
        lines.append("*Images:* " + ", ".join(f"`{escape(i, 200)}`" for i in run.images[:10]))
    if run.change is not None:
        lines.append(f"*Change:* {_change_line(run.change)}")
    elif run.head_sha and plan.target.action != "rollback":
        ref = escape(plan.target.ref, 100)
        lines.append(f"*Commit:* `{ref}@{run.head_sha[:12]}`, as it is (no change was made)")
    if run.rollback_to and rollback_offered(record):
        lines.append(f"*Rollback would deploy:* `{escape(run.rollback_to, 120)}`")
    fallback = f"Plan {plan.id} {status}"
    if run.staging_url and ok:
        fallback += f": {run.staging_url}"
    body: list[Block] = [_section(truncate("\n".join(lines), 3000))]
    if rollback_offered(record):
        label = "Roll back" if ok else "Roll back to last good"
        body.append(
            {
                "type": "actions",
                "block_id": "rollback",
                "elements": [
                    {
                        "type": "button",
                        "action_id": ROLLBACK,
                        "text": {"type": "plain_text", "text": label},
                        # Bound like the card's buttons; the handler also checks the thread.
                        "value": button_value(plan),
                        **({} if ok else {"style": "danger"}),
                        # A rollback deploys: one deliberate second tap, saying what.
                        "confirm": {
                            "title": {"type": "plain_text", "text": "Roll back?"},
                            "text": {
                                "type": "mrkdwn",
                                "text": truncate(
                                    f"Roll `{escape(plan.target.repo, 100)}` in "
                                    f"*{escape(plan.target.environment, 40)}* back to "
                                    + (
                                        f"`{escape(run.rollback_to, 120)}`"
                                        if run.rollback_to
                                        else "the last known good deployment"
                                    )
                                    + ". It is planned, checked and signed like any plan.",
                                    300,
                                ),
                            },
                            "confirm": {"type": "plain_text", "text": "Plan the rollback"},
                            "deny": {"type": "plain_text", "text": "Cancel"},
                        },
                    }
                ],
            }
        )
    return fallback, body


def _change_line(change: ProducedChange) -> str:
    pr = _link(change.pull_request, "pull request") if change.pull_request else "no pull request"
    return (
        f"{pr} · `{change.commit[:12]}` on `{escape(change.branch, 120)}` · "
        f"{change.files} file{'s' if change.files != 1 else ''} +{change.additions} "
        f"−{change.deletions}"
    )


def change(record: PlanRecord) -> tuple[str, list[Block]]:
    """The produced change and Δ's verdict on it, before anything built from it deploys."""
    run = record.run
    assert run is not None and run.change is not None
    c = run.change
    if c.tests_passed is None:
        tests = "not reported"
    else:
        tests = f"{'passed' if c.tests_passed else 'FAILED'}: {escape(c.tests_summary, 200)}"
        if c.tests_command:
            tests += f" (`{escape(c.tests_command, 120)}`)"
    files = "\n".join(
        f"• `{escape(path, 120)}` +{plus} −{minus}" for path, plus, minus in c.file_list[:15]
    )
    if len(c.file_list) > 15:
        files += f"\n• … and {len(c.file_list) - 15} more"
    if c.verdict == "checked":
        head = f"🔎 *The change was checked* for `{record.plan.id}`: it stays within the plan."
        fallback = f"The change of {record.plan.id} was checked"
    else:
        head = f"⛔ *The change was refused* for `{record.plan.id}`: {escape(c.reason, 900)}"
        fallback = f"The change of {record.plan.id} was refused: nothing deploys"
    body = [
        _section(truncate(head, 3000)),
        _section(truncate(f"*Change:* {_change_line(c)}\n*Tests:* {tests}", 3000)),
    ]
    if files:
        body.append(_section(truncate(files, 3000)))
    if c.verdict != "checked":
        body.append(_context("Nothing built from this commit deploys."))
    return fallback, body


def change_card(record: PlanRecord, decisions: Sequence[DecisionRecord]) -> tuple[str, list[Block]]:
    """The second card: the checked diff, to be approved before it deploys where the
    environment deploys only reviewed code. Its button carries the change's digest."""
    run = record.run
    assert run is not None and run.change is not None
    c, plan = run.change, record.plan
    env = escape(plan.target.environment, 40)
    who = [d.actor.user_id for d in decisions if d.decision == "approve"]
    still = approvals.needed_for_change(plan, {d.actor.user_id: d.groups for d in decisions})
    lines = [
        f"*Change:* {_change_line(c)}",
        f"*Diff digest:* `sha256:{c.change_digest[:16]}…` · checked and signed",
        f"*Approval needed:* {approval_text(plan)} (the plan's level)",
    ]
    if who:
        lines.append("*Approved by:* " + ", ".join(user(u) for u in who))
    header = {
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(f"Review the change: {_title(plan)}", 150)},
    }
    body: list[Block] = [
        header,
        _section(
            f"{env.capitalize()} deploys only reviewed code. Read the pull request, then "
            f"approve *this diff* to deploy commit `{c.commit[:12]}` to {env}; or merge it "
            "and ask again to deploy the default branch."
        ),
        _section(truncate("\n".join(lines), 3000)),
    ]
    if record.status == PlanStatus.REVIEW and still:
        body.append(_context("Still needed: " + escape(", ".join(still), 300)))
        body.append(
            {
                "type": "actions",
                "block_id": "review",
                "elements": [
                    {
                        "type": "button",
                        "action_id": APPROVE_CHANGE,
                        "style": "primary",
                        "text": {"type": "plain_text", "text": "Approve this change"},
                        "value": f"{plan.id}|{c.change_digest}",
                    }
                ],
            }
        )
    elif record.status != PlanStatus.REVIEW:
        body.append(_context(f"Reviewed: the plan is {record.status.value}."))
    return f"Review the change of {plan.id} before it deploys to {env}", body


def _implement_result(record: PlanRecord) -> tuple[str, list[Block]]:
    """How an implement run ended when nothing was deployed after it."""
    run = record.run
    assert run is not None
    plan = record.plan
    log = f" — {_link(run.log_url, 'log')}" if run.log_url else ""
    dashboard = _link(run.html_url, "run") if run.html_url else "the run"
    if not run.succeeded:
        why = escape(run.detail or record.note or "the implement job failed", 900)
        text = f"❌ *Implementing the change failed* · plan `{plan.id}`: {why}{log}"
        return f"Plan {plan.id}: implementing the change failed", [
            _section(truncate(f"{text}\nNothing was deployed. See {dashboard}.", 3000))
        ]
    c = run.change
    why = escape(record.note or "the change was not deployed", 900)
    lines = [f"⏸️ *Not deployed* · plan `{plan.id}`: {why}"]
    if c is not None:
        lines.append(f"*Change:* {_change_line(c)}")
    return f"Plan {plan.id}: not deployed", [_section(truncate("\n".join(lines), 3000))]


def rollback_offered(record: PlanRecord) -> bool:
    """Deployments can be rolled back (rollbacks themselves are undone by a new deploy)."""
    if record.run is not None and record.run.phase == "implement":
        return False  # the change was not deployed: there is nothing to roll back
    actions = {s.action.value for s in record.plan.steps}
    return "deploy" in actions and "rollback" not in actions


def _link(url: str | None, label: str | None = None) -> str:
    if not url:
        return label or ""
    safe = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{label}>" if label else f"<{safe}>"


def plan_modal(plan: Plan) -> dict[str, Any]:
    """A modal with the full plan YAML, split into code blocks under Slack's limits."""
    text = plan.to_yaml()
    chunk = 2900
    # Whole lines per code block: a value (the digest, a long description) is never cut
    # across two blocks; a single line longer than a block is cut at the limit.
    pieces: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > chunk:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:chunk])
            line = line[chunk:]
        if len(current) + len(line) > chunk:
            pieces.append(current)
            current = ""
        current += line
    if current:
        pieces.append(current)
    blocks: list[Block] = [
        _context(f"digest sha256 `{plan.digest}`"),
    ]
    for piece in pieces[:95]:
        safe = piece.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        blocks.append(_section("```" + safe.replace("```", "ʼʼʼ") + "```"))
    if len(pieces) > 95:
        blocks.append(_context("… truncated; the full plan is in the workflow inputs."))
    return {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Plan YAML"},
        "close": {"type": "plain_text", "text": "Close"},
        "blocks": blocks,
    }


_VERB = {"deploy": "Deploy", "build": "Build", "rollback": "Roll back"}


def _title(plan: Plan) -> str:
    """What the decision is about, in words: "Deploy acme/auth-service → staging"."""
    t = plan.target
    verb = "Change and deploy" if t.implement and t.action == "deploy" else _VERB[t.action]
    title = f"{verb} {t.repo} → {t.environment}"
    if t.environment in ("production", "prod"):
        title = "🔴 " + title  # production is unmistakable
    if plan.revision > 1:
        title += f" · revision {plan.revision}"
    return truncate(title, 150)


def _revision_blocks(plan: Plan, changes: PlanDiff | None) -> list[Block]:
    asked = escape(plan.changes_requested or "", 600)
    lines = [f"*Revision {plan.revision}* of `{plan.revises}` — changes requested:\n>{asked}"]
    if changes is not None:
        lines.append(diff_text(changes))
    return [_section(truncate("\n".join(lines), 3000))]


def diff_text(changes: PlanDiff) -> str:
    """What changed against the previous version, for people reviewing the revision."""
    if changes.empty:
        return "_No change to steps, risk or approval._"
    out = ["*What changed*"]
    out += [f"➕ `{s.action.value}` {escape(s.description, 200)}" for s in changes.added[:10]]
    out += [f"➖ `{s.action.value}` {escape(s.description, 200)}" for s in changes.removed[:10]]
    out += [
        f"✏️ `{after.action.value}` {escape(after.description, 200)}"
        for _, after in changes.changed[:10]
    ]
    if changes.target:
        out.append(f"🎯 Target: {changes.target[0]} → {changes.target[1]}")
    if changes.risk:
        out.append(f"⚠️ Risk: {changes.risk[0]} → {changes.risk[1]}")
    if changes.approval:
        out.append(f"🛡 Approval: {changes.approval[0]} → {changes.approval[1]}")
    if changes.artifacts_added or changes.artifacts_removed:
        out.append(
            "📦 Artifacts: "
            + " ".join(
                [
                    *(f"+{a}" for a in changes.artifacts_added),
                    *(f"−{a}" for a in changes.artifacts_removed),
                ]
            )
        )
    out.append("_Approvals given to the previous version do not carry over._")
    return "\n".join(out)


def reason_modal(callback_id: str, plan: Plan, *, title: str, label: str, submit: str) -> Block:
    """A modal asking for a reason (veto) or feedback (request changes)."""
    block_id, action_id = REASON_INPUT
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": button_value(plan),
        "title": {"type": "plain_text", "text": title},
        "submit": {"type": "plain_text", "text": submit},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _section(
                f"`{plan.id}` · {escape(plan.interpretation.summary, 500)}\n"
                f"{plan.target.repo} → *{plan.target.environment}*"
            ),
            {
                "type": "input",
                "block_id": block_id,
                "label": {"type": "plain_text", "text": label},
                "element": {
                    "type": "plain_text_input",
                    "action_id": action_id,
                    "multiline": True,
                    "min_length": 3,
                    "max_length": 2000,
                },
            },
        ],
    }


def veto_modal(plan: Plan) -> Block:
    return reason_modal(
        VETO_MODAL, plan, title="Veto plan", label="Why are you vetoing it?", submit="Veto"
    )


def changes_modal(plan: Plan) -> Block:
    return reason_modal(
        CHANGES_MODAL,
        plan,
        title="Request changes",
        label="What should change?",
        submit="Revise plan",
    )


def plan_gone(plan_id: str) -> tuple[str, list[Block]]:
    """What a card becomes when its plan no longer exists: the fact, no buttons."""
    text = f"Plan {plan_id} no longer exists: nothing will run. Ask again for a fresh plan."
    return text, [
        _section(f":wastebasket: *Plan `{escape(plan_id, 80)}` no longer exists*"),
        _context(
            "Its record is gone, so it cannot be approved or run. Ask again for a fresh plan."
        ),
    ]
