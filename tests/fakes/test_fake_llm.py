"""The fake OpenRouter refuses what the real one refuses and speaks its error shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from roles.draft import draft_json_schema
from tests.fakes import llm_api
from tests.fakes.llm_api import FakeLLM
from tests.fakes.server import ThreadedServer

KEY = "sk-or-test"
MODEL = "openai/gpt-4o-mini"


@pytest.fixture()
def served() -> Iterator[tuple[FakeLLM, AsyncOpenAI]]:
    fake = FakeLLM(keys=(KEY,))
    server = ThreadedServer(fake.app).start()
    client = AsyncOpenAI(api_key=KEY, base_url=f"{server.url}/api/v1", max_retries=0, timeout=5)
    yield fake, client
    server.stop()


def _format(schema: dict[str, Any]) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": schema}}


async def test_streaming_delivers_the_scripted_text(served: tuple[FakeLLM, AsyncOpenAI]) -> None:
    fake, client = served
    fake.script(MODEL, llm_api.content({"hello": "world"}))
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == '{"hello": "world"}'


async def test_an_error_mid_stream_is_raised_by_the_client(
    served: tuple[FakeLLM, AsyncOpenAI],
) -> None:
    fake, client = served
    fake.script(MODEL, llm_api.error_mid_stream(502, "Provider disconnected"))
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Provider disconnected"):
        [c async for c in stream]


@pytest.mark.parametrize("status", [402, 429, 502, 503])
async def test_http_errors_carry_openrouters_body(
    served: tuple[FakeLLM, AsyncOpenAI], status: int
) -> None:
    fake, client = served
    fake.script(MODEL, llm_api.error(status, "nope", retry_after=7 if status == 429 else None))
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == status
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "7"


async def test_error_inside_a_200(served: tuple[FakeLLM, AsyncOpenAI]) -> None:
    fake, client = served
    fake.script(MODEL, llm_api.error_in_200(502, "upstream failed"))
    completion = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert (completion.model_extra or {})["error"]["message"] == "upstream failed"


async def test_bad_key_unknown_model_and_loose_schema_are_refused(
    served: tuple[FakeLLM, AsyncOpenAI],
) -> None:
    fake, client = served
    fake.default = llm_api.content("{}")
    wrong = client.with_options(api_key="sk-or-nope")
    with pytest.raises(openai.AuthenticationError):
        await wrong.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="acme/unknown", messages=[{"role": "user", "content": "x"}]
        )
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}  # strict needs more
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], response_format=_format(loose)
        )
    ok = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        response_format=_format(draft_json_schema()),
    )
    assert ok.choices[0].message.content == "{}"


async def test_models_differ_and_scripts_are_consumed_in_order(
    served: tuple[FakeLLM, AsyncOpenAI],
) -> None:
    fake, client = served
    other = "anthropic/claude-3.5-sonnet"
    fake.script(MODEL, llm_api.content("a1"), llm_api.content("a2"))
    fake.script(other, llm_api.content("b1"))
    answers = []
    for model in (MODEL, other, MODEL):
        done = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}]
        )
        answers.append(done.choices[0].message.content)
    assert answers == ["a1", "b1", "a2"]
    assert fake.pending(MODEL) == 0
    with pytest.raises(openai.InternalServerError):  # nothing scripted, no default: loud
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )


_TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


async def test_tool_calls_come_back_as_openai_shapes_them(
    served: tuple[FakeLLM, AsyncOpenAI],
) -> None:
    fake, client = served
    fake.script(
        MODEL,
        llm_api.tool_calls(
            llm_api.tool_call("read_file", path="a.py"), llm_api.tool_call("read_file", "{bad")
        ),
        llm_api.content("done"),
    )
    asked: Any = [{"role": "user", "content": "read a.py"}]
    first = await client.chat.completions.create(model=MODEL, messages=asked, tools=_TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.model_dump()["tool_calls"]
    assert [(c["type"], c["function"]["name"]) for c in calls] == [("function", "read_file")] * 2
    assert calls[0]["function"]["arguments"] == '{"path": "a.py"}'
    assert calls[1]["function"]["arguments"] == "{bad"  # sent verbatim, as models sometimes do
    assert calls[0]["id"] != calls[1]["id"]
    answered: Any = [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": "x = 1"} for c in calls),
    ]
    second = await client.chat.completions.create(model=MODEL, messages=answered, tools=_TOOLS)
    assert second.choices[0].message.content == "done"

    # Refused as OpenAI refuses them: an unanswered call, an answer to no call, no tools.
    fake.default = llm_api.content("never")
    broken: list[tuple[Any, Any]] = [
        (answered[:-1], _TOOLS),
        ([*asked, {"role": "tool", "tool_call_id": "call_x", "content": "?"}], _TOOLS),
        (answered, openai.NOT_GIVEN),
        (asked, [{"type": "function", "function": {"name": "read file"}}]),
    ]
    for messages, tools in broken:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=MODEL, messages=messages, tools=tools)


async def test_tool_calls_stream_in_pieces_the_client_can_join(
    served: tuple[FakeLLM, AsyncOpenAI],
) -> None:
    fake, client = served
    fake.script(MODEL, llm_api.tool_calls(llm_api.tool_call("read_file", path="src/app.py")))
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], tools=_TOOLS, stream=True
    )
    names, arguments, finish = "", "", None
    async for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            names += (delta.function.name or "") if delta.function else ""
            arguments += (delta.function.arguments or "") if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert (names, json.loads(arguments), finish) == (
        "read_file",
        {"path": "src/app.py"},
        "tool_calls",
    )
