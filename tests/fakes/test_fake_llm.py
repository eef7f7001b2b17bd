"""The fake OpenRouter refuses what the real one refuses and speaks its error shapes."""

from __future__ import annotations

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
