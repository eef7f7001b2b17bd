"""Σ's LLM planner through the real ``openai`` client against the fake OpenRouter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from bot.llm import ATTRIBUTION, LLMPlanner
from roles import navigator
from roles.constitution import Constitution, load_constitution
from roles.plan import Action
from roles.ports import PlanningFailed
from tests.fakes import llm_api
from tests.fakes.llm_api import FakeLLM
from tests.fakes.llm_plans import planning_model
from tests.fakes.server import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
SEED = "Add caching to the user authentication system and deploy to staging"
MODEL = "openai/gpt-4o-mini"
KEY = "sk-or-test"


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


@pytest.fixture()
def llm() -> Iterator[tuple[FakeLLM, ThreadedServer]]:
    fake = FakeLLM(keys=(KEY,))
    fake.default = planning_model()
    server = ThreadedServer(fake.app).start()
    yield fake, server
    server.stop()


def _planner(url: str, key: str = KEY) -> LLMPlanner:
    client = AsyncOpenAI(
        api_key=key,
        base_url=f"{url}/api/v1",
        timeout=5,
        max_retries=0,
        default_headers=ATTRIBUTION,
    )
    return LLMPlanner(client, (MODEL,))


async def test_plan_from_the_model_with_a_strict_schema(
    llm: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    fake, server = llm
    reading = navigator.interpret(SEED, constitution)
    proposal = await _planner(server.url).propose(reading, constitution, ["earlier plan"])
    assert proposal.planner == "llm" and proposal.models == [MODEL]
    actions = [s.action for s in proposal.draft.steps]
    assert Action.CODE_CHANGE in actions and Action.DEPLOY in actions
    assert "planned by openai/gpt-4o-mini" in proposal.draft.summary

    (request,) = fake.completions()
    body = request.body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["provider"] == {"require_parameters": True}
    assert request.headers["x-title"] == "SOPHIE" and "http-referer" in request.headers
    user = body["messages"][-1]["content"]
    assert "<directive>" in user and "earlier plan" in user


async def test_invalid_json_is_repaired_once(
    llm: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    fake, server = llm
    fake.script(MODEL, llm_api.content("Sure! Here is your plan: {not json"))
    reading = navigator.interpret(SEED, constitution)
    proposal = await _planner(server.url).propose(reading, constitution, [])
    assert proposal.draft.steps
    _, second = fake.completions()
    repair = second.body["messages"]
    assert repair[-2]["role"] == "assistant" and "not json" in repair[-2]["content"]
    assert "does not match the schema" in repair[-1]["content"]


@pytest.mark.parametrize(
    ("replies", "reason"),
    [
        (
            [llm_api.content({"intent": "feature"}), llm_api.content({"steps": []})],
            "invalid twice",
        ),
        ([llm_api.error_in_200(502, "upstream overloaded")], "reported an error"),
        ([llm_api.error(402, "Insufficient credits")], "HTTP 402"),
        ([llm_api.refusal("I can't help with that")], "refused"),
        ([llm_api.truncated({"intent": "feature", "summary": "x" * 50})], "cut off"),
    ],
)
async def test_model_failures_become_a_clear_planning_failure(
    llm: tuple[FakeLLM, ThreadedServer],
    constitution: Constitution,
    replies: list[llm_api.Reply],
    reason: str,
) -> None:
    fake, server = llm
    fake.script(MODEL, *replies)
    reading = navigator.interpret(SEED, constitution)
    with pytest.raises(PlanningFailed) as failure:
        await _planner(server.url).propose(reading, constitution, [])
    assert reason in str(failure.value)
    assert MODEL in str(failure.value)


async def test_a_refused_key_is_reported_without_the_key(
    llm: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    _, server = llm
    reading = navigator.interpret(SEED, constitution)
    with pytest.raises(PlanningFailed) as failure:
        await _planner(server.url, key="sk-or-wrong").propose(reading, constitution, [])
    assert "API key was refused" in str(failure.value)
    assert "sk-or-wrong" not in str(failure.value)


def test_the_schema_sent_is_one_strict_mode_accepts() -> None:
    # The fake enforces OpenAI's strict-mode rules; the schema must pass them offline too.
    from roles.draft import draft_json_schema

    schema = draft_json_schema()
    llm_api._check_strict(schema, "sophie_plan")
    json.dumps(schema)
