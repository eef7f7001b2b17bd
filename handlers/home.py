"""The App Home tab: what concerns the viewer, and how to start a plan.

Privacy: a viewer sees only plans waiting on them (they may decide on them under
the constitution, :func:`roles.approvals.may_decide`), their own requests, plans
they decided on, and plans from conversations they share with the bot (Slack's
``users.conversations`` with the viewer as ``user``: public and private channels
and group DMs; https://api.slack.com/methods/users.conversations). A plan from a
direct message is shown only to its requester and to the people asked to decide
on it, never through channel membership. Plans from another workspace are never
shown. Everything after the event's ack runs in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from handlers import blocks
from handlers.background import spawn
from roles import approvals
from roles.constitution import Constitution
from roles.plan import ApprovalLevel
from roles.records import Actor, PlanRecord, PlanStatus
from roles.sophie import Sophie

log = logging.getLogger("sophie.handlers")

# The newest plans looked at for one Home tab, and the most shown per section.
WINDOW = 100
PER_SECTION = 10
# users.conversations pages (200 conversations each) read for one viewer.
MAX_PAGES = 10
CHANNEL_TYPES = "public_channel,private_channel,mpim"


@dataclass(frozen=True)
class Viewer:
    actor: Actor
    groups: frozenset[str] = frozenset()
    # Conversations the viewer shares with the bot (never DMs); None if unknown.
    channels: frozenset[str] | None = None


@dataclass
class Sections:
    waiting: list[PlanRecord] = field(default_factory=list)
    mine: list[PlanRecord] = field(default_factory=list)
    others: list[PlanRecord] = field(default_factory=list)


def is_direct(record: PlanRecord) -> bool:
    """A plan from a 1:1 direct message (Slack's DM ids start with D)."""
    return record.thread.channel.startswith("D")


def waiting_on(record: PlanRecord, viewer: Viewer, constitution: Constitution) -> bool:
    """The plan is pending and the viewer may decide on it now."""
    if record.status != PlanStatus.PENDING:
        return False
    level = record.plan.approval.level
    act: approvals.Act = (
        "approve" if level in (ApprovalLevel.APPROVAL, ApprovalLevel.SUPERVISION) else "veto"
    )
    why = approvals.may_decide(
        constitution, record.plan, record.decisions, viewer.actor, set(viewer.groups), act
    )
    return why is None


def decided_by(record: PlanRecord, viewer: Viewer) -> bool:
    return any(
        d.actor.user_id == viewer.actor.user_id and d.actor.team_id == viewer.actor.team_id
        for d in record.decisions
    )


def sections(records: Iterable[PlanRecord], viewer: Viewer, constitution: Constitution) -> Sections:
    """What this viewer may see, newest first, in three sections."""
    out = Sections()
    for record in records:
        if not approvals.same_workspace(record.plan, viewer.actor):
            continue
        if waiting_on(record, viewer, constitution):
            out.waiting.append(record)
        elif record.plan.requester.user_id == viewer.actor.user_id:
            out.mine.append(record)
        elif decided_by(record, viewer):
            out.others.append(record)  # they were asked, and answered
        elif (
            not is_direct(record)
            and viewer.channels is not None
            and record.thread.channel in viewer.channels
        ):
            out.others.append(record)
    out.waiting, out.mine, out.others = (
        out.waiting[:PER_SECTION],
        out.mine[:PER_SECTION],
        out.others[:PER_SECTION],
    )
    return out


def viewer_from(body: dict[str, Any]) -> Actor:
    """The person who opened the tab, in the workspace the event came from."""
    event = body.get("event")
    user = event.get("user") if isinstance(event, dict) else None
    team, enterprise = body.get("team_id"), body.get("enterprise_id")
    return Actor(
        team_id=team if isinstance(team, str) else "",
        user_id=user if isinstance(user, str) else "",
        enterprise_id=enterprise if isinstance(enterprise, str) else "",
    )


async def shared_channels(client: AsyncWebClient, user_id: str) -> frozenset[str] | None:
    """Conversations ``user_id`` shares with the bot, or None if Slack would not say."""
    found: set[str] = set()
    cursor = ""
    for _ in range(MAX_PAGES):
        try:
            resp = await client.users_conversations(
                user=user_id, types=CHANNEL_TYPES, limit=200, cursor=cursor or None
            )
        except SlackApiError as exc:
            log.warning(
                "cannot list the conversations of %s: %s", user_id, exc.response.get("error")
            )
            return None
        for channel in resp.get("channels") or []:
            if isinstance(channel, dict) and isinstance(channel.get("id"), str):
                if not channel["id"].startswith("D"):
                    found.add(channel["id"])
        cursor = str((resp.get("response_metadata") or {}).get("next_cursor") or "")
        if not cursor:
            break
    return frozenset(found)


async def build(sophie: Sophie, client: AsyncWebClient, actor: Actor) -> dict[str, Any]:
    constitution = sophie.constitution()
    groups = await sophie.directory.groups_of(actor.user_id, list(constitution.approvers.groups))
    channels = await shared_channels(client, actor.user_id)
    viewer = Viewer(actor, frozenset(groups), channels)
    shown = sections(await sophie.store.recent(WINDOW), viewer, constitution)
    note = "" if channels is not None else blocks.HOME_NO_CHANNELS
    locks = await sophie.store.locks()
    return blocks.home(shown.waiting, shown.mine, shown.others, note, locks)


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.event("app_home_opened")
    async def on_home(body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("tab") not in (None, "home"):
            return
        actor = viewer_from(body)
        if not actor.user_id:
            return

        async def publish() -> None:
            view = await build(sophie, client, actor)
            await client.views_publish(user_id=actor.user_id, view=view)

        spawn(publish())
