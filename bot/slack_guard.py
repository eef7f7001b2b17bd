"""Checks on a request to ``POST /slack/events`` before Bolt sees it.

Slack signs each request: ``X-Slack-Signature`` is ``v0=`` + hex HMAC-SHA256, keyed with the
app's signing secret, of ``v0:{X-Slack-Request-Timestamp}:{raw body}``; a timestamp more than
five minutes from now is refused so a captured request cannot be replayed
(https://api.slack.com/docs/verifying-requests-from-slack). Bolt verifies the same again; we
do it first so that a malformed request (a non-numeric timestamp, a body that is not JSON,
JSON nested a thousand deep, an event without a channel) gets a 4xx and a log line, never a
500 from deep inside Bolt or a listener.

All checks are cheap (one HMAC, one JSON parse, a walk of the parsed containers) and
return a short reason that is safe to log and to answer with: never the body, never a header
value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import parse_qsl

# Slack's requests are small; 1 MB leaves room for large messages in block_actions.
MAX_BODY = 1024 * 1024
# Slack payloads nest a dozen levels at most (rich text in a message in an action payload).
MAX_DEPTH = 64
# Slack: "If the difference between now and the request timestamp is more than five
# minutes, [...] ignore the request" (see the module docstring).
MAX_SKEW_SECONDS = 60 * 5

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# Event types our listeners read, and the string fields each needs (Slack's event reference
# documents these as always present).
_EVENT_FIELDS = {
    "app_mention": ("user", "channel", "ts"),
    "message": ("channel", "ts"),
    "app_home_opened": ("user",),
}
_EVENT_STRINGS = (
    *("user", "channel", "ts", "thread_ts", "text"),
    *("channel_type", "subtype", "bot_id", "tab", "event_ts"),
)


@dataclass(frozen=True)
class Rejected:
    status: int
    reason: str


@dataclass(frozen=True)
class Accepted:
    text: str
    body: dict[str, Any]
    content_type: str


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def verify(headers: Mapping[str, str], body: bytes, secret: str, now: float) -> Rejected | None:
    """The signature and timestamp, as Slack documents them; None when they hold."""
    signature = headers.get("X-Slack-Signature")
    timestamp = headers.get("X-Slack-Request-Timestamp")
    if not signature or not timestamp:
        return Rejected(401, "missing X-Slack-Signature or X-Slack-Request-Timestamp")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return Rejected(400, "X-Slack-Request-Timestamp is not a number")
    if abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        return Rejected(401, "X-Slack-Request-Timestamp is more than five minutes away")
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return Rejected(401, "bad signature")
    return None


def check(headers: Mapping[str, str], body: bytes, secret: str, now: float) -> Rejected | Accepted:
    """Signature first (unsigned requests learn nothing about parsing), then the shape."""
    refused = verify(headers, body, secret, now)
    if refused is not None:
        return refused
    content_type = media_type(headers.get("Content-Type"))
    if content_type not in (JSON, FORM):
        return Rejected(415, "Content-Type must be application/json or form-urlencoded")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(400, "body is not UTF-8")
    parsed = _parse(text, content_type)
    if isinstance(parsed, str):
        return Rejected(400, parsed)
    problem = _event_problem(parsed) if content_type == JSON else _form_problem(parsed)
    if problem is not None:
        return Rejected(400, problem)
    return Accepted(text, parsed, content_type)


def _loads(text: str, what: str) -> dict[str, Any] | str:
    try:
        value = json.loads(text)
    except RecursionError:
        return f"{what} is nested too deeply"
    except ValueError:
        return f"{what} is not valid JSON"
    if not isinstance(value, dict):
        return f"{what} is not a JSON object"
    if not _shallow(value, MAX_DEPTH):
        return f"{what} is nested too deeply"
    return value


def _shallow(value: Any, limit: int) -> bool:
    """No deeper than ``limit`` containers; level by level (json.loads makes exact dicts/lists)."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            return False
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below += [c for c in children if type(c) is dict or type(c) is list]
        level = below
        depth += 1
    return True


