"""Events API surface: @mentions and direct messages start a directive."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from handlers.background import spawn
from handlers.text import HELP, rate_limited
from roles.flows.intake import Intake
from roles.records import Actor, Directive, Thread
from roles.sophie import Sophie

_LEADING_MENTION = re.compile(r"^\s*<@[A-Z0-9]+(?:\|[^>]*)?>[\s,:]*")


def directive_from_event(body: dict[str, Any], source: str) -> Directive | None:
    """The directive in an event callback, or None for events SOPHIE must ignore."""
    event = body.get("event")
    if not isinstance(event, dict):
        return None
    # Never react to bots (including ourselves) or to edits/joins/other subtypes.
    if event.get("bot_id") or event.get("subtype"):
        return None
    user, channel, ts = (_text_field(event, k) for k in ("user", "channel", "ts"))
    if not (user and channel and ts):
        return None  # not a message we can answer in a thread (the HTTP route refuses it)
    text = _LEADING_MENTION.sub("", _text_field(event, "text"), count=1).strip()
    if not text:
        return None
    return Directive(
        text=text,
        requester=Actor(
            team_id=_text_field(body, "team_id"),
            user_id=user,
            enterprise_id=_text_field(body, "enterprise_id"),
        ),
        channel_type=_text_field(event, "channel_type"),
        thread=Thread(channel=channel, thread_ts=_text_field(event, "thread_ts") or ts),
        source="mention" if source == "mention" else "message",
        event_id=_text_field(body, "event_id") or f"{channel}:{ts}",
    )


def empty_mention(body: dict[str, Any]) -> tuple[Thread, str] | None:
    """Where and to whom to answer a mention that says nothing (else None)."""
    event = body.get("event")
    if not isinstance(event, dict) or event.get("bot_id") or event.get("subtype"):
        return None
    user, channel, ts = (_text_field(event, k) for k in ("user", "channel", "ts"))
    text = _LEADING_MENTION.sub("", _text_field(event, "text"), count=1).strip()
    if not (user and channel and ts) or text:
        return None
    return Thread(channel=channel, thread_ts=_text_field(event, "thread_ts") or ts), user


def _text_field(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


async def _receive(sophie: Sophie, directive: Directive) -> None:
    if await sophie.receive(directive) == Intake.RATE_LIMITED:
        limits = sophie.constitution().rate_limits
        text = rate_limited(limits.per_user, limits.per_channel, limits.window_seconds)
        spawn(sophie.notifier.tell_user(directive.thread, directive.requester.user_id, text))


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.event("app_mention")
    async def on_mention(body: dict[str, Any], client: AsyncWebClient) -> None:
        directive = directive_from_event(body, "mention")
        if directive is not None:
            await _receive(sophie, directive)
            return
        asker = empty_mention(body)
        if asker is not None:  # "@sophie" alone: say how to ask, only to them
            thread, user_id = asker
            # Our own text, with its formatting (tell_user escapes what it is given).
            spawn(
                client.chat_postEphemeral(
                    channel=thread.channel, user=user_id, thread_ts=thread.thread_ts, text=HELP
                )
            )

    @app.event("message")
    async def on_message(body: dict[str, Any]) -> None:
        # In channels, only @mentions count (they arrive as app_mention); DMs are directives.
        event = body.get("event")
        if not isinstance(event, dict) or event.get("channel_type") != "im":
            return
        directive = directive_from_event(body, "message")
        if directive is not None:
            await _receive(sophie, directive)
