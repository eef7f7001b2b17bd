"""Build and sign requests exactly as Slack sends them to the app."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

TEAM = "T0SOPHIE01"
BOT_USER = "U0SOPHIEBOT"


def signed_headers(
    secret: str, body: str, timestamp: int | None = None, content_type: str = "application/json"
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None  # only None when the timestamp is
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def mention_event(
    text: str,
    user: str,
    channel: str,
    ts: str | None = None,
    event_id: str | None = None,
    thread_ts: str | None = None,
) -> dict[str, Any]:
    ts = ts or f"{time.time():.6f}"
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM,
        "api_app_id": "A0SOPHIEAPP",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
    }


def block_action(
    action_id: str,
    value: str,
    user: str,
    channel: str,
    message_ts: str,
    response_url: str,
    trigger_id: str | None = None,
    *,
    team: str = TEAM,
    user_team: str | None = None,
    enterprise: str | None = None,
    thread_ts: str | None = None,
) -> dict[str, Any]:
    """A button press on a message, as Slack posts it (``block_actions``).

    ``team`` is the workspace the click comes from, ``user_team`` the clicker's own
    (Slack Connect guests differ; default ``team``), ``enterprise`` an Enterprise Grid
    org, ``thread_ts`` the thread the message is a reply in. Field names follow
    https://docs.slack.dev/reference/interaction-payloads/block_actions-payload.
    """
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel,
        "is_ephemeral": False,
    }
    message: dict[str, Any] = {"type": "message", "ts": message_ts, "text": "card"}
    if thread_ts:
        container["thread_ts"] = thread_ts
        message["thread_ts"] = thread_ts
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": team, "domain": "sophie"},
        "user": {
            "id": user,
            "username": user.lower(),
            "name": user.lower(),
            "team_id": user_team or team,
        },
        "api_app_id": "A0SOPHIEAPP",
        "token": "legacy-verification-token",
        "container": container,
        "trigger_id": trigger_id or f"{int(time.time())}.{uuid.uuid4().int % 10**12}.abc",
        "channel": {"id": channel, "name": "deploys"},
        "message": message,
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": "decision",
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    if enterprise:
        payload["enterprise"] = {"id": enterprise, "name": "Acme Org"}
        payload["is_enterprise_install"] = False
    return payload


def in_thread(payload: dict[str, Any], thread_ts: str | None) -> dict[str, Any]:
    """The same click, on a message that is a reply in thread ``thread_ts``."""
    if thread_ts:
        payload["container"]["thread_ts"] = thread_ts
        payload["message"]["thread_ts"] = thread_ts
    return payload


def form_body(payload: dict[str, Any]) -> str:
    return urlencode({"payload": json.dumps(payload)})


def command_body(
    text: str, user: str, channel: str, response_url: str, trigger_id: str | None = None
) -> str:
    return urlencode(
        {
            "token": "legacy-verification-token",
            "team_id": TEAM,
            "team_domain": "sophie",
            "channel_id": channel,
            "channel_name": "deploys",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/sophie",
            "text": text,
            "api_app_id": "A0SOPHIEAPP",
            "response_url": response_url,
            "trigger_id": trigger_id or f"{int(time.time())}.{uuid.uuid4().int % 10**12}.cmd",
        }
    )


def view_submission(
    callback_id: str, private_metadata: str, user: str, values: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """A modal submitted: ``values`` maps block_id → {action_id: text}."""
    state = {
        block: {
            action: {"type": "plain_text_input", "value": text} for action, text in acts.items()
        }
        for block, acts in values.items()
    }
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "sophie"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "api_app_id": "A0SOPHIEAPP",
        "token": "legacy-verification-token",
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}.sub",
        "view": {
            "id": f"V{uuid.uuid4().hex[:10].upper()}",
            "team_id": TEAM,
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": private_metadata,
            "state": {"values": state},
            "hash": "1.abc",
        },
    }
