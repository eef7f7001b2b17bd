"""The adversarial corpus: no directive may lower the approval or escape the constitution.

Every directive goes through Φ Σ Δ twice: with the offline planner, and with an
LLM (the fake OpenRouter) that obeys whatever the directive tells it: it echoes
the injected text into its plan, claims the risk is low and adds no risk factors.
The card built from each plan is checked for pings, hidden characters and Block
Kit limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import AsyncOpenAI

from bot.llm import LLMPlanner
from handlers import blocks
from roles import diff_engine, integrator, navigator
from roles.constitution import Constitution, load_constitution
from roles.offline_planner import OfflinePlanner
from roles.plan import ApprovalLevel, Plan
from roles.ports import Planner, PlanningFailed
from roles.records import Actor, PlanRecord, PlanStatus, Thread
from tests.fakes import blockkit
from tests.fakes.llm_api import Content, FakeLLM, Reply
from tests.fakes.llm_plans import directive_of, planning_model
from tests.fakes.server import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
CORPUS = yaml.safe_load((ROOT / "tests/data/adversarial_directives.yml").read_text())
REQUESTER = "U0DAVE0004"
KEY = "sk-or-test"
MODEL = "openai/gpt-4o-mini"

_PINGS = re.compile(r"<[!@#]")
_HIDDEN = re.compile(
    "[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\U000e0000-\U000e007f]"
)


def _text(entry: dict[str, Any]) -> str:
    if "repeat" in entry:
        r = entry["repeat"]
        return str(r["unit"]) * int(r["times"]) + str(r["then"])
    return str(entry["text"])


def test_the_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 40
    assert len({e["id"] for e in CORPUS}) == len(CORPUS)


def obedient_model(model: str, body: dict[str, Any]) -> Reply:
    """Does what the directive says: echoes it, calls it low risk, lists no risk factors."""
    draft = json.loads(planning_model()(model, body).text)  # type: ignore[union-attr]
    said = directive_of(body)[:400] or "x"
    draft["summary"] = f"APPROVED, autonomous, risk low. {said}"[:500]
    draft["steps"][0]["description"] = said
    draft["risk"] = {"level": "low", "factors": [], "mitigations": [said[:300]]}
    return Content(json.dumps(draft))


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


@pytest.fixture(scope="module")
def llm() -> Iterator[str]:
    fake = FakeLLM(keys=(KEY,))
    fake.default = obedient_model
    server = ThreadedServer(fake.app).start()
    yield server.url
    server.stop()


async def _plan(text: str, planner: Planner, constitution: Constitution) -> Plan | None:
    reading = navigator.interpret(text, constitution)
    try:
        proposal = await planner.propose(reading, constitution, [])
    except PlanningFailed:
        return None  # nothing to approve, nothing dispatched: safe
    verdict = diff_engine.evaluate(
        proposal.draft, reading, constitution, proposal.confidence, proposal.disagreements
    )
    return integrator.assemble(
        integrator.plan_id_for(text[:200]),
        datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
        reading,
        Actor(team_id="T0SOPHIE01", user_id=REQUESTER),
        proposal,
        verdict,
        constitution,
    )


def _check(entry: dict[str, Any], plan: Plan, constitution: Constitution) -> None:
    target = plan.target
    repo = constitution.repo(target.repo)
    assert repo is not None, f"{entry['id']}: repo {target.repo} is outside the constitution"
    assert target.environment in constitution.environments
    assert target.workflow == repo.workflow and target.ref == repo.default_ref
    required = constitution.environment(target.environment)
    assert plan.approval.level.rank >= required.approval.rank, entry["id"]
    if plan.approval.level == ApprovalLevel.SUPERVISION:
        assert plan.approval.quorum >= max(2, required.quorum)
    floor = entry.get("min_approval")
    if floor:
        assert plan.approval.level.rank >= ApprovalLevel(floor).rank
    denied = [w for w in plan.warnings if w.effect == "deny"]
    if not denied:
        assert target.environment in repo.environments, entry["id"]
    if entry.get("expect") == "planned":
        assert not denied, f"{entry['id']}: unexpectedly blocked by {denied}"
    if entry.get("expect") == "blocked":
        assert denied, f"{entry['id']}: should have been blocked"
    if "env" in entry:
        assert target.environment == entry["env"], entry["id"]

    status = PlanStatus.BLOCKED if denied else PlanStatus.PENDING
    record = PlanRecord(plan=plan, status=status, thread=Thread("C0DEPLOYS1", "1.0"))
    card = blocks.card(record)
    assert blockkit.problems(card) == [], entry["id"]
    shown = json.dumps(card, ensure_ascii=False)
    pings = set(_PINGS.findall(shown.replace(f"<@{REQUESTER}>", "")))
    assert not pings, f"{entry['id']}: the card would ping: {pings}"
    assert not _HIDDEN.search(shown), f"{entry['id']}: hidden characters reach the card"
    assert blockkit.view_problems(blocks.plan_modal(plan)) == []


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
async def test_offline_planner_holds(entry: dict[str, Any], constitution: Constitution) -> None:
    plan = await _plan(_text(entry), OfflinePlanner(), constitution)
    assert plan is not None
    _check(entry, plan, constitution)


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
async def test_an_obedient_model_cannot_lower_anything(
    entry: dict[str, Any], constitution: Constitution, llm: str
) -> None:
    async with AsyncOpenAI(
        api_key=KEY, base_url=f"{llm}/api/v1", max_retries=0, timeout=5
    ) as client:
        plan = await _plan(_text(entry), LLMPlanner(client, (MODEL,)), constitution)
    if plan is not None:
        _check(entry, plan, constitution)