def _parse(text: str, content_type: str) -> dict[str, Any] | str:
    if content_type == JSON:
        return _loads(text, "body")
    if text.startswith("{"):
        return "form body looks like JSON"  # Bolt would parse it as JSON: refuse the mismatch
    params = dict(parse_qsl(text, keep_blank_values=True))
    if "payload" in params:
        payload = _loads(params["payload"], "payload")
        return payload
    if "command" in params or "ssl_check" in params:
        return dict(params)
    return "form body has neither payload nor command"


def _str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str)


def _obj(value: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict)


def _common_problem(body: dict[str, Any]) -> str | None:
    """Fields Bolt reads from every payload to build its context."""
    if not _str(body.get("type")) and "command" not in body and "ssl_check" not in body:
        return "missing type"
    team = body.get("team")
    if team is not None and not (_str(team) or (_obj(team) and _str(team.get("id", "")))):
        return "team is malformed"
    enterprise = body.get("enterprise")
    if enterprise is not None and not (_str(enterprise) or _obj(enterprise)):
        return "enterprise is malformed"
    auths = body.get("authorizations")
    if auths is not None and not (isinstance(auths, list) and all(_obj(a) for a in auths)):
        return "authorizations is malformed"
    for key in ("team_id", "enterprise_id", "api_app_id", "event_id", "trigger_id"):
        if body.get(key) is not None and not _str(body[key]):
            return f"{key} is not a string"
    user = body.get("user")
    if user is not None and not (_str(user) or (_obj(user) and _str(user.get("id", "")))):
        return "user is malformed"
    return None


def _event_problem(body: dict[str, Any]) -> str | None:
    problem = _common_problem(body)
    if problem is not None:
        return problem
    kind = body.get("type")
    if kind == "url_verification" and not _str(body.get("challenge")):
        return "url_verification without a challenge"
    if kind != "event_callback":
        return None
    event = body.get("event")
    if not _obj(event) or not _str(event.get("type")):
        return "event_callback without an event type"
    fields = _EVENT_FIELDS.get(event["type"])
    if fields is None:
        return None
    for key in _EVENT_STRINGS:
        if event.get(key) is not None and not _str(event[key]):
            return f"event.{key} is not a string"
    if event.get("subtype") is None:  # edits, joins and the like carry other fields
        missing = [key for key in fields if not event.get(key)]
        if missing:
            return f"{event['type']} event without {', '.join(missing)}"
    return None


def _form_problem(body: dict[str, Any]) -> str | None:
    if "command" in body and "type" not in body:
        missing = [k for k in ("command", "user_id", "channel_id") if not body.get(k)]
        return f"slash command without {', '.join(missing)}" if missing else None
    if "ssl_check" in body and "type" not in body:
        return None
    problem = _common_problem(body)
    if problem is not None:
        return problem
    kind = body["type"]
    if kind in ("block_actions", "view_submission", "view_closed", "shortcut", "message_action"):
        user = body.get("user")
        if not _obj(user) or not user.get("id") or not _str(user["id"]):
            return f"{kind} without a user"
    if kind == "block_actions":
        return _actions_problem(body)
    if kind in ("view_submission", "view_closed"):
        view = body.get("view")
        if not _obj(view) or not _str(view.get("callback_id")):
            return f"{kind} without a view"
        if view.get("private_metadata") is not None and not _str(view["private_metadata"]):
            return "view.private_metadata is not a string"
        state = view.get("state")
        if state is not None and not (_obj(state) and _obj(state.get("values", {}))):
            return "view.state is malformed"
    if kind in ("shortcut", "message_action") and not _str(body.get("callback_id")):
        return f"{kind} without a callback_id"
    return None


def _actions_problem(body: dict[str, Any]) -> str | None:
    actions = body.get("actions")
    if not isinstance(actions, list) or not actions:
        return "block_actions without actions"
    if not _str(body.get("trigger_id")):
        return "block_actions without a trigger_id"
    for key in ("container", "channel", "message"):
        if body.get(key) is not None and not _obj(body[key]):
            return f"{key} is malformed"
    for action in actions:
        if not _obj(action) or not _str(action.get("action_id")) or not _str(action.get("type")):
            return "an action without action_id or type"
        value = action.get("value")
        if value is not None and not _str(value):
            return "an action value is not a string"
        # Every SOPHIE button carries the plan it acts on in its value.
        if action["type"] == "button" and action["action_id"].startswith("sophie_") and not value:
            return "a SOPHIE button without a value"
    return None
