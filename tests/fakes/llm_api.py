"""A fake OpenRouter chat-completions API, strict in what it accepts.

Serve ``FakeLLM().app`` with :class:`tests.fakes.server.ThreadedServer` and point the
``openai`` client at ``<server.url>/api/v1``. The fake refuses what the real services
refuse (bad keys, malformed bodies, schemas that OpenAI's strict structured outputs
reject) so that a request the app gets past the fake has a fair chance upstream too.

Replies are scripted per model and consumed in order; when a model's queue is empty
``FakeLLM.default`` answers. The reply kinds cover the failure shapes the app must
survive: HTTP errors (with ``Retry-After``), OpenRouter's HTTP 200 carrying an
``error`` object, errors in the middle of an SSE stream, slow answers, truncation
(``finish_reason: "length"``) and refusals.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

# --- replies -------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """An assistant message; ``text`` is sent verbatim (it need not be valid JSON)."""

    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Refusal:
    """OpenAI's structured-output refusal: ``message.refusal`` set, ``content`` null."""

    text: str


@dataclass(frozen=True)
class HTTPError:
    """An error status with OpenRouter's ``{"error": {"code", "message"}}`` body."""

    status: int
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class LateError:
    """The provider failed after OpenRouter had committed to HTTP 200.

    Non-streaming: the 200 body is ``{"error": {...}}`` with no ``choices``.
    Streaming: ``partial`` is streamed as content, then a chunk carrying ``error``
    (``finish_reason: "error"``) ends the stream without ``[DONE]``.
    """

    code: int
    message: str
    partial: str = ""


@dataclass(frozen=True)
class Slow:
    """Wait ``seconds`` (asynchronously: other requests proceed), then answer ``then``."""

    seconds: float
    then: Reply


@dataclass(frozen=True)
class ToolCall:
    """One function call by the model; ``arguments`` is sent verbatim (models do send
    invalid JSON now and then) and ``id`` is generated when empty."""

    name: str
    arguments: str
    id: str = ""


@dataclass(frozen=True)
class ToolCalls:
    """An assistant message calling tools: ``tool_calls`` set, ``content`` null unless
    given, ``finish_reason: "tool_calls"`` (OpenAI's chat completion object,
    https://platform.openai.com/docs/api-reference/chat/object; OpenRouter returns the same
    shape for every provider, https://openrouter.ai/docs/features/tool-calling)."""

    calls: tuple[ToolCall, ...]
    content: str | None = None


Reply: TypeAlias = Content | Refusal | HTTPError | LateError | Slow | ToolCalls
Responder: TypeAlias = Callable[[str, dict[str, Any]], Reply]


def _text(obj: object) -> str:
    return obj if isinstance(obj, str) else json.dumps(obj)


def content(obj: object) -> Content:
    """Answer with ``obj``: a str is sent as is, anything else as its JSON."""
    return Content(_text(obj))


def truncated(obj: object, keep: float = 0.5) -> Content:
    """Answer with the first ``keep`` fraction of ``obj``'s text, as a max_tokens cut does."""
    text = _text(obj)
    return Content(text[: max(1, int(len(text) * keep))], finish_reason="length")


def refusal(text: str) -> Refusal:
    return Refusal(text)


def error(status: int, message: str, retry_after: float | None = None) -> HTTPError:
    """HTTP ``status`` (e.g. 402, 429, 500, 502, 503); ``retry_after`` sets ``Retry-After``."""
    if not 400 <= status <= 599:
        raise ValueError(f"error status must be 4xx or 5xx, got {status}")
    return HTTPError(status, message, retry_after)


def error_in_200(code: int, message: str) -> LateError:
    return LateError(code, message)


def error_mid_stream(
    code: int = 502, message: str = "Provider disconnected unexpectedly", partial: str = '{"'
) -> LateError:
    return LateError(code, message, partial)


def slow(seconds: float, then: Reply) -> Slow:
    return Slow(seconds, then)


def tool_call(name: str, arguments: object = None, **kwargs: object) -> ToolCall:
    """A call of ``name`` with ``kwargs`` as its JSON arguments, or ``arguments`` verbatim
    when it is a str (to script malformed arguments), or its JSON otherwise."""
    if isinstance(arguments, str):
        return ToolCall(name, arguments)
    return ToolCall(name, json.dumps(kwargs if arguments is None else arguments))


def tool_calls(*calls: ToolCall, content: str | None = None) -> ToolCalls:
    """The model calls ``calls`` in one turn (parallel tool calls)."""
    return ToolCalls(tuple(calls), content)


