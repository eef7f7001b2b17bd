"""The /sophie slash command."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp

from handlers.text import escape
from roles.executor import Sophie
from roles.records import Actor, Directive, Thread

HELP = (
    "*SOPHIE* turns a directive into a signed, constitution-checked plan.\n"
    "• `/sophie <directive>` — plan a change, e.g. "
    "`/sophie Add caching to the user authentication system and deploy to staging`\n"
    "• `/sophie help` — this message\n"
    "You can also @mention me in a channel or DM me."
)


def directive_from_command(body: dict[str, Any]) -> Directive | None:
    text = (body.get("text") or "").strip()
    if not text or text.lower() in ("help", "-h", "--help", "?"):
        return None
    return Directive(
        text=text,
        requester=Actor(
            team_id=body.get("team_id", ""),
            user_id=body["user_id"],
            name=body.get("user_name", ""),
        ),
        # No thread yet: the planning job opens one in the channel.
        thread=Thread(channel=body["channel_id"], thread_ts=""),
        source="command",
        event_id=f"cmd:{body.get('trigger_id') or body['user_id'] + ':' + text[:50]}",
    )


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.command("/sophie")
    async def on_command(ack: AsyncAck, body: dict[str, Any]) -> None:
        directive = directive_from_command(body)
        if directive is None:
            await ack(text=HELP, response_type="ephemeral")
            return
        await ack(text=f"Planning: _{escape(directive.text, 500)}_ …", response_type="ephemeral")
        await sophie.receive(directive)
