"""Events API surface: @mentions and direct messages start a directive."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt.async_app import AsyncApp

from roles.executor import Sophie
from roles.records import Actor, Directive, Thread

_LEADING_MENTION = re.compile(r"^\s*<@[A-Z0-9]+(?:\|[^>]*)?>[\s,:]*")


def directive_from_event(body: dict[str, Any], source: str) -> Directive | None:
    """The directive in an event callback, or None for events SOPHIE must ignore."""
    event = body.get("event") or {}
    # Never react to bots (including ourselves) or to edits/joins/other subtypes.
    if event.get("bot_id") or event.get("subtype") or not event.get("user"):
        return None
    text = _LEADING_MENTION.sub("", event.get("text") or "", count=1).strip()
    if not text:
        return None
    return Directive(
        text=text,
        requester=Actor(team_id=body.get("team_id", ""), user_id=event["user"]),
        thread=Thread(channel=event["channel"], thread_ts=event.get("thread_ts") or event["ts"]),
        source="mention" if source == "mention" else "message",
        event_id=body.get("event_id") or f"{event['channel']}:{event['ts']}",
    )


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.event("app_mention")
    async def on_mention(body: dict[str, Any]) -> None:
        directive = directive_from_event(body, "mention")
        if directive is not None:
            await sophie.receive(directive)

    @app.event("message")
    async def on_message(body: dict[str, Any]) -> None:
        # In channels, only @mentions count (they arrive as app_mention); DMs are directives.
        if (body.get("event") or {}).get("channel_type") != "im":
            return
        directive = directive_from_event(body, "message")
        if directive is not None:
            await sophie.receive(directive)
