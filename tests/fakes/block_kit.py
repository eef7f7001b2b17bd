"""Block Kit validation as Slack applies it: slack_sdk's models plus Slack's published limits.

``problems(blocks, surface)`` returns human-readable reasons a payload would be
refused (``invalid_blocks``); an empty list means Slack would accept it.
"""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

MAX_BLOCKS = {"message": 50, "modal": 100, "home": 100}
MAX_MESSAGE_TEXT = 40_000
TEXT_LIMITS = {"section": 3000, "header": 150, "context": 2000}


def _text_len(obj: Any) -> int:
    return len(obj.get("text", "")) if isinstance(obj, dict) else 0


def _check_text_object(obj: Any, where: str, limit: int, out: list[str]) -> None:
    if not isinstance(obj, dict):
        out.append(f"{where}: text object must be an object")
        return
    if obj.get("type") not in ("plain_text", "mrkdwn"):
        out.append(f"{where}: text type must be plain_text or mrkdwn")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        out.append(f"{where}: text must be a non-empty string")
    elif len(text) > limit:
        out.append(f"{where}: text is {len(text)} characters, more than {limit}")


def _check_element(el: Any, where: str, action_ids: set[str], out: list[str]) -> None:
    if not isinstance(el, dict):
        out.append(f"{where}: element must be an object")
        return
    action_id = el.get("action_id")
    if action_id is not None:
        if len(str(action_id)) > 255:
            out.append(f"{where}: action_id longer than 255")
        if action_id in action_ids:
            out.append(f"{where}: duplicate action_id {action_id!r}")
        action_ids.add(str(action_id))
    if el.get("type") == "button":
        label = el.get("text") or {}
        if label.get("type") != "plain_text":
            out.append(f"{where}: button text must be plain_text")
        if _text_len(label) > 75:
            out.append(f"{where}: button text longer than 75")
        if len(str(el.get("value", ""))) > 2000:
            out.append(f"{where}: button value longer than 2000")
        if el.get("url") and len(el["url"]) > 3000:
            out.append(f"{where}: button url longer than 3000")
        if el.get("style") not in (None, "primary", "danger"):
            out.append(f"{where}: button style must be primary or danger")
        confirm = el.get("confirm")
        if confirm is not None:
            for part, limit in (("title", 100), ("confirm", 30), ("deny", 30)):
                _check_text_object(confirm.get(part), f"{where}.confirm.{part}", limit, out)
            _check_text_object(confirm.get("text"), f"{where}.confirm.text", 300, out)


def problems(blocks: Any, surface: str = "message") -> list[str]:
    """Why Slack would refuse ``blocks`` on ``surface`` (message, modal or home)."""
    out: list[str] = []
    if not isinstance(blocks, list):
        return ["blocks must be an array"]
    if len(blocks) > MAX_BLOCKS[surface]:
        out.append(f"{len(blocks)} blocks, more than {MAX_BLOCKS[surface]} for a {surface}")
    try:
        for parsed in Block.parse_all(blocks):
            if parsed is None:
                out.append("a block could not be parsed")
                continue
            parsed.validate_json()
    except (SlackObjectFormationError, KeyError, TypeError, AttributeError) as exc:
        out.append(f"slack_sdk: {exc}")
    block_ids: set[str] = set()
    action_ids: set[str] = set()
    for n, block in enumerate(blocks):
        where = f"blocks[{n}]"
        if not isinstance(block, dict) or "type" not in block:
            out.append(f"{where}: a block needs a type")
            continue
        kind = block["type"]
        block_id = block.get("block_id")
        if block_id is not None:
            if len(str(block_id)) > 255:
                out.append(f"{where}: block_id longer than 255")
            if block_id in block_ids:
                out.append(f"{where}: duplicate block_id {block_id!r}")
            block_ids.add(str(block_id))
        if kind == "section":
            if "text" not in block and "fields" not in block:
                out.append(f"{where}: a section needs text or fields")
            if "text" in block:
                _check_text_object(block["text"], f"{where}.text", 3000, out)
            fields = block.get("fields") or []
            if len(fields) > 10:
                out.append(f"{where}: {len(fields)} fields, more than 10")
            for i, field in enumerate(fields):
                _check_text_object(field, f"{where}.fields[{i}]", 2000, out)
            if "accessory" in block:
                _check_element(block["accessory"], f"{where}.accessory", action_ids, out)
        elif kind == "header":
            text = block.get("text") or {}
            if text.get("type") != "plain_text":
                out.append(f"{where}: header text must be plain_text")
            _check_text_object(text, f"{where}.text", 150, out)
        elif kind == "context":
            elements = block.get("elements") or []
            if not elements or len(elements) > 10:
                out.append(f"{where}: context needs 1 to 10 elements")
            for i, el in enumerate(elements):
                if isinstance(el, dict) and el.get("type") in ("plain_text", "mrkdwn"):
                    _check_text_object(el, f"{where}.elements[{i}]", 2000, out)
        elif kind == "actions":
            elements = block.get("elements") or []
            if not elements or len(elements) > 25:
                out.append(f"{where}: actions need 1 to 25 elements")
            for i, el in enumerate(elements):
                _check_element(el, f"{where}.elements[{i}]", action_ids, out)
        elif kind == "input":
            if surface == "message":
                out.append(f"{where}: input blocks only work in modals and Home tabs")
            _check_text_object(block.get("label"), f"{where}.label", 2000, out)
            _check_element(block.get("element"), f"{where}.element", action_ids, out)
        elif kind not in ("divider", "image", "rich_text", "file", "video", "markdown"):
            out.append(f"{where}: unknown block type {kind!r}")
    return out


def view_problems(view: Any) -> list[str]:
    """Why Slack would refuse a modal or Home tab view."""
    if not isinstance(view, dict):
        return ["view must be an object"]
    surface = view.get("type")
    if surface not in ("modal", "home"):
        return [f"view type must be modal or home, not {surface!r}"]
    out = problems(view.get("blocks"), surface)
    try:
        View(**view).validate_json()
    except (SlackObjectFormationError, TypeError) as exc:
        out.append(f"slack_sdk: {exc}")
    if surface == "modal":
        _check_text_object(view.get("title"), "title", 24, out)
        for part in ("submit", "close"):
            if view.get(part) is not None:
                _check_text_object(view[part], part, 24, out)
        has_input = any(
            isinstance(b, dict) and b.get("type") == "input" for b in view.get("blocks") or []
        )
        if has_input and view.get("submit") is None:
            out.append("a modal with input blocks needs a submit button")
    if len(str(view.get("private_metadata", ""))) > 3000:
        out.append("private_metadata longer than 3000")
    if len(str(view.get("callback_id", ""))) > 255:
        out.append("callback_id longer than 255")
    return out
