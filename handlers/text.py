"""Making untrusted text safe to post back into Slack."""

from __future__ import annotations

import re

from roles.untrusted import clean_text

SECTION_LIMIT = 3000
_BOUNDARY_MARK = re.compile(r"(?<!\w)[*_~]|[*_~](?!\w)")


def escape(text: str, limit: int = 2900) -> str:
    """Escape &, < and > so no mention, channel ping or link can be smuggled in.

    Slack only turns ``<!channel>``, ``<@U…>`` and ``<url>`` into pings and links
    when they arrive unescaped; escaped they show as plain text.
    """
    text = clean_text(text, limit=limit * 2)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # Neutralise formatting so echoed text cannot restyle the card. Slack only styles
    # *, _ and ~ at word boundaries, so identifiers like plan_ab12 stay copyable.
    text = text.replace("`", "\u02bc")
    text = _BOUNDARY_MARK.sub(lambda m: m.group(0) + "\u200b", text)
    return truncate(text, limit)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def user(user_id: str) -> str:
    """A mention of a Slack user ID we validated ourselves (never from free text)."""
    if user_id.startswith("sophie:"):
        return "SOPHIE"
    safe = "".join(ch for ch in user_id if ch.isalnum())
    return f"<@{safe}>"


def rate_limited(per_user: int, per_channel: int, window_seconds: int) -> str:
    return (
        f"That is more directives than the constitution allows right now "
        f"({per_user} per person and {per_channel} per channel every {window_seconds} s). "
        "Nothing was planned; try again in a minute."
    )


# What SOPHIE answers to `/sophie help`, an empty `/sophie` and an empty @mention.
HELP = (
    "*SOPHIE* turns a directive into a signed, constitution-checked plan.\n"
    "• `/sophie <directive>` — plan a change, e.g. "
    "`/sophie Add caching to the user authentication system and deploy to staging`\n"
    "• `/sophie rollback [repo] [environment]` — roll back to the last known good "
    "deployment (who may is in the constitution)\n"
    "• `/sophie lock <environment> [repo] [reason]` — approved deploys there wait; "
    "`/sophie unlock <environment> [repo]` lets them go, in order\n"
    "• `/sophie digest` — the digest now, only for you (the scheduled one goes to the "
    "digest channel)\n"
    "• `/sophie status [plan]` — recent plans here, or one plan; `/sophie pending` — what "
    "waits on you; `/sophie trust` — trust scores and the autonomy floor\n"
    "• `/sophie help` — this message\n"
    "You can also @mention me in a channel or DM me."
)
