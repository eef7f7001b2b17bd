"""Block Kit validation as strict as Slack's, for the fake Slack API and for direct use.

Slack refuses a malformed ``blocks`` payload with ``invalid_blocks`` (messages) or
``invalid_arguments`` (views). ``slack_sdk``'s model classes catch some of it (and are
run here too), but they skip unknown block types, ignore unknown keys and check only
some limits, so the documented limits are enforced here as well.

    problems(blocks, "message")      -> list of human-readable reasons, [] if valid
    view_problems(view)              -> same for a modal / home view (blocks included)
    message_problems(text, blocks, attachments) -> same for a whole message payload
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeAlias

from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

Surface: TypeAlias = Literal["message", "modal", "home"]

MAX_BLOCKS: dict[str, int] = {"message": 50, "modal": 100, "home": 100}
MAX_MESSAGE_TEXT = 40_000
MAX_MARKDOWN_TOTAL = 12_000

BLOCK_KEYS: dict[str, frozenset[str]] = {
    "section": frozenset({"text", "fields", "accessory", "expand"}),
    "divider": frozenset(),
    "header": frozenset({"text"}),
    "context": frozenset({"elements"}),
    "actions": frozenset({"elements"}),
    "image": frozenset({"image_url", "slack_file", "alt_text", "title"}),
    "input": frozenset({"label", "element", "dispatch_action", "hint", "optional"}),
    "rich_text": frozenset({"elements"}),
    "markdown": frozenset({"text"}),
    "video": frozenset(
        {
            "alt_text",
            "author_name",
            "description",
            "provider_icon_url",
            "provider_name",
            "title",
            "title_url",
            "thumbnail_url",
            "video_url",
        }
    ),
    "file": frozenset({"external_id", "source"}),
    "table": frozenset({"rows", "column_settings"}),
}
# Known to slack_sdk; checked by it only.
OTHER_BLOCK_TYPES = frozenset(
    {"context_actions", "call", "task_card", "plan", "card", "alert", "container", "carousel"}
)
MESSAGE_ONLY_BLOCKS = frozenset({"markdown", "file", "table"})

SELECTS = frozenset(
    {
        "static_select",
        "external_select",
        "users_select",
        "conversations_select",
        "channels_select",
        "multi_static_select",
        "multi_external_select",
        "multi_users_select",
        "multi_conversations_select",
        "multi_channels_select",
    }
)
ACTIONS_ELEMENTS = SELECTS | {
    "button",
    "checkboxes",
    "datepicker",
    "datetimepicker",
    "overflow",
    "radio_buttons",
    "timepicker",
    "workflow_button",
    "rich_text_input",
}
ACCESSORY_ELEMENTS = SELECTS | {
    "button",
    "checkboxes",
    "datepicker",
    "image",
    "overflow",
    "radio_buttons",
    "timepicker",
    "workflow_button",
}
INPUT_ELEMENTS = SELECTS | {
    "checkboxes",
    "datepicker",
    "datetimepicker",
    "email_text_input",
    "file_input",
    "number_input",
    "plain_text_input",
    "radio_buttons",
    "rich_text_input",
    "timepicker",
    "url_text_input",
}
BUTTON_KEYS = frozenset(
    {"type", "text", "action_id", "url", "value", "style", "confirm", "accessibility_label"}
)
RICH_TEXT_CONTAINERS = frozenset(
    {"rich_text_section", "rich_text_list", "rich_text_preformatted", "rich_text_quote"}
)
RICH_TEXT_LEAVES = frozenset(
    {"text", "link", "emoji", "user", "channel", "usergroup", "broadcast", "date", "color"}
)
VIEW_KEYS = frozenset(
    {
        "type",
        "title",
        "blocks",
        "close",
        "submit",
        "private_metadata",
        "callback_id",
        "clear_on_close",
        "notify_on_close",
        "external_id",
        "submit_disabled",
    }
)

# slack_sdk logs a warning for each block type it does not know; we report those ourselves.
logging.getLogger("slack_sdk.models.blocks.blocks").setLevel(logging.ERROR)


class _Checker:
    """Walks one payload (a message's or a view's blocks) collecting problems."""

    def __init__(self, surface: str) -> None:
        self.surface = surface
        self.out: list[str] = []
        self.block_ids: dict[str, str] = {}
        self.action_ids: dict[str, str] = {}
        self.markdown_total = 0

    def add(self, path: str, why: str) -> None:
        self.out.append(f"{path}: {why}")

    # --- scalars ---------------------------------------------------------------------

    def string(
        self, obj: Mapping[str, Any], key: str, path: str, max_len: int, required: bool = False
    ) -> None:
        value = obj.get(key)
        if value is None:
            if required:
                self.add(f"{path}.{key}", "is required")
            return
        if not isinstance(value, str):
            self.add(f"{path}.{key}", f"must be a string, got {type(value).__name__}")
        elif len(value) > max_len:
            self.add(f"{path}.{key}", f"must be at most {max_len} characters, got {len(value)}")

    def text(
        self,
        obj: Any,
        path: str,
        max_len: int,
        plain_only: bool = False,
        required: bool = True,
        min_len: int = 1,
    ) -> None:
        if obj is None:
            if required:
                self.add(path, "is required")
            return
        if not isinstance(obj, dict):
            self.add(path, "must be a text object")
            return
        kind = obj.get("type")
        allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
        if kind not in allowed:
            self.add(f"{path}.type", f"must be {' or '.join(allowed)}, got {kind!r}")
        extra = set(obj) - {"type", "text", "emoji", "verbatim"}
        if kind == "plain_text" and "verbatim" in obj:
            extra.add("verbatim")
        if kind == "mrkdwn" and "emoji" in obj:
            extra.add("emoji")
        for key in sorted(extra):
            self.add(f"{path}.{key}", "is not a valid property here")
        value = obj.get("text")
        if not isinstance(value, str):
            self.add(f"{path}.text", "is required and must be a string")
        elif len(value) < min_len:
            self.add(f"{path}.text", f"must be at least {min_len} character(s)")
        elif len(value) > max_len:
            self.add(f"{path}.text", f"must be at most {max_len} characters, got {len(value)}")

    def block_id(self, block: Mapping[str, Any], path: str) -> None:
        value = block.get("block_id")
        if value is None:
            return
        self.string(block, "block_id", path, 255)
        if isinstance(value, str):
            if value in self.block_ids:
                self.add(
                    f"{path}.block_id",
                    f"duplicate block_id {value!r} (also at {self.block_ids[value]})",
                )
            else:
                self.block_ids[value] = path

    def action_id(self, element: Mapping[str, Any], path: str) -> None:
        value = element.get("action_id")
        if value is None:
            return
        self.string(element, "action_id", path, 255)
        if isinstance(value, str):
            if value in self.action_ids:
                self.add(
                    f"{path}.action_id",
                    f"duplicate action_id {value!r} (also at {self.action_ids[value]})",
                )
            else:
                self.action_ids[value] = path

    def list_of(
        self, obj: Mapping[str, Any], key: str, path: str, max_len: int, min_len: int = 1
    ) -> list[Any]:
        value = obj.get(key)
        if not isinstance(value, list):
            self.add(f"{path}.{key}", "is required and must be an array")
            return []
        if len(value) < min_len:
            self.add(f"{path}.{key}", f"must have at least {min_len} item(s)")
        if len(value) > max_len:
            self.add(f"{path}.{key}", f"must have at most {max_len} items, got {len(value)}")
        return value

    # --- composition objects ---------------------------------------------------------

    def confirm(self, obj: Any, path: str) -> None:
        if obj is None:
            return
        if not isinstance(obj, dict):
            self.add(path, "must be a confirmation dialog object")
            return
        self.text(obj.get("title"), f"{path}.title", 100, plain_only=True)
        self.text(obj.get("text"), f"{path}.text", 300)
        self.text(obj.get("confirm"), f"{path}.confirm", 30, plain_only=True)
        self.text(obj.get("deny"), f"{path}.deny", 30, plain_only=True)
        if obj.get("style") not in (None, "primary", "danger"):
            self.add(f"{path}.style", "must be primary or danger")

    def option(self, obj: Any, path: str, plain_only: bool) -> None:
        if not isinstance(obj, dict):
            self.add(path, "must be an option object")
            return
        self.text(obj.get("text"), f"{path}.text", 75, plain_only=plain_only)
        self.string(obj, "value", path, 150, required=True)
        self.text(obj.get("description"), f"{path}.description", 75, required=False)
        self.string(obj, "url", path, 3000)

    # --- elements --------------------------------------------------------------------

    def element(self, el: Any, path: str, allowed: frozenset[str]) -> None:
        if not isinstance(el, dict):
            self.add(path, "must be an object")
            return
        kind = el.get("type")
        if kind not in allowed:
            self.add(f"{path}.type", f"{kind!r} is not allowed here (allowed: {sorted(allowed)})")
            return
        self.action_id(el, path)
        self.confirm(el.get("confirm"), f"{path}.confirm")
        if "placeholder" in el:
            self.text(el["placeholder"], f"{path}.placeholder", 150, plain_only=True)
        if kind == "button":
            for key in sorted(set(el) - BUTTON_KEYS):
                self.add(f"{path}.{key}", "is not a valid property of a button")
            self.text(el.get("text"), f"{path}.text", 75, plain_only=True)
            self.string(el, "value", path, 2000)
            self.string(el, "url", path, 3000)
            self.string(el, "accessibility_label", path, 75)
            if el.get("style") not in (None, "primary", "danger"):
                self.add(f"{path}.style", "must be primary or danger")
        elif kind == "image":
            self.string(el, "alt_text", path, 2000, required=True)
            if "image_url" not in el and "slack_file" not in el:
                self.add(path, "image_url or slack_file is required")
            self.string(el, "image_url", path, 3000)
        elif kind == "overflow":
            options = self.list_of(el, "options", path, 5, min_len=1)
            for i, opt in enumerate(options):
                self.option(opt, f"{path}.options[{i}]", plain_only=True)
        elif kind in ("static_select", "multi_static_select"):
            if "options" in el and "option_groups" in el:
                self.add(path, "options and option_groups are mutually exclusive")
            if "option_groups" in el:
                for g, group in enumerate(self.list_of(el, "option_groups", path, 100)):
                    gpath = f"{path}.option_groups[{g}]"
                    if not isinstance(group, dict):
                        self.add(gpath, "must be an option group object")
                        continue
                    self.text(group.get("label"), f"{gpath}.label", 75, plain_only=True)
                    for i, opt in enumerate(self.list_of(group, "options", gpath, 100)):
                        self.option(opt, f"{gpath}.options[{i}]", plain_only=True)
            else:
                for i, opt in enumerate(self.list_of(el, "options", path, 100)):
                    self.option(opt, f"{path}.options[{i}]", plain_only=True)
        elif kind in ("checkboxes", "radio_buttons"):
            for i, opt in enumerate(self.list_of(el, "options", path, 10)):
                self.option(opt, f"{path}.options[{i}]", plain_only=False)
        elif kind == "plain_text_input":
            self.string(el, "initial_value", path, 3000)

    # --- blocks ----------------------------------------------------------------------

    def block(self, block: Any, path: str) -> None:
        if not isinstance(block, dict):
            self.add(path, "must be an object")
            return
        kind = block.get("type")
        if not isinstance(kind, str):
            self.add(f"{path}.type", "is required")
            return
        if kind not in BLOCK_KEYS and kind not in OTHER_BLOCK_TYPES:
            self.add(f"{path}.type", f"unknown block type {kind!r}")
            return
        if kind in MESSAGE_ONLY_BLOCKS and self.surface != "message":
            self.add(f"{path}.type", f"{kind!r} blocks are only allowed in messages")
        self.block_id(block, path)
        if kind in BLOCK_KEYS:
            for key in sorted(set(block) - BLOCK_KEYS[kind] - {"type", "block_id"}):
                self.add(f"{path}.{key}", f"is not a valid property of a {kind} block")
        check = getattr(self, f"block_{kind}", None)
        if check is not None:
            check(block, path)
        self.sdk(block, path)

    def block_section(self, b: Mapping[str, Any], path: str) -> None:
        if b.get("text") is None and b.get("fields") is None:
            self.add(path, "text or fields is required")
        if b.get("text") is not None:
            self.text(b["text"], f"{path}.text", 3000)
        if b.get("fields") is not None:
            for i, field in enumerate(self.list_of(b, "fields", path, 10)):
                self.text(field, f"{path}.fields[{i}]", 2000)
        if b.get("accessory") is not None:
            self.element(b["accessory"], f"{path}.accessory", ACCESSORY_ELEMENTS)

    def block_header(self, b: Mapping[str, Any], path: str) -> None:
        self.text(b.get("text"), f"{path}.text", 150, plain_only=True)

    def block_context(self, b: Mapping[str, Any], path: str) -> None:
        for i, el in enumerate(self.list_of(b, "elements", path, 10)):
            epath = f"{path}.elements[{i}]"
            if isinstance(el, dict) and el.get("type") in ("plain_text", "mrkdwn"):
                self.text(el, epath, 3000)
            else:
                self.element(el, epath, frozenset({"image", "plain_text", "mrkdwn"}))

    def block_actions(self, b: Mapping[str, Any], path: str) -> None:
        for i, el in enumerate(self.list_of(b, "elements", path, 25)):
            self.element(el, f"{path}.elements[{i}]", ACTIONS_ELEMENTS)

    def block_image(self, b: Mapping[str, Any], path: str) -> None:
        if "image_url" not in b and "slack_file" not in b:
            self.add(path, "image_url or slack_file is required")
        self.string(b, "image_url", path, 3000)
        self.string(b, "alt_text", path, 2000, required=True)
        if b.get("title") is not None:
            self.text(b["title"], f"{path}.title", 2000, plain_only=True)

    def block_input(self, b: Mapping[str, Any], path: str) -> None:
        self.text(b.get("label"), f"{path}.label", 2000, plain_only=True)
        if b.get("hint") is not None:
            self.text(b["hint"], f"{path}.hint", 2000, plain_only=True)
        self.element(b.get("element"), f"{path}.element", INPUT_ELEMENTS)

    def block_markdown(self, b: Mapping[str, Any], path: str) -> None:
        self.string(b, "text", path, 12_000, required=True)
        if isinstance(b.get("text"), str):
            self.markdown_total += len(b["text"])

    def block_rich_text(self, b: Mapping[str, Any], path: str) -> None:
        for i, el in enumerate(self.list_of(b, "elements", path, 100)):
            self.rich_text_container(el, f"{path}.elements[{i}]")

    def rich_text_container(self, el: Any, path: str) -> None:
        if not isinstance(el, dict) or el.get("type") not in RICH_TEXT_CONTAINERS:
            self.add(path, f"must be one of {sorted(RICH_TEXT_CONTAINERS)}")
            return
        items = el.get("elements")
        if not isinstance(items, list):
            self.add(f"{path}.elements", "is required and must be an array")
            return
        if el["type"] == "rich_text_list":
            if el.get("style") not in ("bullet", "ordered"):
                self.add(f"{path}.style", "must be bullet or ordered")
            for i, item in enumerate(items):
                self.rich_text_container(item, f"{path}.elements[{i}]")
            return
        for i, item in enumerate(items):
            ipath = f"{path}.elements[{i}]"
            if not isinstance(item, dict) or item.get("type") not in RICH_TEXT_LEAVES:
                self.add(ipath, f"must be one of {sorted(RICH_TEXT_LEAVES)}")
            elif item["type"] == "text" and not isinstance(item.get("text"), str):
                self.add(f"{ipath}.text", "is required and must be a string")
            elif item["type"] == "link" and not isinstance(item.get("url"), str):
                self.add(f"{ipath}.url", "is required and must be a string")

    # --- slack_sdk's own models --------------------------------------------------------

    def sdk(self, block: Mapping[str, Any], path: str) -> None:
        try:
            parsed = Block.parse(dict(block))
            if parsed is not None:
                parsed.to_dict()  # validates nested objects too (validate_json is shallow)
        except Exception as exc:  # slack_sdk raises TypeError/KeyError on missing fields too
            self.add(path, f"slack_sdk: {exc}")

    def run(self, blocks: Any) -> list[str]:
        if not isinstance(blocks, list):
            return ["blocks: must be an array"]
        limit = MAX_BLOCKS.get(self.surface, 50)
        if len(blocks) > limit:
            self.add("blocks", f"must have at most {limit} items, got {len(blocks)}")
        for i, block in enumerate(blocks):
            self.block(block, f"blocks[{i}]")
        if self.markdown_total > MAX_MARKDOWN_TOTAL:
            self.add(
                "blocks",
                f"markdown blocks total {self.markdown_total} characters "
                f"(at most {MAX_MARKDOWN_TOTAL} per payload)",
            )
        return _dedupe(self.out)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def problems(blocks: list[dict[str, Any]], surface: str = "message") -> list[str]:
    """Reasons Slack would refuse ``blocks`` on ``surface`` ("message", "modal", "home")."""
    if surface not in MAX_BLOCKS:
        raise ValueError(f"unknown surface {surface!r}")
    return _Checker(surface).run(blocks)


def message_problems(text: Any = None, blocks: Any = None, attachments: Any = None) -> list[str]:
    """Reasons Slack would refuse a message's ``text`` / ``blocks`` / ``attachments``."""
    out: list[str] = []
    if text is not None and not isinstance(text, str):
        out.append("text: must be a string")
    elif isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
        out.append(f"text: must be at most {MAX_MESSAGE_TEXT} characters, got {len(text)}")
    if blocks is not None:
        out += problems(blocks, "message")
    if attachments is not None:
        if not isinstance(attachments, list):
            out.append("attachments: must be an array")
        else:
            for i, att in enumerate(attachments):
                if not isinstance(att, dict):
                    out.append(f"attachments[{i}]: must be an object")
                elif att.get("blocks") is not None:
                    out += [f"attachments[{i}].{p}" for p in problems(att["blocks"], "message")]
    return out


