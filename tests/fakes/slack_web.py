"""A stateful fake of Slack's Web API (and of response_url), strict in what it accepts.

Serve ``FakeSlack().app`` with :class:`tests.fakes.server.ThreadedServer` and set
``SLACK_API_URL`` to ``<url>/api/``. Messages are recorded by channel and thread;
every blocks payload and view is checked against Block Kit (``block_kit.problems``)
and refused with Slack's error shape when it breaks a rule. Everything refused is
also kept in ``rejections``, so a test can assert that the app sent nothing Slack
would have turned down.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes import block_kit


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    user: str
    edits: list[dict[str, Any]] = field(default_factory=list)  # earlier versions
    deleted: bool = False
    unfurl_links: bool | None = None


@dataclass
class Ephemeral:
    channel: str
    user: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None


@dataclass
class Response:
    """A POST to a response_url (Bolt's ``respond``)."""

    id: str
    body: dict[str, Any]


@dataclass
class View:
    id: str
    view: dict[str, Any]
    trigger_id: str | None = None
    user_id: str | None = None
    updates: int = 0


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int
    ok: bool
    error: str | None


@dataclass
class Rejection:
    method: str
    error: str
    reasons: list[str]
    params: dict[str, Any]


@dataclass
class _Fault:
    kind: str  # "error" | "ratelimit" | "http"
    value: Any
    times: int


class _Refuse(Exception):
    def __init__(self, error: str, reasons: list[str] | None = None, status: int = 200) -> None:
        super().__init__(error)
        self.error = error
        self.reasons = reasons or []
        self.status = status


def _channel_ok(channel: Any) -> bool:
    return isinstance(channel, str) and channel[:1] in ("C", "D", "G") and len(channel) >= 3


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
        self.users = dict(users or {})
        self.usergroups = {k: list(v) for k, v in (usergroups or {}).items()}
        self.messages: list[Message] = []
        self.ephemerals: list[Ephemeral] = []
        self.responses: list[Response] = []
        self.views: list[View] = []
        self.calls: list[Call] = []
        self.rejections: list[Rejection] = []
        self._used_triggers: set[str] = set()
        self._faults: dict[str, list[_Fault]] = {}
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_route("*", "/api/{method}", self._api)
        self.app.router.add_post("/respond/{rid}", self._respond)
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.delete": self._delete,
            "conversations.replies": self._replies,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroup_users,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "views.push": self._views_push,
            "views.publish": self._views_publish,
        }

    # -- reading state (tests) -----------------------------------------------------

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """Replies in a thread, oldest first (not the parent)."""
        with self._lock:
            return [
                m
                for m in self.messages
                if m.channel == channel and m.thread_ts == thread_ts and not m.deleted
            ]

    def message(self, channel: str, ts: str) -> Message | None:
        with self._lock:
            return next((m for m in self.messages if m.channel == channel and m.ts == ts), None)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in list(self.calls) if c.method == method]

    # -- faults (tests) ------------------------------------------------------------

    def fail_next(self, method: str, error: str = "internal_error", times: int = 1) -> None:
        self._add_fault(method, _Fault("error", error, times))

    def rate_limit_next(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        self._add_fault(method, _Fault("ratelimit", retry_after, times))

    def http_error_next(self, method: str, status: int = 503, times: int = 1) -> None:
        self._add_fault(method, _Fault("http", status, times))

    def _add_fault(self, method: str, fault: _Fault) -> None:
        with self._lock:
            self._faults.setdefault(method, []).append(fault)

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(method) or []
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            return fault

    # -- HTTP ----------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        if raw:
            if ctype.startswith("application/json"):
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise _Refuse("invalid_json") from exc
                if not isinstance(body, dict):
                    raise _Refuse("invalid_json")
                params.update(body)
            else:
                params.update(dict(parse_qsl(raw.decode(), keep_blank_values=True)))
        # Form-encoded clients send JSON-valued arguments as strings.
        for key in ("blocks", "attachments", "view"):
            if isinstance(params.get(key), str) and params[key]:
                try:
                    params[key] = json.loads(params[key])
                except ValueError as exc:
                    raise _Refuse("invalid_arguments", [f"{key} is not JSON"]) from exc
        return params

    def _authorise(self, request: web.Request, params: dict[str, Any]) -> None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        token = token or params.pop("token", None)
        if not token:
            raise _Refuse("not_authed")
        if token != self.token:
            raise _Refuse("invalid_auth")

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        try:
            params = await self._params(request)
            self._authorise(request, params)
            fault = self._take_fault(method)
            if fault is not None:
                if fault.kind == "ratelimit":
                    self._record(method, params, 429, "ratelimited")
                    return web.json_response(
                        {"ok": False, "error": "ratelimited"},
                        status=429,
                        headers={"Retry-After": str(fault.value)},
                    )
                if fault.kind == "http":
                    self._record(method, params, int(fault.value), "http_error")
                    return web.Response(status=int(fault.value), text="upstream error")
                raise _Refuse(str(fault.value))
            handler = self._methods.get(method)
            if handler is None:
                raise _Refuse("unknown_method")
            with self._lock:
                result = handler(params)
        except _Refuse as exc:
            with self._lock:
                self.rejections.append(Rejection(method, exc.error, exc.reasons, params))
            self._record(method, params, exc.status, exc.error)
            body: dict[str, Any] = {"ok": False, "error": exc.error}
            if exc.reasons:
                body["errors"] = exc.reasons
                body["response_metadata"] = {"messages": [f"[ERROR] {r}" for r in exc.reasons]}
            return web.json_response(body, status=exc.status)
        self._record(method, params, 200, None)
        return web.json_response({"ok": True, **result})

    def _record(self, method: str, params: dict[str, Any], status: int, error: str | None) -> None:
        with self._lock:
            self.calls.append(Call(method, params, status, error is None, error))

    async def _respond(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        reasons = []
        if "blocks" in body:
            reasons = block_kit.problems(body["blocks"], "message")
        if not body.get("text") and not body.get("blocks") and not body.get("delete_original"):
            reasons.append("no_text")
        if reasons:
            with self._lock:
                self.rejections.append(Rejection("response_url", "invalid_blocks", reasons, body))
            return web.Response(status=400, text="invalid_blocks")
        with self._lock:
            self.responses.append(Response(rid, body))
        return web.Response(text="ok")

    # -- methods (called with the lock held) ---------------------------------------

    def _ts(self) -> str:
        return f"{1_700_000_000 + next(self._clock)}.{int(time.time() * 1e6) % 1_000_000:06d}"

    def _require(self, params: dict[str, Any], *names: str) -> None:
        missing = [n for n in names if not params.get(n)]
        if missing:
            raise _Refuse("invalid_arguments", [f"missing required argument {n}" for n in missing])

    def _content(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]] | None]:
        text = params.get("text") or ""
        blocks = params.get("blocks")
        if not text and not blocks and not params.get("attachments"):
            raise _Refuse("no_text")
        if not isinstance(text, str) or len(text) > block_kit.MAX_MESSAGE_TEXT:
            raise _Refuse("msg_too_long")
        reasons = []
        if blocks is not None:
            reasons += block_kit.problems(blocks, "message")
        for n, attachment in enumerate(params.get("attachments") or []):
            if isinstance(attachment, dict) and "blocks" in attachment:
                reasons += [
                    f"attachments[{n}]: {r}" for r in block_kit.problems(attachment["blocks"])
                ]
        if reasons:
            raise _Refuse("invalid_blocks", reasons)
        return text, blocks

    def _channel(self, params: dict[str, Any]) -> str:
        channel = params.get("channel")
        if not channel:
            raise _Refuse("channel_not_found")
        if not _channel_ok(channel):
            raise _Refuse("channel_not_found")
        return str(channel)

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://sophie.slack.com/",
            "team": "SOPHIE",
            "user": "sophie",
            "team_id": self.team,
            "user_id": self.bot_user,
            "bot_id": "B0SOPHIEBOT",
            "is_enterprise_install": False,
        }

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        text, blocks = self._content(params)
        thread_ts = params.get("thread_ts") or None
        message = Message(
            channel=channel,
            ts=self._ts(),
            text=text,
            blocks=blocks,
            thread_ts=str(thread_ts) if thread_ts else None,
            user=self.bot_user,
            unfurl_links=params.get("unfurl_links"),
        )
        self.messages.append(message)
        return {"channel": channel, "ts": message.ts, "message": self._shape(message)}

    def _shape(self, m: Message) -> dict[str, Any]:
        shaped: dict[str, Any] = {"type": "message", "user": m.user, "text": m.text, "ts": m.ts}
        if m.blocks is not None:
            shaped["blocks"] = m.blocks
        if m.thread_ts:
            shaped["thread_ts"] = m.thread_ts
        return shaped

    def _find(self, channel: str, ts: Any) -> Message:
        found = next(
            (m for m in self.messages if m.channel == channel and m.ts == ts and not m.deleted),
            None,
        )
        if found is None:
            raise _Refuse("message_not_found")
        return found

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        self._require(params, "ts")
        message = self._find(channel, params["ts"])
        text, blocks = self._content(params)
        message.edits.append({"text": message.text, "blocks": message.blocks})
        message.text = text
        if "blocks" in params:
            message.blocks = blocks
        return {"channel": channel, "ts": message.ts, "text": text}

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        self._require(params, "user")
        text, blocks = self._content(params)
        self.ephemerals.append(
            Ephemeral(channel, str(params["user"]), text, blocks, params.get("thread_ts") or None)
        )
        return {"message_ts": self._ts()}

    def _delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        self._require(params, "ts")
        self._find(channel, params["ts"]).deleted = True
        return {"channel": channel, "ts": params["ts"]}

    def _replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        self._require(params, "ts")
        parent = next(
            (m for m in self.messages if m.channel == channel and m.ts == params["ts"]), None
        )
        replies = [m for m in self.messages if m.channel == channel and m.thread_ts == params["ts"]]
        if parent is None and not replies:
            raise _Refuse("thread_not_found")
        shaped = [self._shape(m) for m in ([parent] if parent else []) + replies if not m.deleted]
        return {"messages": shaped, "has_more": False}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "user")
        name = self.users.get(str(params["user"]))
        if name is None:
            raise _Refuse("user_not_found")
        return {"user": {"id": params["user"], "name": name, "team_id": self.team}}

    def _usergroup_users(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "usergroup")
        group = self.usergroups.get(str(params["usergroup"]))
        if group is None:
            raise _Refuse("no_such_subteam")
        return {"users": list(group)}

    def _check_view(self, view: Any) -> dict[str, Any]:
        reasons = block_kit.view_problems(view)
        if reasons:
            raise _Refuse("invalid_arguments", reasons)
        assert isinstance(view, dict)
        return view

    def _trigger(self, params: dict[str, Any]) -> str:
        trigger = params.get("trigger_id")
        if not trigger:
            raise _Refuse("invalid_trigger_id")
        if trigger in self._used_triggers:
            raise _Refuse("expired_trigger_id")
        self._used_triggers.add(str(trigger))
        return str(trigger)

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._check_view(params.get("view"))
        trigger = self._trigger(params)
        opened = View(id=f"V{uuid.uuid4().hex[:10].upper()}", view=view, trigger_id=trigger)
        self.views.append(opened)
        return {"view": {"id": opened.id, **view}}

    def _views_push(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._views_open(params)

    def _views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._check_view(params.get("view"))
        target = params.get("view_id")
        found = next((v for v in self.views if v.id == target), None)
        if found is None:
            raise _Refuse("not_found")
        found.view = view
        found.updates += 1
        return {"view": {"id": found.id, **view}}

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "user_id")
        view = self._check_view(params.get("view"))
        if view.get("type") != "home":
            raise _Refuse("invalid_arguments", ["views.publish takes a home view"])
        published = View(
            id=f"V{uuid.uuid4().hex[:10].upper()}", view=view, user_id=params["user_id"]
        )
        self.views.append(published)
        return {"view": {"id": published.id, **view}}
