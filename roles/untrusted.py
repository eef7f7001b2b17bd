"""Untrusted text (directives, thread text, model output) made safe to reason about."""

from __future__ import annotations

import re
import unicodedata

MAX_DIRECTIVE_CHARS = 2000

# Bidi overrides, zero-width and other format characters hide text from reviewers.
_INVISIBLE = re.compile(
    "[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8]"
)
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")


def clean_text(text: str, limit: int = MAX_DIRECTIVE_CHARS) -> str:
    """Normalise, drop invisible/control characters, fold runs of spaces, cap the length."""
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = _SPACES.sub(" ", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text[:limit]


_SLACK_TOKEN = re.compile(r"<([@#!][^>|]*)(?:\|([^>]*))?>")


def strip_slack_markup(text: str) -> str:
    """Turn Slack's ``<@U1|name>`` / ``<#C1|chan>`` / ``<!here>`` / links into plain words."""

    def plain(match: re.Match[str]) -> str:
        label = match.group(2)
        return label if label else ""

    text = _SLACK_TOKEN.sub(plain, text)
    text = re.sub(r"<(https?://[^>|]+)(?:\|([^>]*))?>", lambda m: m.group(2) or m.group(1), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
