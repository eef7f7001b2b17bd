"""A fake Slack Web API, stateful and strict in what it accepts.

Serve ``FakeSlack().app`` with :class:`tests.fakes.server.ThreadedServer` and point
``AsyncWebClient(base_url=f"{server.url}/api/")`` at it. Response URLs for Bolt's
``respond()`` are ``f"{server.url}/respond/{any_id}"``.

The fake answers as Slack does: HTTP 200 with ``{"ok": false, "error": ...}`` for API
errors, HTTP 429 + ``Retry-After`` for rate limits. Every ``blocks`` payload and every
view goes through :mod:`tests.fakes.blockkit`; a refused request lands in
``rejections`` so a test can end with ``assert fake.rejections == []``. Failures
scripted with ``fail_next`` / ``rate_limit_next`` / ``http_error_next`` appear in
``calls`` but not in ``rejections`` (the request itself was fine).

Request arguments are read from the query string, a JSON body or a form body alike;
form/query values that Slack expects as JSON (``blocks``, ``attachments``, ``view``,
``metadata``, ``files``) are decoded from their JSON strings.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from aiohttp import web

from tests.fakes.blockkit import message_problems, view_problems

JSON_FIELDS = ("blocks", "attachments", "view", "metadata", "files")
CHANNEL_RE = re.compile(r"^[CDG][A-Z0-9]{2,}$")
TRIGGER_RE = re.compile(r"^\d+\.\d+\.[A-Za-z0-9]+$")
TS_BASE_US = 1_700_000_000_000_000
MANIFEST = Path(__file__).resolve().parents[2] / "manifest.yml"

# users.conversations: each conversation type needs its own read scope
# (https://api.slack.com/methods/users.conversations: "channels:, groups:, im: or mpim:
# scopes corresponding to the conversation type you're working with").
CONVERSATION_SCOPES = {
    "public_channel": "channels:read",
    "private_channel": "groups:read",
    "mpim": "mpim:read",
    "im": "im:read",
}


def manifest_scopes() -> set[str]:
    """The bot scopes SOPHIE's manifest asks for: the fake grants exactly these."""
    doc = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    return set(doc["oauth_config"]["scopes"]["bot"])