def view_problems(view: Any) -> list[str]:
    """Reasons Slack would refuse ``view`` in views.open / push / update / publish."""
    if not isinstance(view, dict):
        return ["view: must be an object"]
    kind = view.get("type")
    c = _Checker("modal" if kind == "modal" else "home")
    if kind not in ("modal", "home"):
        c.add("view.type", f"must be modal or home, got {kind!r}")
    for key in sorted(set(view) - VIEW_KEYS):
        c.add(f"view.{key}", "is not a valid property of a view")
    if kind == "modal":
        c.text(view.get("title"), "view.title", 24, plain_only=True)
        for key in ("submit", "close"):
            if view.get(key) is not None:
                c.text(view[key], f"view.{key}", 24, plain_only=True)
        has_input = any(
            isinstance(b, dict) and b.get("type") == "input" for b in view.get("blocks") or []
        )
        if has_input and view.get("submit") is None:
            c.add("view.submit", "is required when the view has input blocks")
    elif kind == "home":
        for key in ("submit", "close"):
            if key in view:
                c.add(f"view.{key}", "is not allowed in a home view")
        if view.get("title") is not None:
            c.text(view["title"], "view.title", 24, plain_only=True)
    c.string(view, "private_metadata", "view", 3000)
    c.string(view, "callback_id", "view", 255)
    c.string(view, "external_id", "view", 255)
    out = list(c.out)
    if "blocks" not in view:
        out.append("view.blocks: is required")
    else:
        surface = "modal" if kind == "modal" else "home"
        out += [f"view.{p}" for p in _Checker(surface).run(view["blocks"])]
    if not out:
        try:
            View(**view).to_dict()
        except Exception as exc:
            out.append(f"view: slack_sdk: {exc}")
    return _dedupe(out)
