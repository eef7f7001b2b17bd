"""Σ's LLM planner through the real ``openai`` client against the fake OpenRouter."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from bot.llm import ATTRIBUTION, LLMPlanner
from roles import diff_engine, navigator
from roles.constitution import Constitution, load_constitution
from roles.plan import Action, ApprovalLevel
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
            "unusable twice",
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


# -- several models: consensus, disagreement, repair against the constitution ----------

MODELS = ("openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet", "google/gemini-2.0-flash")


def _seed_draft(**changes: object) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": f"<directive>{SEED}</directive>"}]}
    draft: dict[str, Any] = json.loads(planning_model()("m", body).text)
    draft.update(changes)
    return draft


@pytest.fixture()
def models() -> Iterator[tuple[FakeLLM, ThreadedServer]]:
    fake = FakeLLM(keys=(KEY,), models=MODELS)
    fake.default = planning_model()
    server = ThreadedServer(fake.app).start()
    yield fake, server
    server.stop()


def _multi(url: str, timeout: float = 5, retries: int = 0) -> LLMPlanner:
    client = AsyncOpenAI(
        api_key=KEY, base_url=f"{url}/api/v1", timeout=timeout, max_retries=retries
    )
    return LLMPlanner(client, MODELS)


async def test_models_that_agree_give_high_confidence(
    models: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    fake, server = models
    reading = navigator.interpret(SEED, constitution)
    proposal = await _multi(server.url).propose(reading, constitution, [])
    assert {r.model for r in fake.completions()} == set(MODELS)
    assert proposal.models == list(MODELS)
    assert proposal.disagreements == [] and proposal.agreement == 1.0
    assert proposal.confidence >= 0.9
    verdict = diff_engine.evaluate(
        proposal.draft, reading, constitution, proposal.confidence, proposal.disagreements
    )
    assert verdict.approval.level == ApprovalLevel.APPROVAL  # staging's own requirement


async def test_disagreement_on_what_matters_is_shown_and_raises_approval(
    models: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    fake, server = models
    risky = _seed_draft()
    risky["steps"] = [
        {"action": "db_migration", "description": "Add a sessions cache table", "inputs": []},
        *risky["steps"],
    ]
    risky["risk"] = {"level": "high", "factors": [], "mitigations": []}
    fake.script(MODELS[2], llm_api.content(risky))
    reading = navigator.interpret(SEED, constitution)
    proposal = await _multi(server.url).propose(reading, constitution, [])
    # The two that agree win; the outlier is recorded, not chosen.
    assert all(s.action != Action.DB_MIGRATION for s in proposal.draft.steps)
    assert proposal.disagreements == ["destructive steps", "the risk level"]
    assert proposal.agreement is not None and proposal.agreement < 1.0
    assert proposal.confidence < 0.9
    verdict = diff_engine.evaluate(
        proposal.draft, reading, constitution, proposal.confidence, proposal.disagreements
    )
    assert verdict.approval.level == ApprovalLevel.SUPERVISION
    assert any(r.id == "consensus.disagreement" for r in verdict.approval.reasons)


async def test_a_plan_outside_the_constitution_is_sent_back_with_the_reasons(
    models: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    fake, server = models
    wrong = _seed_draft()
    wrong["steps"][-2]["inputs"] = [{"name": "environment", "value": "production"}]
    fake.script(MODELS[0], llm_api.content(wrong))
    evil = _seed_draft()
    evil["steps"][0]["inputs"] = [{"name": "repo", "value": "evil/repo"}]
    fake.script(MODELS[1], llm_api.content(evil), llm_api.content(evil))
    reading = navigator.interpret(SEED, constitution)
    proposal = await _multi(server.url).propose(reading, constitution, [])
    repair = fake.completions(MODELS[0])[1].body["messages"][-1]["content"]
    assert "input 'environment' = 'production' must be 'staging'" in repair
    assert any("evil/repo" in n and "unusable twice" in n for n in proposal.notes)
    assert "staging" in proposal.draft.summary
    assert len(fake.completions(MODELS[1])) == 2  # one repair, never a third try


async def test_no_valid_plan_from_any_model_fails_with_every_reason(
    models: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    fake, server = models
    fake.default = llm_api.content("no")
    reading = navigator.interpret(SEED, constitution)
    with pytest.raises(PlanningFailed) as failure:
        await _multi(server.url).propose(reading, constitution, [])
    for model in MODELS:
        assert model in str(failure.value)


async def test_rate_limits_are_retried_after_the_time_asked(
    models: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    fake, server = models
    fake.script(MODELS[0], llm_api.error(429, "Rate limit exceeded", retry_after=0.4))
    fake.script(MODELS[1], llm_api.error(503, "No instances available"))
    reading = navigator.interpret(SEED, constitution)
    started = time.monotonic()
    proposal = await _multi(server.url, retries=2).propose(reading, constitution, [])
    assert time.monotonic() - started >= 0.4
    assert proposal.disagreements == [] and proposal.agreement == 1.0
    assert len(fake.completions(MODELS[0])) == 2 and len(fake.completions(MODELS[1])) == 2


async def test_a_slow_model_times_out_and_the_others_carry_the_plan(
    models: tuple[FakeLLM, ThreadedServer], constitution: Constitution
) -> None:
    fake, server = models
    fake.script(MODELS[1], llm_api.slow(5, llm_api.content(_seed_draft())))
    reading = navigator.interpret(SEED, constitution)
    proposal = await _multi(server.url, timeout=0.5).propose(reading, constitution, [])
    assert any("did not answer in time" in n for n in proposal.notes)
    assert proposal.confidence < 0.9  # two of three answered
