"""Block Kit for the App Home tab: a pure function from what one viewer may see to a view.

What goes in (which plans, deploys, slots and scores) is decided in handlers/home.py;
this module only lays it out within Block Kit's limits (a Home view holds at most 100
blocks: https://docs.slack.dev/reference/views/home-tab-views) and escapes every text a
person wrote (handlers/text.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from handlers.blocks import approval_text, button_value
from handlers.text import escape, truncate, user
from roles.approvals import still_needed
from roles.headline import Headline
from roles.outcomes import Outcome
from roles.plan import ApprovalLevel, Plan
from roles.records import DeployLock, PlanRecord

Block = dict[str, Any]

# Home buttons have their own action ids: a click on them is bound to the viewer's own
# Home view (handlers/home.py), never to a card message (handlers/actions.py).
# Each button's action_id is "{id}.{plan_id}": action ids stay unique across the view.
HOME_APPROVE = "sophie_home_approve"
HOME_VIEW_PLAN = "sophie_home_view_plan"
HOME_APPROVE_ACTION = re.compile(r"^sophie_home_approve(\.plan_[a-z0-9]{8,40})?$")
HOME_VIEW_PLAN_ACTION = re.compile(r"^sophie_home_view_plan(\.plan_[a-z0-9]{8,40})?$")

MAX_BLOCKS = 100  # Slack's limit for a Home view
PER_SECTION = 10

HOME_NO_CHANNELS = (
    "_I could not read which channels you are in, so only plans waiting on you "
    "and your own requests are shown._"
)

_RISK = {"low": "🟢", "medium": "🟡", "high": "🟠", "critical": "🔴"}
_RESULT = {
    "succeeded": "✅ succeeded",
    "failed": "❌ failed",
    "rolled_back": "↩️ rolled back",
    "error": "⚠️ error",
}
_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,30}$")


@dataclass(frozen=True)
class DeployLine:
    """A recent deploy the viewer may see, and the conversation it was asked in."""

    outcome: Outcome
    channel: str


@dataclass(frozen=True)
class SlotLine:
    """A repo@environment that is locked or busy."""

    slot: str
    lock: DeployLock | None = None
    # The plan running there: its id when the viewer may see that plan, "" when they may
    # not (only that one runs), None when none runs.
    holder: str | None = None
    waiting: int = 0


@dataclass(frozen=True)
class TrustLine:
    kind: Literal["requester", "approver", "target"]
    name: str  # "" for the viewer's own scores; repo@environment for a target
    score: float
    kept: bool  # False: no outcome yet, the constitution's initial score


@dataclass
class HomePage:
    owner: str  # the view's private_metadata: team/user of the one it is published to
    waiting: list[PlanRecord] = field(default_factory=list)
    mine: list[PlanRecord] = field(default_factory=list)
    others: list[PlanRecord] = field(default_factory=list)
    headline: Headline | None = None
    deploys: list[DeployLine] = field(default_factory=list)
    slots: list[SlotLine] = field(default_factory=list)
    trust: list[TrustLine] = field(default_factory=list)
    floor: float = 0.8  # trust.minimum_for_autonomous
    note: str = ""  # ours (mrkdwn), e.g. HOME_NO_CHANNELS
    flash: str = ""  # what became of the viewer's last click here (plain text)


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text, 3000)}


def _section(text: str, accessory: Block | None = None) -> Block:
    block: Block = {"type": "section", "text": _mrkdwn(text)}
    if accessory is not None:
        block["accessory"] = accessory
    return block


def _context(*texts: str) -> Block:
    return {"type": "context", "elements": [_mrkdwn(truncate(t, 2000)) for t in texts[:10]]}


def _title(text: str) -> list[Block]:
    return [{"type": "divider"}, _section(f"*{text}*")]


def _button(action_id: str, label: str, plan: Plan, style: str | None = None) -> Block:
    button: Block = {
        "type": "button",
        "action_id": f"{action_id}.{plan.id}",
        "text": {"type": "plain_text", "text": label},
        "value": button_value(plan),  # "{plan_id}|{full digest}", as on the card
    }
    if style:
        button["style"] = style
    return button


def _link(url: str, label: str) -> str:
    if not url.startswith(("https://", "http://")):
        return ""
    safe = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{label}>"


def _where(channel: str) -> str:
    if _CHANNEL_ID.match(channel):
        return f"in <#{channel}>"
    return "in a direct message" if channel.startswith("D") else ""


def _when(epoch: float) -> str:
    if epoch <= 0:
        return ""
    fallback = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(epoch)}^{{date_short_pretty}} {{time}}|{fallback}>"


def duration(seconds: float) -> str:
    """45 s, 4 min, 2 h 5 min, 3 d 4 h."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def _target(repo: str, environment: str) -> str:
    return f"`{escape(repo, 200)}` → *{escape(environment, 60)}*"


def _plan_line(record: PlanRecord) -> str:
    plan = record.plan
    risk = plan.risk.level.value
    target = _target(plan.target.repo, plan.target.environment)
    return (
        f"`{plan.id}` *{record.status.value}* · {target}"
        f" · risk {_RISK.get(risk, '')} {risk}\n{escape(plan.interpretation.summary, 300)}"
    )


