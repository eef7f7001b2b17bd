"""`/sophie status [plan]`, `/sophie pending` and `/sophie trust`: ephemeral answers.

Privacy as on the App Home tab (handlers/home.py): a plan is shown only in the channel
it came from, or to its requester and the people who decided on it; never a plan of
another workspace. Trust shows the asker's own scores and those of repo@environments.
"""

from __future__ import annotations

from typing import Any

from handlers import home
from handlers.text import escape, truncate
from roles import approvals, memory
from roles.records import Actor, PlanRecord, PlanStatus
from roles.sophie import Sophie

# Newest plans looked at (the store lists them newest first).
WINDOW = 200
SHOWN = 10


def command(text: str) -> tuple[str, str] | None:
    """("status"|"pending"|"trust", argument) for one of these commands, else None."""
    words = text.strip().split()
    if not words or words[0].lower() not in ("status", "pending", "trust"):
        return None
    if words[0].lower() != "status" and len(words) > 1:
        return None  # "trust the new cache …" is a directive, not a query
    return words[0].lower(), (words[1] if len(words) > 1 else "")


def may_see(record: PlanRecord, actor: Actor, channel: str) -> bool:
    if not approvals.same_workspace(record.plan, actor):
        return False
    if record.plan.requester.user_id == actor.user_id:
        return True
    if any(d.actor.user_id == actor.user_id for d in record.decisions):
        return True
    return not home.is_direct(record) and record.thread.channel == channel


def _line(record: PlanRecord) -> str:
    plan, run = record.plan, record.run
    line = (
        f"`{plan.id}` *{record.status.value}* · {escape(plan.target.repo, 100)} → "
        f"{escape(plan.target.environment, 40)} · {escape(plan.interpretation.summary, 200)}"
    )
    needed = (
        approvals.still_needed(plan, record.decisions)
        if record.status == PlanStatus.PENDING
        else []
    )
    if needed:
        line += f"\n  waiting for: {escape(', '.join(needed), 200)}"
    if run is not None:
        if run.html_url:
            line += f" · <{run.html_url}|run>"
        if run.staging_url:
            line += f" · <{run.staging_url}|{escape(plan.target.environment, 40)}>"
    return line


def _reply(text: str, lines: list[str]) -> dict[str, Any]:
    body = truncate(text + ("\n" + "\n".join(lines) if lines else ""), 3000)
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body}}],
        "response_type": "ephemeral",
    }


async def answer(sophie: Sophie, verb: str, arg: str, actor: Actor, channel: str) -> dict[str, Any]:
    if verb == "trust":
        return await _trust(sophie, actor)
    if verb == "status" and arg:
        record = await sophie.store.load(arg) if arg.startswith("plan_") else None
        if record is None or not may_see(record, actor, channel):
            return _reply(f"I have no plan `{escape(arg, 60)}` that you can see here.", [])
        return _reply("*Status*", [_line(record)])
    records = await sophie.store.recent(WINDOW)
    if verb == "status":
        mine = [r for r in records if may_see(r, actor, channel)][:SHOWN]
        if not mine:
            return _reply("No plans here yet.", [])
        return _reply("*Recent plans*", [_line(r) for r in mine])
    constitution = sophie.constitution()
    groups = await sophie.directory.groups_of(actor.user_id, list(constitution.approvers.groups))
    viewer = home.Viewer(actor, frozenset(groups))
    waiting = [r for r in records if approvals.same_workspace(r.plan, actor)]
    waiting = [r for r in waiting if home.waiting_on(r, viewer, constitution)][:SHOWN]
    if not waiting:
        return _reply("Nothing is waiting on you.", [])
    return _reply(f"*Waiting on you* ({len(waiting)})", [_line(r) for r in waiting])


async def _trust(sophie: Sophie, actor: Actor) -> dict[str, Any]:
    constitution = sophie.constitution()
    floor = constitution.trust.minimum_for_autonomous
    scores = await sophie.store.trusts()
    who = f"{actor.team_id}/{actor.user_id}"
    own = {
        "you as requester": scores.get(memory.requester_key(who), constitution.trust.initial),
        "you as approver": scores.get(memory.approver_key(who), constitution.trust.initial),
    }
    lines = [f"• {name}: {value:.2f}" for name, value in own.items()]
    for repo in constitution.repos:
        for env in repo.environments:
            value = scores.get(memory.trust_key(repo.name, env), constitution.trust.initial)
            mark = "" if value >= floor else " (below the autonomy floor)"
            lines.append(f"• `{escape(repo.name, 100)}` → {escape(env, 40)}: {value:.2f}{mark}")
    head = f"*Trust* (autonomy needs {floor:.2f}; scores move with outcomes)"
    return _reply(head, lines[:40])
