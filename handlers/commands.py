"""The /sophie slash command."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp

from handlers import digest_blocks, status
from handlers.text import HELP, escape, rate_limited
from roles.flows.intake import Intake
from roles.records import Actor, Directive, Thread
from roles.sophie import Sophie

log = logging.getLogger("sophie.handlers")

# Slack wants the command answered within 3 s; the digest is read well within that.
DIGEST_SECONDS = 2.5


def is_digest_command(text: str) -> bool:
    return text.strip().lower() == "digest"


async def digest_reply(sophie: Sophie, channel: str) -> dict[str, Any]:
    """``/sophie digest``: the digest, ephemerally (only the person who asked sees it).

    In the digest channel it is the whole digest; elsewhere the figures only, since the
    person may not be in the channels the plans came from. The chart's figures are in
    words (a file cannot be attached to an ephemeral message). Nothing is remembered:
    the next scheduled digest still starts from the last one posted."""
    try:
        report, _ = await asyncio.wait_for(sophie.digest(), DIGEST_SECONDS)
    except TimeoutError:
        log.warning("/sophie digest took longer than %.1f s", DIGEST_SECONDS)
        return {
            "text": "The digest is taking too long to read right now; try again in a minute.",
            "response_type": "ephemeral",
        }
    detail = channel == sophie.constitution().digest.channel
    text, body = digest_blocks.digest(report, detail=detail, chart=False)
    return {"text": text, "blocks": body, "response_type": "ephemeral"}


def directive_from_command(body: dict[str, Any]) -> Directive | None:
    text = (body.get("text") or "").strip()
    if not text or text.lower() in ("help", "-h", "--help", "?"):
        return None
    # Rollback is a command, not a word: only "/sophie rollback …" asks for one.
    words = text.split(maxsplit=1)
    rollback = words[0].lower() in ("rollback", "roll-back")
    if rollback:
        rest = words[1] if len(words) > 1 else ""
        text = f"Roll back {rest}".strip()
    return Directive(
        text=text,
        kind="rollback" if rollback else "directive",
        requester=Actor(
            team_id=body.get("team_id", ""),
            user_id=body["user_id"],
            name=body.get("user_name", ""),
            enterprise_id=body.get("enterprise_id") or "",
        ),
        # No thread yet: the planning job opens one in the channel.
        thread=Thread(channel=body["channel_id"], thread_ts=""),
        source="command",
        event_id=f"cmd:{body.get('trigger_id') or body['user_id'] + ':' + text[:50]}",
    )


def lock_command(sophie: Sophie, text: str) -> tuple[str, str, str, str] | None:
    """("lock"|"unlock", environment, repo, reason) for a lock command, else None."""
    words = text.split()
    if not words or words[0].lower() not in ("lock", "unlock"):
        return None
    verb, rest = words[0].lower(), words[1:]
    environment = rest[0].lower() if rest else ""
    repo = ""
    names = {
        w.lower()
        for r in sophie.constitution().repos
        for w in (r.name, r.name.split("/", 1)[1], *r.aliases)
    }
    if len(rest) > 1 and rest[1].lower() in names:
        repo = rest[1]
        rest = rest[1:]
    return verb, environment, repo, " ".join(rest[1:])


def _actor(body: dict[str, Any]) -> Actor:
    return Actor(
        team_id=body.get("team_id", ""),
        user_id=body["user_id"],
        name=body.get("user_name", ""),
        enterprise_id=body.get("enterprise_id") or "",
    )


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.command("/sophie")
    async def on_command(ack: AsyncAck, body: dict[str, Any]) -> None:
        if is_digest_command(body.get("text") or ""):
            await ack(**await digest_reply(sophie, body.get("channel_id") or ""))
            return
        query = status.command(body.get("text") or "")
        if query is not None:
            verb, arg = query
            channel = body.get("channel_id") or ""
            await ack(**await status.answer(sophie, verb, arg, _actor(body), channel))
            return
        locking = lock_command(sophie, body.get("text") or "")
        if locking is not None:
            verb, environment, repo, reason = locking
            if not environment:
                await ack(
                    text=f"Say which environment: `/sophie {verb} <environment>`.",
                    response_type="ephemeral",
                )
                return
            if verb == "lock":
                reply = await sophie.lock(_actor(body), environment, repo, reason)
            else:
                reply = await sophie.unlock(_actor(body), environment, repo)
            await ack(
                text=escape(reply.text, 500),
                response_type="in_channel" if reply.ok else "ephemeral",
            )
            return
        directive = directive_from_command(body)
        if directive is None:
            await ack(text=HELP, response_type="ephemeral")
            return
        outcome = await sophie.receive(directive)
        if outcome == Intake.RATE_LIMITED:
            limits = sophie.constitution().rate_limits
            text = rate_limited(limits.per_user, limits.per_channel, limits.window_seconds)
            await ack(text=text, response_type="ephemeral")
            return
        await ack(text=f"Planning: _{escape(directive.text, 500)}_ …", response_type="ephemeral")
