"""Block Kit builders: pure functions from records to blocks (tests call them directly)."""

from __future__ import annotations

from typing import Any

from handlers.text import escape, truncate, user
from roles.plan import ApprovalLevel, Plan
from roles.records import PlanRecord, PlanStatus

Block = dict[str, Any]

APPROVE = "sophie_approve"
VETO = "sophie_veto"
VIEW_PLAN = "sophie_view_plan"

_RISK_EMOJI = {"low": "🟢", "medium": "🟡", "high": "🟠", "critical": "🔴"}
_STATUS_LINE = {
    PlanStatus.APPROVED: "✅ Approved — dispatching",
    PlanStatus.DISPATCHING: "✅ Approved — dispatching",
    PlanStatus.RUNNING: "🚀 Approved — running",
    PlanStatus.SUCCEEDED: "🎉 Approved — succeeded",
    PlanStatus.FAILED: "❌ Approved — the run failed",
    PlanStatus.VETOED: "⛔ Vetoed",
    PlanStatus.EXPIRED: "⌛ Expired",
    PlanStatus.STALE: "♻️ Stale",
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
    """Binds a click to the exact plan on the card (id and digest prefix)."""
    return f"{plan.id}|{plan.digest[:16]}"


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


def _steps(plan: Plan) -> str:
    lines = [
        f"{i}. `{s.action.value}` {escape(s.description, 240)}" for i, s in enumerate(plan.steps, 1)
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


def card(record: PlanRecord) -> list[Block]:
    """The plan card: what will happen, how risky, who must approve, and the buttons."""
    plan = record.plan
    target = plan.target
    planner = (
        "offline planner (no LLM configured)"
        if plan.provenance.planner == "offline"
        else "LLM: " + ", ".join(escape(m, 60) for m in plan.provenance.models)
    )
    if plan.provenance.agreement is not None:
        planner += f" (agreement {plan.provenance.agreement:.0%})"
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Σ Plan {plan.id}"}},
        _section(
            f"*Directive* from {user(plan.requester.user_id)}\n>{escape(plan.directive, 900)}"
        ),
        _section(
            f"*Φ Interpretation* ({plan.interpretation.intent.value})\n"
            + escape(plan.interpretation.summary, 1500)
        ),
        {
            "type": "section",
            "fields": [
                _text(f"*Target*\n`{target.repo}`@`{escape(target.ref, 100)}`"),
                _text(f"*Environment*\n{target.environment}"),
                _text(f"*Workflow*\n`{target.workflow}`"),
                _text(f"*Confidence*\n{plan.confidence:.0%}"),
                _text(f"*Approval needed*\n{approval_text(plan)}"),
                _text(f"*Artifacts*\n{', '.join(plan.artifacts) or 'none'}"),
            ],
        },
        _section(_steps(plan)),
        _section(_risk(plan)),
        _section(
            f"*Rollback* ({plan.rollback.strategy})\n{escape(plan.rollback.description, 500)}"
        ),
        _section(_rules(plan)),
    ]
    if plan.provenance.disagreements:
        blocks.append(
            _section(
                ":warning: *The models disagree* on "
                + ", ".join(escape(d, 100) for d in plan.provenance.disagreements)
                + ": the approval requirement was raised."
            )
        )
    blocks += _state_blocks(record)
    blocks.append(
        _context(
            f"Planned by the {planner}",
            f"digest `{plan.digest[:16]}` · constitution v{plan.constitution.version}",
        )
    )
    return blocks


def _state_blocks(record: PlanRecord) -> list[Block]:
    plan = record.plan
    if record.status != PlanStatus.PENDING:
        return [_section(_final_line(record))]
    blocks: list[Block] = []
    if plan.approval.quorum > 1 or record.approvals:
        given = ", ".join(user(d.actor.user_id) for d in record.approvals) or "none yet"
        blocks.append(
            _context(f"Approvals {len(record.approvals)}/{plan.approval.quorum}: {given}")
        )
    buttons: list[Block] = []
    if plan.approval.level != ApprovalLevel.AUTONOMOUS:
        buttons.append(_button(APPROVE, "Approve", plan, "primary"))
    buttons.append(_button(VETO, "Veto", plan, "danger"))
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


def _final_line(record: PlanRecord) -> str:
    line = _STATUS_LINE.get(record.status, record.status.value)
    who = ""
    if record.veto is not None:
        reason = f": {escape(record.veto.reason, 300)}" if record.veto.reason else ""
        who = f" by {user(record.veto.actor.user_id)}{reason}"
    elif record.approvals and record.status != PlanStatus.BLOCKED:
        who = " by " + ", ".join(user(d.actor.user_id) for d in record.approvals)
    note = f"\n_{escape(record.note, 500)}_" if record.note else ""
    return f"*{line}*{who}{note}"


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
    ok = run.succeeded
    status = "completed" if ok else "failed"
    lines = [
        f"{'✅' if ok else '❌'} *{status}* · plan `{plan.id}`",
        f"*Staging URL:* {_link(run.staging_url) if run.staging_url else 'none reported'}",
        f"*Dashboard:* {_link(run.html_url) if run.html_url else 'n/a'}",
    ]
    if run.artifacts:
        lines.append(
            "*Artifacts:*\n"
            + "\n".join(f"• {_link(a.url, escape(a.name, 100))}" for a in run.artifacts[:20])
        )
    else:
        lines.append("*Artifacts:* none")
    if not ok and run.failing_job:
        where = escape(run.failing_job, 100)
        if run.failing_step:
            where += f" › {escape(run.failing_step, 100)}"
        log = f" — {_link(run.log_url, 'log')}" if run.log_url else ""
        lines.append(f"*Failed at:* {where}{log}")
    fallback = f"Plan {plan.id} {status}"
    if run.staging_url and ok:
        fallback += f": {run.staging_url}"
    return fallback, [_section(truncate("\n".join(lines), 3000))]


def _link(url: str | None, label: str | None = None) -> str:
    if not url:
        return label or ""
    safe = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{label}>" if label else f"<{safe}>"


def plan_modal(plan: Plan) -> dict[str, Any]:
    """A modal with the full plan YAML, split into code blocks under Slack's limits."""
    text = plan.to_yaml()
    chunk = 2900
    pieces = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    blocks: list[Block] = [
        _context(f"digest sha256 `{plan.digest}`"),
    ]
    for piece in pieces[:95]:
        blocks.append(_section("```" + piece.replace("```", "ʼʼʼ") + "```"))
    if len(pieces) > 95:
        blocks.append(_context("… truncated; the full plan is in the workflow inputs."))
    return {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Plan YAML"},
        "close": {"type": "plain_text", "text": "Close"},
        "blocks": blocks,
    }


def home(records: list[PlanRecord]) -> dict[str, Any]:
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "SOPHIE"}},
        _section(
            "Mention me or use `/sophie <directive>` in a channel, e.g. "
            "_Add caching to the user authentication system and deploy to staging_."
        ),
        {"type": "divider"},
    ]
    if not records:
        blocks.append(_section("No plans yet."))
    for record in records[:20]:
        plan = record.plan
        blocks.append(
            _section(
                f"`{plan.id}` *{record.status.value}* · {plan.target.repo} → "
                f"{plan.target.environment} · risk {plan.risk.level.value}\n"
                f"{escape(plan.interpretation.summary, 300)}"
            )
        )
    return {"type": "home", "blocks": blocks}