# --- models --------------------------------------------------------------------------

# OpenRouter's names for the request parameters a model's endpoints accept.
DEFAULT_PARAMETERS = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
    "structured_outputs",
    "tools",
    "tool_choice",
)


@dataclass(frozen=True)
class FakeModel:
    id: str
    context_length: int = 128_000
    supported_parameters: tuple[str, ...] = DEFAULT_PARAMETERS
    provider: str = "OpenAI"


DEFAULT_MODELS = ("openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # names lower-cased
    body: Any  # the parsed JSON, or the raw text when it did not parse

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None


# --- validation ----------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# OpenAI strict mode accepts only this JSON Schema subset; anything else is refused.
_STRICT_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const",
        "anyOf", "$ref", "$defs", "definitions", "title", "description",
        "pattern", "format", "minLength", "maxLength",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minItems", "maxItems",
    }
)  # fmt: skip
_STRICT_MAX_DEPTH = 10  # object nesting levels OpenAI allows


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _validate_body(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Reject(400, "Request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Reject(400, "'messages' must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _Reject(400, f"messages[{i}].role must be one of {sorted(_ROLES)}")
        text = message.get("content")
        parts_ok = isinstance(text, list) and all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in text
        )
        calls_tools = message.get("role") == "assistant" and bool(message.get("tool_calls"))
        if not (isinstance(text, str) or parts_ok or (calls_tools and text is None)):
            raise _Reject(400, f"messages[{i}].content must be a string or content parts")
    temperature = body.get("temperature")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
        raise _Reject(400, "'temperature' must be a number between 0 and 2")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and not (
        isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0
    ):
        raise _Reject(400, "'max_tokens' must be a positive integer")
    if not isinstance(body.get("stream", False), bool):
        raise _Reject(400, "'stream' must be a boolean")
    if "response_format" in body:
        _validate_response_format(body["response_format"])
    _validate_tool_use(body)
    return body


_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _validate_tool_use(body: dict[str, Any]) -> None:
    """Tool definitions, ``tool_choice``, and the assistant/tool message pairing, as OpenAI
    documents them (https://platform.openai.com/docs/guides/function-calling): every
    ``tool_calls`` id is answered by a ``tool`` message before anything else, and no
    ``tool`` message answers a call that was not made. OpenRouter also wants ``tools`` on
    every request of a tool conversation (https://openrouter.ai/docs/features/tool-calling).
    """
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            raise _Reject(400, "'tools' must be a non-empty array")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(tool, dict)
                or tool.get("type") != "function"
                or not isinstance(fn, dict)
            ):
                raise _Reject(400, f"tools[{i}] must be {{'type': 'function', 'function': {{…}}}}")
            name = fn.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                raise _Reject(400, f"tools[{i}].function.name must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if name in names:
                raise _Reject(400, f"tools[{i}].function.name {name!r} is not unique")
            names.add(name)
            params = fn.get("parameters", {"type": "object", "properties": {}})
            try:
                Draft202012Validator.check_schema(params)
            except SchemaError as exc:
                raise _Reject(400, f"Invalid schema for function '{name}': {exc.message}") from None
            if not isinstance(params, dict) or params.get("type") != "object":
                raise _Reject(400, f"Invalid schema for function '{name}': must be type object")
    choice = body.get("tool_choice")
    if choice is not None:
        if tools is None:
            raise _Reject(400, "'tool_choice' is only allowed when 'tools' are specified")
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if choice not in ("none", "auto", "required") and named not in names:
            raise _Reject(400, "'tool_choice' must be none, auto, required or a declared tool")
    pending: set[str] = set()
    used_tools = False
    for i, message in enumerate(body["messages"]):
        role = message.get("role")
        if role == "tool":
            used_tools = True
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in pending:
                raise _Reject(
                    400,
                    f"Invalid parameter: messages[{i}] with role 'tool' must be a response to a"
                    " preceeding message with 'tool_calls'.",
                )
            pending.discard(call_id)
            continue
        if pending:
            raise _Reject(
                400,
                "An assistant message with 'tool_calls' must be followed by tool messages"
                " responding to each 'tool_call_id'. The following tool_call_ids did not have"
                f" response messages: {', '.join(sorted(pending))}",
            )
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls is None:
            continue
        used_tools = True
        if not isinstance(calls, list) or not calls:
            raise _Reject(400, f"messages[{i}].tool_calls must be a non-empty array")
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if (
                not isinstance(call, dict)
                or not isinstance(call.get("id"), str)
                or call.get("type") != "function"
                or not isinstance(fn, dict)
                or not isinstance(fn.get("name"), str)
                or not isinstance(fn.get("arguments"), str)
            ):
                raise _Reject(
                    400,
                    f"messages[{i}].tool_calls[{j}] must have id, type 'function' and"
                    " function.name and function.arguments (a string)",
                )
            pending.add(call["id"])
    if pending:
        raise _Reject(
            400,
            "An assistant message with 'tool_calls' must be followed by tool messages responding"
            f" to each 'tool_call_id'. The following tool_call_ids did not have response"
            f" messages: {', '.join(sorted(pending))}",
        )
    if used_tools and tools is None:
        raise _Reject(400, "'tools' must be sent with every request of a tool conversation")


def _validate_response_format(fmt: object) -> None:
    if not isinstance(fmt, dict):
        raise _Reject(400, "'response_format' must be an object")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return
    if kind != "json_schema":
        raise _Reject(400, "response_format.type must be 'text', 'json_object' or 'json_schema'")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise _Reject(400, "response_format.json_schema must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise _Reject(400, "response_format.json_schema.name must match ^[a-zA-Z0-9_-]{1,64}$")
    strict = spec.get("strict", False)
    if not isinstance(strict, bool):
        raise _Reject(400, "response_format.json_schema.strict must be a boolean")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise _Reject(400, "response_format.json_schema.schema must be an object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = tuple(exc.path)
        raise _Reject(
            400, f"Invalid schema for response_format '{name}': In context={path}, {exc.message}"
        ) from None
    if strict:
        _check_strict(schema, name)


def _check_strict(schema: dict[str, Any], name: str) -> None:
    """Apply OpenAI's strict structured-output rules, worded as OpenAI words them."""

    def fail(path: tuple[str | int, ...], problem: str) -> NoReturn:
        raise _Reject(
            400, f"Invalid schema for response_format '{name}': In context={path}, {problem}"
        )

    def walk(node: object, path: tuple[str | int, ...], depth: int) -> None:
        if not isinstance(node, dict):
            fail(path, "schema must be an object, not a boolean.")
        for key in node:
            if key not in _STRICT_KEYWORDS:
                fail(path, f"'{key}' is not permitted.")
        if not node.keys() & {"type", "anyOf", "$ref", "enum", "const"}:
            fail(path, "schema must have a 'type' key.")
        types = node.get("type")
        if (
            "properties" in node
            or types == "object"
            or (isinstance(types, list) and "object" in types)
        ):
            if depth > _STRICT_MAX_DEPTH:
                fail(path, f"objects may nest at most {_STRICT_MAX_DEPTH} levels deep.")
            if node.get("additionalProperties") is not False:
                fail(path, "'additionalProperties' is required to be supplied and to be false.")
            properties: dict[str, Any] = node.get("properties", {})
            required = node.get("required", [])
            for prop in properties:
                if prop not in required:
                    fail(
                        path,
                        "'required' is required to be supplied and to be an array including"
                        f" every key in properties. Missing '{prop}'.",
                    )
            for prop in required:
                if prop not in properties:
                    fail(path, f"Extra required key '{prop}' supplied.")
            for prop, sub in properties.items():
                walk(sub, (*path, "properties", prop), depth + 1)
        if "items" in node:
            walk(node["items"], (*path, "items"), depth)
        for i, sub in enumerate(node.get("anyOf", [])):
            walk(sub, (*path, "anyOf", i), depth)
        for defs in ("$defs", "definitions"):
            for key, sub in node.get(defs, {}).items():
                walk(sub, (*path, defs, key), depth)

    if schema.get("type") != "object" or "anyOf" in schema:
        raise _Reject(
            400,
            f"Invalid schema for response_format '{name}': schema must be a JSON Schema of"
            f" 'type: \"object\"', got 'type: {json.dumps(schema.get('type'))}'.",
        )
    walk(schema, (), 1)


def _required_parameters(body: dict[str, Any]) -> set[str]:
    """The OpenRouter parameter names a request needs its provider to support."""
    needed = {p for p in DEFAULT_PARAMETERS if p in body}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        needed.add("structured_outputs")
    return needed


# --- the fake ------------------------------------------------------------------------


def _error_body(code: int | str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)  # the usual ~4 characters per token


def _pieces(text: str, count: int = 4) -> list[str]:
    size = max(1, math.ceil(len(text) / count))
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _linger(request: web.Request, seconds: float) -> bool:
    """Sleep ``seconds``; False as soon as the client hangs up (e.g. its timeout fired).

    Stopping early keeps an abandoned slow reply from holding up the server's shutdown.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if request.transport is None or request.transport.is_closing():
            return False
        await asyncio.sleep(min(left, 0.05))
    return True


class FakeLLM:
    """OpenRouter's ``/api/v1/chat/completions`` and ``/api/v1/models`` with scripted replies.

    State is written on the server's thread and read by tests: ``requests`` only ever
    grows (list appends are atomic), and scripts are guarded by a lock.
    """

    def __init__(
        self,
        keys: Iterable[str] = ("sk-or-test",),
        models: Iterable[str | FakeModel] = DEFAULT_MODELS,
    ) -> None:
        self.keys = frozenset(keys)
        self.models: dict[str, FakeModel] = {
            m.id: m for m in (FakeModel(m) if isinstance(m, str) else m for m in models)
        }
        self.default: Reply | Responder | None = None
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque[Reply]] = {m: deque() for m in self.models}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_post("/api/v1/chat/completions", self._chat_completions)
        self.app.router.add_get("/api/v1/models", self._list_models)

    def script(self, model: str, *replies: Reply) -> None:
        """Queue ``replies`` for ``model``; each request to it consumes the next one."""
        if model not in self.models:
            raise KeyError(f"unknown model {model!r}; configured: {sorted(self.models)}")
        with self._lock:
            self._scripts[model].extend(replies)

    def pending(self, model: str) -> int:
        """How many scripted replies ``model`` has not yet consumed."""
        with self._lock:
            return len(self._scripts[model])

    def completions(self, model: str | None = None) -> list[RecordedRequest]:
        """A copy of the recorded chat-completion requests, optionally for one model."""
        return [
            r
            for r in list(self.requests)
            if r.path.endswith("/chat/completions") and model in (None, r.model)
        ]

    def _next_reply(self, model: str, body: dict[str, Any]) -> Reply:
        with self._lock:
            queue = self._scripts[model]
            if queue:
                return queue.popleft()
        if self.default is None:
            # Loud on purpose: a test that forgot to script a reply should fail, not pass.
            return HTTPError(500, f"FakeLLM: no scripted reply for {model} and no default")
        return self.default(model, body) if callable(self.default) else self.default

    async def _record(self, request: web.Request) -> Any:
        raw = await request.text()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(RecordedRequest(request.method, request.path, headers, body))
        return body

    async def _list_models(self, request: web.Request) -> web.Response:
        # Public on OpenRouter: no key needed.
        await self._record(request)
        data = [
            {
                "id": m.id,
                "name": f"Fake: {m.id}",
                "context_length": m.context_length,
                "supported_parameters": list(m.supported_parameters),
            }
            for m in self.models.values()
        ]
        return web.json_response({"data": data})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        try:
            self._authorize(request.headers.get("Authorization", ""))
            body = _validate_body(body)
            model = self._check_model(body)
        except _Reject as exc:
            return web.json_response(_error_body(exc.status, exc.message), status=exc.status)

        reply = self._next_reply(model, body)
        while isinstance(reply, Slow):
            if not await _linger(request, reply.seconds):
                return web.Response(status=499)  # nobody is listening any more
            reply = reply.then
        if isinstance(reply, HTTPError):
            headers: dict[str, str] = {}
            if reply.retry_after is not None:
                headers["Retry-After"] = f"{reply.retry_after:g}"
            return web.json_response(
                _error_body(reply.status, reply.message), status=reply.status, headers=headers
            )
        if isinstance(reply, ToolCalls):
            if body.get("stream", False):
                return await self._stream_tool_calls(request, model, body, reply)
            return web.json_response(self._tool_completion(model, body, reply))
        if body.get("stream", False):
            return await self._stream(request, model, body, reply)
        if isinstance(reply, LateError):
            return web.json_response(_error_body(reply.code, reply.message))
        return web.json_response(self._completion(model, body, reply))

    def _authorize(self, header: str) -> None:
        scheme, _, key = header.partition(" ")
        if not key:
            raise _Reject(401, "No auth credentials found")
        if scheme != "Bearer" or key not in self.keys:
            raise _Reject(401, "User not found.")

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or model not in self.models:
            raise _Reject(400, f"{model} is not a valid model ID")
        provider = body.get("provider") or {}
        if not isinstance(provider, dict):
            raise _Reject(400, "'provider' must be an object")
        if provider.get("require_parameters") and not _required_parameters(body) <= set(
            self.models[model].supported_parameters
        ):
            # What OpenRouter answers when routing finds no provider accepting every parameter.
            raise _Reject(404, "No endpoints found that can handle the requested parameters.")
        return model

    def _envelope(self, model: str, kind: str) -> dict[str, Any]:
        return {
            "id": f"gen-{int(time.time())}-{next(self._ids):06d}",
            "provider": self.models[model].provider,
            "model": model,
            "object": kind,
            "created": int(time.time()),
        }

    @staticmethod
    def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
        prompt, completion = _tokens(json.dumps(body["messages"])), _tokens(text)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(
        self, model: str, body: dict[str, Any], reply: Content | Refusal
    ) -> dict[str, Any]:
        if isinstance(reply, Refusal):
            message = {"role": "assistant", "content": None, "refusal": reply.text}
            finish_reason = "stop"
        else:
            message = {"role": "assistant", "content": reply.text, "refusal": None}
            finish_reason = reply.finish_reason
        return {
            **self._envelope(model, "chat.completion"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
            ],
            "usage": self._usage(body, reply.text),
        }

    def _call_dicts(self, reply: ToolCalls) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id or f"call_{next(self._ids):08d}",
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in reply.calls
        ]

    def _tool_completion(
        self, model: str, body: dict[str, Any], reply: ToolCalls
    ) -> dict[str, Any]:
        calls = self._call_dicts(reply)
        message = {
            "role": "assistant",
            "content": reply.content,
            "refusal": None,
            "tool_calls": calls,
        }
        return {
            **self._envelope(model, "chat.completion"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls", "logprobs": None}
            ],
            "usage": self._usage(body, (reply.content or "") + json.dumps(calls)),
        }

    async def _stream_tool_calls(
        self, request: web.Request, model: str, body: dict[str, Any], reply: ToolCalls
    ) -> web.StreamResponse:
        """Tool calls streamed as OpenAI streams them: per call, a first delta with its
        ``index``, ``id``, ``type`` and name, then its arguments in pieces."""
        envelope = self._envelope(model, "chat.completion.chunk")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            await response.write(
                f"data: {json.dumps({**envelope, 'choices': [choice]})}\n\n".encode()
            )

        await send({"role": "assistant", "content": reply.content})
        calls = self._call_dicts(reply)
        for index, call in enumerate(calls):
            first = {"index": index, "id": call["id"], "type": "function"}
            await send(
                {
                    "tool_calls": [
                        {**first, "function": {"name": call["function"]["name"], "arguments": ""}}
                    ]
                }
            )
            for piece in _pieces(call["function"]["arguments"]):
                await send({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        await send({}, "tool_calls")
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            usage = self._usage(body, (reply.content or "") + json.dumps(calls))
            chunk = {**envelope, "choices": [], "usage": usage}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stream(
        self,
        request: web.Request,
        model: str,
        body: dict[str, Any],
        reply: Content | Refusal | LateError,
    ) -> web.StreamResponse:
        envelope = self._envelope(model, "chat.completion.chunk")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        async def send(
            delta: dict[str, Any], finish_reason: str | None = None, **extra: Any
        ) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            chunk = {**envelope, "choices": [choice], **extra}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        # OpenRouter keeps the connection warm with SSE comments; clients must skip them.
        await response.write(b": OPENROUTER PROCESSING\n\n")
        await send({"role": "assistant", "content": ""})
        if isinstance(reply, LateError):
            for piece in _pieces(reply.partial):
                await send({"content": piece})
            error = {"code": reply.code, "message": reply.message}
            await send({"content": ""}, "error", error=error)
            await response.write_eof()  # OpenRouter ends the stream here, without [DONE]
            return response

        field = "refusal" if isinstance(reply, Refusal) else "content"
        for piece in _pieces(reply.text):
            await send({field: piece})
        await send({}, reply.finish_reason if isinstance(reply, Content) else "stop")
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            usage_chunk = {**envelope, "choices": [], "usage": self._usage(body, reply.text)}
            await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # --- faults (the fault suite) ----------------------------------------------------

    def hang(self, model: str, times: int = 1, seconds: float = 600.0) -> None:
        """The next ``times`` requests to ``model`` get no answer for ``seconds``
        (a provider that accepted the connection and went silent); only the
        client's own timeout ends them. Should a client wait that long, the answer
        is a 504, as from a gateway that gave up upstream."""
        stuck = Slow(seconds, HTTPError(504, "upstream provider timed out"))
        self.script(model, *([stuck] * times))