def _waiting(record: PlanRecord) -> list[Block]:
    plan = record.plan
    needs = still_needed(plan, record.decisions)
    details = [f"from {user(plan.requester.user_id)} {_where(record.thread.channel)}".strip()]
    details.append(approval_text(plan))
    if needs:
        details.append("still needs " + ", ".join(needs))
    text = _plan_line(record) + "\n" + " · ".join(details)
    if plan.approval.level not in (ApprovalLevel.APPROVAL, ApprovalLevel.SUPERVISION):
        # Nothing to approve (it runs unless vetoed): a veto asks for a reason on the card.
        text += "\n_Veto it on its card if it should not run._"
        return [_section(text, _button(HOME_VIEW_PLAN, "View plan", plan))]
    approve = _button(HOME_APPROVE, "Approve", plan, "primary")
    # Away from the card and its thread, every approval asks once more, naming the target.
    approve["confirm"] = {
        "title": {"type": "plain_text", "text": "Approve this plan?"},
        "text": _mrkdwn(
            f"`{plan.id}`: {_target(plan.target.repo, plan.target.environment)}, "
            f"risk *{plan.risk.level.value}*. Your approval is signed with your Slack "
            "identity, as on the card."
        ),
        "confirm": {"type": "plain_text", "text": "Approve and sign"},
        "deny": {"type": "plain_text", "text": "Cancel"},
    }
    buttons = [approve, _button(HOME_VIEW_PLAN, "View plan", plan)]
    return [_section(text), {"type": "actions", "elements": buttons}]


def _deploy(line: DeployLine) -> Block:
    o = line.outcome
    result = _RESULT.get(o.result, escape(o.result, 30))
    parts = [f"{result} `{escape(o.plan_id, 60)}` {_target(o.repo, o.environment)}"]
    if o.dry_run:
        parts.append("dry run")
    if (lead := o.lead_seconds) is not None:
        parts.append(f"lead time {duration(lead)}")
    for extra in (_when(o.ended_at), _link(o.run_url, "run"), _where(line.channel)):
        if extra:
            parts.append(extra)
    summary = escape(o.summary, 300)
    return _context(" · ".join(parts), *([summary] if summary.strip() else []))


def _slot(line: SlotLine) -> Block:
    repo, _, env = line.slot.rpartition("@")
    texts = []
    if line.lock is not None:
        held = line.lock
        why = f" — {escape(held.reason, 200)}" if held.reason else ""
        texts.append(f"🔒 `{escape(repo, 200)}` → *{escape(env, 60)}* by {user(held.by)}{why}")
    busy = []
    if line.holder is not None:
        busy.append(f"`{line.holder}` running" if line.holder else "a plan running")
    if line.waiting:
        busy.append(f"{line.waiting} waiting")
    if busy:
        texts.append(f"🚀 {_target(repo, env)}: " + " · ".join(busy))
    return _context(*texts)


def _trust(lines: list[TrustLine], floor: float) -> str:
    out = [f"Autonomy needs a score of at least *{floor:.2f}*; below it a person decides."]
    for line in lines:
        if line.kind == "target":
            repo, _, env = line.name.rpartition("@")
            label = _target(repo, env)
        else:
            label = f"You as {line.kind}"
        mark = " ⚠️ below the autonomy floor" if line.score < floor else ""
        fresh = " (no outcome yet)" if not line.kept else ""
        out.append(f"• {label}: *{line.score:.2f}*{fresh}{mark}")
    return "\n".join(out)


def _figures(figures: Headline | None) -> Block:
    if figures is None or not figures.deploys:
        days = figures.days if figures is not None else 7
        return _context(f"No deploys in the last {days} days.")
    plus = "+" if figures.partial else ""
    text = f"🚀 *{figures.deploys}{plus}* deploy{'s' if figures.deploys != 1 else ''}"
    rate = figures.success_rate
    if rate is not None:
        text += f" · ✅ *{rate:.0%}* succeeded"
    if figures.lead_p50_seconds is not None:
        text += f" · ⏱ median lead time *{duration(figures.lead_p50_seconds)}*"
    return _section(text)


def _list(records: list[PlanRecord], build: Callable[[PlanRecord], list[Block]]) -> list[Block]:
    if not records:
        return [_context("Nothing here.")]
    out: list[Block] = []
    for record in records[:PER_SECTION]:
        out += build(record)
    return out


def home(page: HomePage) -> dict[str, Any]:
    """The App Home tab of one viewer: only what they may see (see handlers/home.py)."""
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "SOPHIE"}},
        _section(
            "Mention me or use `/sophie <directive>` in a channel, e.g. "
            "_Add caching to the user authentication system and deploy to staging_."
        ),
    ]
    if page.flash:
        blocks.append(_section(f"👉 {escape(page.flash, 500)}"))
    days = page.headline.days if page.headline is not None else 7
    blocks += [*_title(f"Last {days} days"), _figures(page.headline)]
    blocks += _title("Waiting on you") + _list(page.waiting, _waiting)

    def mine(record: PlanRecord) -> list[Block]:
        return [_section(_plan_line(record), _button(HOME_VIEW_PLAN, "View plan", record.plan))]

    blocks += _title("Your requests") + _list(page.mine, mine)
    blocks += _title("From your channels and decisions")
    blocks += _list(page.others, lambda r: [_section(_plan_line(r))])
    blocks += _title("Recent deploys")
    blocks += [_deploy(d) for d in page.deploys[:PER_SECTION]] or [_context("None yet.")]
    blocks += _title("Locks and queues")
    slots = [_slot(s) for s in page.slots[:PER_SECTION]]
    blocks += [b for b in slots if b["elements"]] or [_context("Nothing locked or waiting.")]
    blocks += [*_title("Trust"), _section(_trust(page.trust[:12], page.floor))]
    if page.note:
        blocks.append(_context(page.note))
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], _context("… more than fits here.")]
    return {"type": "home", "private_metadata": page.owner, "blocks": blocks}