class SlackError(Exception):
    """Raised inside a handler: the request is refused with ``error`` (and ``reasons``)."""

    def __init__(self, error: str, reasons: list[str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.reasons = reasons or []


# --- recorded state ----------------------------------------------------------------------


@dataclass
class Edit:
    """A message's content before one chat.update."""

    text: str | None
    blocks: list[dict[str, Any]] | None
    attachments: list[dict[str, Any]] | None


@dataclass
class Message:
    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None
    user: str = ""
    attachments: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None
    reply_broadcast: bool = False
    edits: list[Edit] = field(default_factory=list)
    deleted: bool = False
    orphan: bool = False  # thread_ts named no message in the channel (Slack accepts it)

    def to_slack(self, bot_id: str, team: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "message",
            "user": self.user,
            "bot_id": bot_id,
            "team": team,
            "text": self.text or "",
            "ts": self.ts,
        }
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.attachments is not None:
            out["attachments"] = self.attachments
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.edits:
            out["edited"] = {"user": self.user, "ts": self.ts}
        return out


@dataclass
class Conversation:
    """A channel-like conversation and who is in it (the bot too, when it was invited)."""

    id: str
    kind: str  # "public_channel" | "private_channel" | "mpim" | "im"
    members: set[str]
    name: str = ""
    archived: bool = False

    def to_slack(self, team: str) -> dict[str, Any]:
        """The limited conversation object users.conversations returns (no is_member,
        no num_members: https://api.slack.com/methods/users.conversations)."""
        if self.kind == "im":
            other = sorted(self.members)[0] if self.members else ""
            return {
                "id": self.id,
                "created": 1_700_000_000,
                "is_im": True,
                "is_org_shared": False,
                "user": other,
                "is_user_deleted": False,
                "priority": 0,
            }
        return {
            "id": self.id,
            "name": self.name,
            "name_normalized": self.name,
            "is_channel": self.kind == "public_channel",
            "is_group": self.kind == "private_channel",
            "is_im": False,
            "is_mpim": self.kind == "mpim",
            "is_private": self.kind != "public_channel",
            "is_archived": self.archived,
            "is_general": False,
            "is_shared": False,
            "is_org_shared": False,
            "is_ext_shared": False,
            "context_team_id": team,
            "created": 1_700_000_000,
            "creator": "",
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
        }


@dataclass
class Ephemeral:
    channel: str
    user: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    message_ts: str


@dataclass
class Response:
    """One POST to a response URL (``/respond/<id>``)."""

    id: str
    body: dict[str, Any]

    @property
    def response_type(self) -> str | None:
        value = self.body.get("response_type")
        return value if isinstance(value, str) else None

    @property
    def replace_original(self) -> bool:
        return _truthy(self.body.get("replace_original"))

    @property
    def delete_original(self) -> bool:
        return _truthy(self.body.get("delete_original"))

    @property
    def text(self) -> str | None:
        value = self.body.get("text")
        return value if isinstance(value, str) else None

    @property
    def blocks(self) -> list[dict[str, Any]] | None:
        value = self.body.get("blocks")
        return value if isinstance(value, list) else None


@dataclass
class ViewCall:
    """One accepted views.open / push / update / publish."""

    action: str  # "open" | "push" | "update" | "publish"
    view_id: str
    view: dict[str, Any]
    trigger_id: str | None = None
    user_id: str | None = None
    external_id: str | None = None


@dataclass
class Upload:
    file_id: str
    filename: str
    length: int
    content: bytes | None = None
    channel_id: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None
    title: str | None = None
    completed: bool = False


@dataclass
class Call:
    method: str  # API method, "respond" or "upload"
    params: dict[str, Any]
    status: int
    ok: bool
    error: str | None = None
    http_method: str = "POST"


@dataclass
class Rejection:
    method: str
    error: str
    reasons: list[str]
    params: dict[str, Any]


@dataclass
class _Fault:
    kind: str  # "fail" | "rate_limit" | "http"
    error: str = "internal_error"
    retry_after: int = 1
    status: int = 503


Handler: TypeAlias = Callable[[dict[str, Any], web.Request], dict[str, Any]]


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true")
    return bool(value)


# --- the fake ------------------------------------------------------------------------------


class FakeSlack:
    def __init__(
        self,
        token: str = "xoxb-test-bot-token",
        team: str = "T0SOPHIE01",
        bot_user: str = "U0SOPHIEBOT",
        users: dict[str, str] | None = None,
        usergroups: dict[str, list[str]] | None = None,
    ) -> None:
        self.token = token
        self.team = team
        self.bot_user = bot_user
        self.bot_id = "B0SOPHIEBOT"
        self.users: dict[str, str] = {bot_user: "sophie", **(users or {})}
        self.strict_users = users is not None  # if given, unknown users are refused
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self.conversations: dict[str, Conversation] = {}
        self.scopes: set[str] = manifest_scopes()
        self.lock = threading.RLock()

        self.messages: list[Message] = []
        self.ephemerals: list[Ephemeral] = []
        self.responses: list[Response] = []
        self.views: list[ViewCall] = []
        self.uploads: list[Upload] = []
        self.calls: list[Call] = []
        self.rejections: list[Rejection] = []
        self.used_triggers: set[str] = set()

        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
        self._call_faults: list[CallFault] = []  # fail_matching()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._live_views: dict[str, ViewCall] = {}  # view_id -> latest
        self._external: dict[str, str] = {}  # external_id -> view_id

        self.handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.delete": self._delete,
            "conversations.replies": self._replies,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroup_users,
            "users.conversations": self._users_conversations,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "files.getUploadURLExternal": self._get_upload_url,
            "files.completeUploadExternal": self._complete_upload,
        }
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/api/{method}", self._api)
        self.app.router.add_post("/respond/{id}", self._respond)
        self.app.router.add_post("/upload/{file_id}", self._upload)

    # --- helpers for tests -----------------------------------------------------------------

    def message(self, channel: str, ts: str) -> Message | None:
        with self.lock:
            for m in self.messages:
                if m.channel == channel and m.ts == ts:
                    return m
        return None

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """Replies in the thread, oldest first, parent excluded (deleted ones included)."""
        with self.lock:
            return [
                m
                for m in self.messages
                if m.channel == channel and m.thread_ts == thread_ts and m.ts != thread_ts
            ]

    def channel_messages(self, channel: str, top_level_only: bool = False) -> list[Message]:
        with self.lock:
            return [
                m
                for m in self.messages
                if m.channel == channel
                and (not top_level_only or m.thread_ts is None or m.thread_ts == m.ts)
            ]

    def add_conversation(
        self,
        channel: str,
        members: list[str],
        kind: str = "public_channel",
        name: str = "",
        archived: bool = False,
        with_bot: bool = True,
    ) -> Conversation:
        """A conversation for users.conversations; the bot is a member unless told not."""
        if kind not in CONVERSATION_SCOPES or not CHANNEL_RE.match(channel):
            raise ValueError(f"bad conversation {channel!r} of kind {kind!r}")
        if (kind == "im") != channel.startswith("D"):
            raise ValueError("direct messages (and only they) have ids starting with D")
        people = set(members) | ({self.bot_user} if with_bot else set())
        conversation = Conversation(channel, kind, people, name or channel.lower(), archived)
        with self.lock:
            self.conversations[channel] = conversation
        return conversation

    def view(self, view_id: str) -> dict[str, Any] | None:
        """The current definition of a view (latest open/push/update/publish)."""
        with self.lock:
            live = self._live_views.get(view_id)
            return live.view if live else None

    def home(self, user_id: str) -> dict[str, Any] | None:
        """The home view last published for ``user_id``."""
        with self.lock:
            for call in reversed(self.views):
                if call.action == "publish" and call.user_id == user_id:
                    return call.view
        return None

    @property
    def orphans(self) -> list[Message]:
        """Messages whose ``thread_ts`` named no message in their channel."""
        with self.lock:
            return [m for m in self.messages if m.orphan]

    def calls_to(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def new_trigger_id(self) -> str:
        return f"{TS_BASE_US // 1_000_000}.{next(self._ids)}.abcdef0123"

    # --- fault injection --------------------------------------------------------------------

    def fail_next(self, method: str, error: str = "internal_error", times: int = 1) -> None:
        with self.lock:
            self._faults[method].extend(_Fault("fail", error=error) for _ in range(times))

    def rate_limit_next(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        with self.lock:
            self._faults[method].extend(
                _Fault("rate_limit", retry_after=retry_after) for _ in range(times)
            )

    def http_error_next(self, method: str, status: int = 503, times: int = 1) -> None:
        with self.lock:
            self._faults[method].extend(_Fault("http", status=status) for _ in range(times))

    # --- plumbing ---------------------------------------------------------------------------

    def _new_ts(self) -> str:
        us = TS_BASE_US + 100 * next(self._ts)
        return f"{us // 1_000_000}.{us % 1_000_000:06d}"

    def _record(
        self,
        method: str,
        params: dict[str, Any],
        status: int,
        error: str | None,
        http_method: str,
        reasons: list[str] | None = None,
        scripted: bool = False,
    ) -> None:
        with self.lock:
            self.calls.append(Call(method, params, status, error is None, error, http_method))
            if error is not None and not scripted:
                self.rejections.append(Rejection(method, error, reasons or [], params))

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError as exc:
                    raise SlackError("invalid_json", [str(exc)]) from exc
                if not isinstance(body, dict):
                    raise SlackError("invalid_json", ["body must be a JSON object"])
                params.update(body)
            elif request.content_type in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            ):
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
            else:
                await request.read()
        for key in JSON_FIELDS:
            value = params.get(key)
            if isinstance(value, str):
                try:
                    params[key] = json.loads(value)
                except ValueError as exc:
                    err = "invalid_blocks_format" if key == "blocks" else "invalid_arguments"
                    raise SlackError(err, [f"{key}: not valid JSON ({exc})"]) from exc
        return params

    def _token(self, request: web.Request, params: dict[str, Any]) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :].strip() or None
        token = params.pop("token", None)
        return token if isinstance(token, str) and token else None

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        try:
            params = await self._params(request)
        except SlackError as exc:
            self._record(method, {}, 200, exc.error, request.method, exc.reasons)
            return web.json_response({"ok": False, "error": exc.error, "errors": exc.reasons})
        token = self._token(request, params)
        params.pop("token", None)
        handler = self.handlers.get(method)
        if handler is None:
            return self._refuse(method, params, request, "unknown_method")
        if token is None:
            return self._refuse(method, params, request, "not_authed")
        if token != self.token:
            return self._refuse(method, params, request, "invalid_auth")
        with self.lock:
            fault = self._faults[method].popleft() if self._faults[method] else None
        if fault is None:
            fault = self._matching_fault(method, params)
        if fault is not None:
            return self._fault(method, params, request, fault)
        try:
            with self.lock:
                body = handler(params, request)
        except SlackError as exc:
            return self._refuse(method, params, request, exc.error, exc.reasons)
        self._record(method, params, 200, None, request.method)
        return web.json_response({"ok": True, **body})

    def _refuse(
        self,
        method: str,
        params: dict[str, Any],
        request: web.Request,
        error: str,
        reasons: list[str] | None = None,
    ) -> web.Response:
        self._record(method, params, 200, error, request.method, reasons)
        body: dict[str, Any] = {"ok": False, "error": error}
        if reasons:
            if error == "invalid_blocks":
                body["errors"] = reasons
            body["response_metadata"] = {"messages": [f"[ERROR] {r}" for r in reasons]}
        return web.json_response(body)

    def _fault(
        self, method: str, params: dict[str, Any], request: web.Request, fault: _Fault
    ) -> web.Response:
        if fault.kind == "rate_limit":
            self._record(method, params, 429, "ratelimited", request.method, scripted=True)
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(fault.retry_after)},
            )
        if fault.kind == "http":
            self._record(method, params, fault.status, "http_error", request.method, scripted=True)
            return web.Response(status=fault.status, text="Service Unavailable")
        self._record(method, params, 200, fault.error, request.method, scripted=True)
        return web.json_response({"ok": False, "error": fault.error})

    # --- argument checks -------------------------------------------------------------------

    @staticmethod
    def _require(params: dict[str, Any], *names: str) -> None:
        missing = [n for n in names if params.get(n) in (None, "")]
        if missing:
            raise SlackError("invalid_arguments", [f"missing required field: {n}" for n in missing])

    @staticmethod
    def _channel(params: dict[str, Any], key: str = "channel") -> str:
        channel = params.get(key)
        if channel in (None, ""):
            raise SlackError("channel_not_found", [f"missing required field: {key}"])
        if not isinstance(channel, str) or not CHANNEL_RE.match(channel):
            raise SlackError("channel_not_found", [f"{key}: {channel!r} is not a channel id"])
        return channel

    @staticmethod
    def _content(params: dict[str, Any]) -> tuple[str | None, Any, Any]:
        text, blocks, attachments = (
            params.get("text"),
            params.get("blocks"),
            params.get("attachments"),
        )
        if text in (None, "") and not blocks and not attachments:
            raise SlackError("no_text")
        if isinstance(text, str) and len(text) > 40_000:
            raise SlackError("msg_too_long", [f"text is {len(text)} characters (max 40000)"])
        reasons = message_problems(text, blocks, attachments)
        if reasons:
            raise SlackError("invalid_blocks", reasons)
        return text, blocks, attachments

    def _find(self, channel: str, ts: str) -> Message | None:
        for m in self.messages:
            if m.channel == channel and m.ts == ts and not m.deleted:
                return m
        return None

    # --- methods ---------------------------------------------------------------------------

    def _auth_test(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {
            "url": "https://sophie-test.slack.com/",
            "team": "SOPHIE Test",
            "user": self.users[self.bot_user],
            "team_id": self.team,
            "user_id": self.bot_user,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _post_message(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(params)
        text, blocks, attachments = self._content(params)
        thread_ts = params.get("thread_ts") or None
        orphan = thread_ts is not None and self._find(channel, str(thread_ts)) is None
        msg = Message(
            channel=channel,
            ts=self._new_ts(),
            text=text,
            blocks=blocks,
            thread_ts=str(thread_ts) if thread_ts else None,
            user=self.bot_user,
            attachments=attachments,
            metadata=params.get("metadata"),
            reply_broadcast=_truthy(params.get("reply_broadcast")),
            orphan=orphan,
        )
        self.messages.append(msg)
        return {
            "channel": channel,
            "ts": msg.ts,
            "message": msg.to_slack(self.bot_id, self.team),
        }

    def _update(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(params)
        self._require(params, "ts")
        msg = self._find(channel, str(params["ts"]))
        if msg is None:
            raise SlackError("message_not_found")
        new_text = params.get("text", msg.text)
        new_blocks = params["blocks"] if "blocks" in params else msg.blocks
        new_atts = params["attachments"] if "attachments" in params else msg.attachments
        self._content({"text": new_text, "blocks": new_blocks, "attachments": new_atts})
        msg.edits.append(Edit(msg.text, msg.blocks, msg.attachments))
        msg.text, msg.blocks, msg.attachments = new_text, new_blocks, new_atts
        if "metadata" in params:
            msg.metadata = params["metadata"]
        return {
            "channel": channel,
            "ts": msg.ts,
            "text": msg.text or "",
            "message": msg.to_slack(self.bot_id, self.team),
        }

    def _post_ephemeral(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(params)
        self._require(params, "user")
        user = str(params["user"])
        if user not in self.users and self.strict_users:
            raise SlackError("user_not_in_channel")
        text, blocks, _ = self._content(params)
        ts = self._new_ts()
        thread_ts = params.get("thread_ts") or None
        self.ephemerals.append(
            Ephemeral(channel, user, text, blocks, str(thread_ts) if thread_ts else None, ts)
        )
        return {"message_ts": ts}

    def _delete(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(params)
        self._require(params, "ts")
        msg = self._find(channel, str(params["ts"]))
        if msg is None:
            raise SlackError("message_not_found")
        msg.deleted = True
        return {"channel": channel, "ts": msg.ts}

    def _replies(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel(params)
        self._require(params, "ts")
        ts = str(params["ts"])
        parent = self._find(channel, ts)
        if parent is None:
            return self._replies_under_a_persons_message(channel, ts)
        root = parent.thread_ts or parent.ts
        root_msg = self._find(channel, root)
        replies = [m for m in self.thread(channel, root) if not m.deleted]
        out = [m.to_slack(self.bot_id, self.team) for m in ([root_msg] if root_msg else [])]
        if out:
            out[0]["thread_ts"] = root
            out[0]["reply_count"] = len(replies)
        out += [m.to_slack(self.bot_id, self.team) for m in replies]
        return {"messages": out, "has_more": False, "response_metadata": {"next_cursor": ""}}

    def _users_info(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        self._require(params, "user")
        uid = str(params["user"])
        if uid not in self.users:
            raise SlackError("user_not_found")
        name = self.users[uid]
        return {
            "user": {
                "id": uid,
                "team_id": self.team,
                "name": name,
                "real_name": name,
                "deleted": False,
                "is_bot": uid == self.bot_user,
                "tz": "Etc/UTC",
                "profile": {"display_name": name, "real_name": name},
            }
        }

    def _usergroup_users(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        self._require(params, "usergroup")
        group = str(params["usergroup"])
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def _users_conversations(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        """users.conversations with a bot token (https://api.slack.com/methods/users.conversations).

        "Using a bot user token, this method returns the channels and conversations your
        bot is party to. Specifying a user parameter filters to conversations your bot
        shares with that user." Types default to public_channel; each type needs its read
        scope; limit is at most 1000 (default 100); cursor-paginated. Errors follow
        Slack's conversations.* methods (invalid_types, invalid_limit, invalid_cursor,
        missing_scope, user_not_found); unsure cases are refused.
        """
        raw_types = params.get("types", "public_channel")
        types = [t.strip() for t in str(raw_types).split(",")] if raw_types != "" else []
        if not types or any(t not in CONVERSATION_SCOPES for t in types):
            raise SlackError("invalid_types", [f"types: {raw_types!r}"])
        missing = sorted({CONVERSATION_SCOPES[t] for t in types} - self.scopes)
        if missing:
            raise SlackError("missing_scope", [f"needed: {', '.join(missing)}"])
        try:
            limit = int(params.get("limit", 100))
        except (TypeError, ValueError) as exc:
            raise SlackError("invalid_limit", ["limit must be an integer"]) from exc
        if not 1 <= limit <= 1000:
            raise SlackError("invalid_limit", ["limit must be between 1 and 1000"])
        offset = 0
        cursor = params.get("cursor") or ""
        if cursor:
            try:
                kind, _, number = (
                    base64.b64decode(str(cursor), validate=True).decode().partition(":")
                )
                offset = int(number)
            except (ValueError, UnicodeDecodeError) as exc:
                raise SlackError("invalid_cursor") from exc
            if kind != "offset" or offset < 0:
                raise SlackError("invalid_cursor")
        user = params.get("user")
        if user not in (None, "") and str(user) not in self.users and self.strict_users:
            raise SlackError("user_not_found")
        exclude_archived = _truthy(params.get("exclude_archived", False))
        found = [
            c
            for c in self.conversations.values()
            if c.kind in types
            and self.bot_user in c.members
            and (not user or str(user) in c.members)
            and not (exclude_archived and c.archived)
        ]
        page = found[offset : offset + limit]
        more = offset + limit < len(found)
        next_cursor = base64.b64encode(f"offset:{offset + limit}".encode()).decode() if more else ""
        return {
            "channels": [c.to_slack(self.team) for c in page],
            "response_metadata": {"next_cursor": next_cursor},
        }

    # --- views -----------------------------------------------------------------------------

    def _checked_view(self, params: dict[str, Any], want: str | None) -> dict[str, Any]:
        view = params.get("view")
        if view is None:
            raise SlackError("invalid_arguments", ["missing required field: view"])
        reasons = view_problems(view)
        if not reasons and want is not None and view.get("type") != want:
            reasons = [f"view.type: must be {want}"]
        if reasons:
            raise SlackError("invalid_arguments", reasons)
        return dict(view)

    def _trigger(self, params: dict[str, Any]) -> str:
        trigger = params.get("trigger_id") or params.get("interactivity_pointer")
        if not isinstance(trigger, str) or not TRIGGER_RE.match(trigger):
            raise SlackError("invalid_trigger_id")
        if trigger in self.used_triggers:
            raise SlackError("expired_trigger_id")
        return trigger

    def _store_view(self, call: ViewCall) -> dict[str, Any]:
        self.views.append(call)
        self._live_views[call.view_id] = call
        if call.external_id:
            self._external[call.external_id] = call.view_id
        v = call.view
        return {
            "view": {
                "id": call.view_id,
                "team_id": self.team,
                "type": v.get("type"),
                "title": v.get("title"),
                "blocks": v.get("blocks", []),
                "close": v.get("close"),
                "submit": v.get("submit"),
                "private_metadata": v.get("private_metadata", ""),
                "callback_id": v.get("callback_id", ""),
                "external_id": v.get("external_id", ""),
                "state": {"values": {}},
                "hash": f"{call.view_id}.{len(self.views)}",
                "root_view_id": call.view_id,
                "previous_view_id": None,
                "app_id": "A0SOPHIE01",
                "bot_id": self.bot_id,
            }
        }

    def _new_view_id(self) -> str:
        return f"V{next(self._ids):010d}"

    def _views_open(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        trigger = self._trigger(params)
        view = self._checked_view(params, "modal")
        if view.get("external_id") in self._external:
            raise SlackError("duplicate_external_id")
        self.used_triggers.add(trigger)
        return self._store_view(
            ViewCall("open", self._new_view_id(), view, trigger, None, view.get("external_id"))
        )

    def _views_push(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        trigger = self._trigger(params)
        view = self._checked_view(params, "modal")
        self.used_triggers.add(trigger)
        return self._store_view(
            ViewCall("push", self._new_view_id(), view, trigger, None, view.get("external_id"))
        )

    def _views_update(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        view_id, external_id = params.get("view_id"), params.get("external_id")
        if not view_id and not external_id:
            raise SlackError("invalid_arguments", ["view_id or external_id is required"])
        if not view_id:
            view_id = self._external.get(str(external_id))
        if not view_id or view_id not in self._live_views:
            raise SlackError("not_found")
        old = self._live_views[view_id]
        view = self._checked_view(params, None)
        if view.get("type") != old.view.get("type"):
            raise SlackError("invalid_arguments", ["view.type: cannot change a view's type"])
        return self._store_view(
            ViewCall("update", view_id, view, None, old.user_id, old.external_id)
        )

    def _views_publish(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        self._require(params, "user_id")
        user_id = str(params["user_id"])
        if user_id not in self.users and self.strict_users:
            raise SlackError("user_not_found")
        view = self._checked_view(params, "home")
        existing = next(
            (
                c.view_id
                for c in reversed(self.views)
                if c.action == "publish" and c.user_id == user_id
            ),
            None,
        )
        return self._store_view(
            ViewCall("publish", existing or self._new_view_id(), view, None, user_id)
        )

    # --- files -----------------------------------------------------------------------------

    def _get_upload_url(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        self._require(params, "filename", "length")
        try:
            length = int(params["length"])
        except (TypeError, ValueError) as exc:
            raise SlackError("invalid_arguments", ["length must be an integer"]) from exc
        file_id = f"F{next(self._ids):010d}"
        self.uploads.append(Upload(file_id, str(params["filename"]), length))
        base = f"{request.scheme}://{request.host}"
        return {"upload_url": f"{base}/upload/{file_id}", "file_id": file_id}

    def _complete_upload(self, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        files = params.get("files")
        if not isinstance(files, list) or not files:
            raise SlackError("invalid_arguments", ["files must be a non-empty JSON array"])
        channel = params.get("channel_id")
        if channel is not None:
            self._channel(params, "channel_id")
        out = []
        for f in files:
            up = next((u for u in self.uploads if u.file_id == f.get("id")), None)
            if up is None or up.content is None or up.completed:
                raise SlackError("file_not_found", [f"file {f.get('id')!r} was not uploaded"])
            up.completed = True
            up.title = f.get("title")
            up.channel_id = channel
            up.thread_ts = params.get("thread_ts")
            up.initial_comment = params.get("initial_comment")
            out.append({"id": up.file_id, "title": up.title or up.filename})
        return {"files": out}

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        data = await request.read()
        with self.lock:
            up = next((u for u in self.uploads if u.file_id == file_id), None)
            if up is None:
                self._record("upload", {"file_id": file_id}, 404, "not_found", "POST")
                return web.Response(status=404, text="Not Found")
            if len(data) != up.length:
                reason = f"uploaded {len(data)} bytes, announced {up.length}"
                self._record("upload", {"file_id": file_id}, 400, "bad_length", "POST", [reason])
                return web.Response(status=400, text=reason)
            up.content = data
            self._record("upload", {"file_id": file_id}, 200, None, "POST")
        return web.Response(text=f"OK - {len(data)}")

    # --- response_url ----------------------------------------------------------------------

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        error: str | None = None
        reasons: list[str] = []
        if not isinstance(body, dict):
            error, reasons, body = "invalid_payload", ["body must be a JSON object"], {}
        elif not _truthy(body.get("delete_original")):
            try:
                self._content(body)
            except SlackError as exc:
                error, reasons = exc.error, exc.reasons
            if body.get("response_type") not in (None, "ephemeral", "in_channel"):
                error = error or "invalid_payload"
                reasons.append("response_type must be ephemeral or in_channel")
        params = {"id": rid, **body}
        if error is not None:
            self._record("respond", params, 400, error, "POST", reasons)
            return web.json_response({"ok": False, "error": error, "errors": reasons}, status=400)
        with self.lock:
            self.responses.append(Response(rid, body))
        self._record("respond", params, 200, None, "POST")
        return web.json_response({"ok": True})

    # --- faults at chosen calls (the fault suite) -------------------------------------------

    def fail_matching(
        self,
        method: str,
        where: Callable[[dict[str, Any]], bool],
        *,
        status: int = 503,
        retry_after: int = 1,
        error: str = "internal_error",
        nth: int = 1,
        times: int = 1,
    ) -> CallFault:
        """Fail the calls to ``method`` whose arguments satisfy ``where`` (e.g. only the
        chat.postMessage that carries the plan card), from the ``nth`` such call on,
        ``times`` times. Nothing is posted or changed by a failed call.

        ``status`` 429: rate limited as Slack documents it, HTTP 429 with a
        ``Retry-After`` header (seconds) and ``{"ok": false, "error": "ratelimited"}``
        (https://api.slack.com/docs/rate-limits, "Responding to rate limiting
        conditions"). 5xx: that status with a non-JSON body, as from Slack's edge when
        the service is unavailable (stricter than Slack's JSON errors: a client must
        not need the body). 200: ``{"ok": false, "error": error}``, how Slack reports
        ``internal_error`` / ``fatal_error`` / ``service_unavailable``.
        """
        if status == 429:
            fault = _Fault("rate_limit", retry_after=retry_after)
        elif status >= 500:
            fault = _Fault("http", status=status)
        elif status == 200:
            fault = _Fault("fail", error=error)
        else:
            raise ValueError(f"status must be 200, 429 or 5xx, not {status}")
        found = CallFault(method, where, fault, nth, times)
        with self.lock:
            self._call_faults.append(found)
        return found

    def _matching_fault(self, method: str, params: dict[str, Any]) -> _Fault | None:
        with self.lock:
            for found in self._call_faults:
                if found.method == method and found.take(params):
                    return found.fault
        return None

    # --- threads under a person's message -----------------------------------------------------

    def _replies_under_a_persons_message(self, channel: str, ts: str) -> dict[str, Any]:
        """conversations.replies for a thread whose parent the fake never saw: a person's
        message (a mention starts the thread there; tests post it as an event, not through
        this API). In Slack the parent exists; here its replies prove it did. With no
        replies either, the thread is unknown, as Slack says."""
        replies = [m for m in self.thread(channel, ts) if not m.deleted]
        if not replies:
            raise SlackError("thread_not_found")
        out = [m.to_slack(self.bot_id, self.team) for m in replies]
        return {"messages": out, "has_more": False, "response_metadata": {"next_cursor": ""}}


@dataclass
class CallFault:
    """A fault on the calls that match; ``hits`` counts those it failed."""

    method: str
    where: Callable[[dict[str, Any]], bool]
    fault: _Fault
    nth: int = 1
    times: int = 1
    seen: int = 0
    hits: int = 0

    def take(self, params: dict[str, Any]) -> bool:
        try:
            matches = bool(self.where(params))
        except (KeyError, TypeError, ValueError, AttributeError):
            matches = False
        if not matches:
            return False
        self.seen += 1
        if self.seen < self.nth or self.hits >= self.times:
            return False
        self.hits += 1
        return True
