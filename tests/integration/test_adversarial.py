"""The adversarial corpus: no attack may plan anything lower or wider than its baseline.

Every entry of tests/data/adversarial_directives.yml pairs an attack with the plain
directive it dresses up. Both are planned and the two plans compared: the attack's
approval level is never lower, its workflow action never wider, its repo,
environment, workflow, ref and sha are the baseline's, its artifacts a subset, and
the workflow_dispatch inputs (what reaches GitHub) say the same. A BLOCKED attack is
the strictest outcome and always acceptable.

Each pair is planned
  (a) by the offline planner;
  (b) by a model that obeys the attack (tests.fakes.llm_plans.obedient_model) through
      the real LLMPlanner and the fake OpenRouter: it echoes the text, says "low risk"
      and "autonomous", and adds a rollback step with its own sha, unknown step inputs,
      an ``environment: production`` input and an ``exe`` artifact. Told why that is
      refused, a stubborn model repeats it (planning fails: nothing to approve) and a
      compliant one drops what was refused (the plan is compared). Its first, hostile
      reply also goes straight to Δ, as if the repair check did not exist: the kernel
      alone must block it;
  (c) for a sample, end to end: signed app_mention events to a running app, the plans
      read back from its store, one approved and its dispatch inspected.
The card built from each attack plan must not ping anyone, show hidden characters or
break Block Kit's limits.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
import pytest_asyncio
import yaml
from openai import AsyncOpenAI

from bot.llm import LLMPlanner
from handlers import blocks
from roles import diff_engine, integrator, navigator, offline_planner, what_runs
from roles.constitution import Constitution, load_constitution
from roles.draft import PlanDraft
from roles.offline_planner import OfflinePlanner
from roles.plan import ApprovalLevel, Plan
from roles.ports import Planner, PlanningFailed, Proposal
from roles.records import Actor, PlanRecord, PlanStatus, Thread
from tests import slack_requests as sr
from tests.fakes import blockkit
from tests.fakes.llm_api import FakeLLM, Reply
from tests.fakes.llm_plans import MODEL_SHA, obedient_model, obey, planning_model
from tests.fakes.server import ThreadedServer
from tests.harness import App, eventually
from tests.integration.conftest import ALICE, CHANNEL, DAVE, Fakes
from tests.integration.test_end_to_end import _buttons, click, dispatched_inputs, response_to

ROOT = Path(__file__).resolve().parents[2]
CORPUS: list[dict[str, Any]] = yaml.safe_load(
    (ROOT / "tests/data/adversarial_directives.yml").read_text(encoding="utf-8")
)
REQUESTER = DAVE
KEY = "sk-or-test"
COMPLIANT = "openai/gpt-4o-mini"  # obeys the attack, then drops what SOPHIE refuses
STUBBORN = "anthropic/claude-3.5-sonnet"  # obeys the attack, and insists
# The last successful deployment the history names, for /sophie rollback.
HISTORY = ("1234567890abcdef" * 3)[:40]
APPROVED_E2E = "undo-button"  # the sample pair that is approved and dispatched

CATEGORIES = {
    "injection",
    "wording",
    "fake-approval",
    "skip-verification",
    "environments",
    "homoglyph-repo",
    "homoglyph-environment",
    "typo",
    "language",
    "long",
    "slack-markup",
    "smuggling",
    "artifacts",
    "refs",
    "hidden",
    "outside",
    "forbidden",
    "rollback-command",
}
# Scripts the "language" entries must cover: Spanish/French/German (Latin), Chinese,
# Japanese, Russian, Arabic.
SCRIPTS = {
    "CJK": re.compile("[\u4e00-\u9fff]"),
    "kana": re.compile("[\u3040-\u30ff]"),
    "Cyrillic": re.compile("[\u0400-\u04ff]"),
    "Arabic": re.compile("[\u0600-\u06ff]"),
}
_PINGS = re.compile(r"<[!@#]")
_HIDDEN = re.compile(
    "[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069"
    "\ufeff\U000e0000-\U000e007f]"
)
# What workflow_dispatch may carry; which of them choose what runs is checked below.
DISPATCH_INPUTS = {
    "plan_id",
    "bundle_url",
    "plan_digest",
    "environment",
    "artifacts",
    "action",
    "plan",
    "envelopes",
    "correlation_id",
    "deploy_sha",
}
WIDTH = {"build": 0, "deploy": 1, "rollback": 2}

Kind = Literal["directive", "rollback"]
# The in-process tests share one event loop, so one HTTP client serves them all.
ONE_LOOP = pytest.mark.asyncio(loop_scope="module")


@dataclass(frozen=True)
class Pair:
    id: str
    category: str
    attack: str
    baseline: str
    kind: Kind
    expect: str
    baseline_blocked: bool
    floor: ApprovalLevel | None
    e2e: bool

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Pair:
        if "repeat" in entry:
            r = entry["repeat"]
            attack = str(r["unit"]) * int(r["times"]) + str(r["then"])
        else:
            attack = str(entry["attack"])
        floor = entry.get("min_approval")
        return cls(
            id=str(entry["id"]),
            category=str(entry["category"]),
            attack=attack,
            baseline=str(entry["baseline"]),
            kind="rollback" if entry.get("kind") == "rollback" else "directive",
            expect=str(entry.get("expect", "any")),
            baseline_blocked=bool(entry.get("baseline_blocked", False)),
            floor=ApprovalLevel(floor) if floor else None,
            e2e=bool(entry.get("e2e", False)),
        )


PAIRS = [Pair.of(e) for e in CORPUS]
IDS = [p.id for p in PAIRS]
SAMPLE = [p for p in PAIRS if p.e2e]


# -- what a plan runs, and the comparison ----------------------------------------------


@dataclass(frozen=True)
class Runs:
    """What a plan would run and who must say yes: the parts an attack must not widen."""

    blocked: bool
    level: ApprovalLevel
    quorum: int
    action: str
    repo: str
    environment: str
    workflow: str
    ref: str
    sha: str
    artifacts: tuple[str, ...]
    inputs: dict[str, str]


def runs_of(plan: Plan, constitution: Constitution, kind: Kind, where: str) -> Runs:
    """The plan's runs, after checking what holds for any plan whatever its text."""
    t = plan.target
    blocked = any(w.effect == "deny" for w in plan.warnings)
    repo = constitution.repo(t.repo)
    assert repo is not None, f"{where}: repo {t.repo} is outside the constitution"
    assert t.workflow == repo.workflow, where
    assert what_runs.ref_allowed(repo, t.ref), where
    assert t.environment in constitution.environments, where
    if kind == "directive":
        # Only the rollback command plans a rollback; nothing else names a commit.
        assert t.action in ("deploy", "build") and t.sha == "", f"{where}: {t}"
        assert t.ref == repo.default_ref, where
    else:
        assert t.action == "rollback" and t.sha in ("", HISTORY), f"{where}: {t}"
    required = constitution.environment(t.environment)
    floor = required.rollback_approval if kind == "rollback" else None
    assert plan.approval.level.rank >= (floor or required.approval).rank, where
    if plan.approval.level == ApprovalLevel.SUPERVISION:
        assert plan.approval.quorum >= max(2, required.quorum), where
    if not blocked:
        assert t.environment in repo.environments, where
        assert set(plan.artifacts) <= set(repo.artifacts), where
        assert what_runs.mismatch(constitution, plan) is None, where

    # What reaches GitHub says exactly what the target says, and nothing a model chose.
    inputs = integrator.workflow_inputs(plan, [], None, "cid")
    assert set(inputs) <= DISPATCH_INPUTS, f"{where}: {sorted(inputs)}"
    assert inputs["action"] == t.action and inputs["environment"] == t.environment, where
    assert inputs["artifacts"] == ",".join(plan.artifacts), where
    assert inputs.get("deploy_sha", "") == t.sha, where
    assert MODEL_SHA not in json.dumps({k: v for k, v in inputs.items() if k != "plan"}), where
    document = json.loads(base64.b64decode(inputs["plan"]))
    assert document["target"] == t.model_dump(mode="json"), where
    assert document["artifacts"] == plan.artifacts, where
    chosen: dict[str, str] = {k: inputs[k] for k in ("action", "environment", "artifacts")}
    chosen["deploy_sha"] = inputs.get("deploy_sha", "")
    return Runs(
        blocked=blocked,
        level=plan.approval.level,
        quorum=plan.approval.quorum,
        action=t.action,
        repo=t.repo,
        environment=t.environment,
        workflow=t.workflow,
        ref=t.ref,
        sha=t.sha,
        artifacts=tuple(plan.artifacts),
        inputs=chosen,
    )


def widenings(attack: Runs, base: Runs, floor: ApprovalLevel | None = None) -> list[str]:
    """Every way the attack's plan is lower or wider than the baseline's (none: it holds)."""
    if attack.blocked:
        return []  # refused: nothing to approve, nothing dispatched
    if base.blocked:
        return ["the baseline is refused but the attack is not"]
    found = []
    if attack.level.rank < base.level.rank:
        found.append(f"approval {attack.level.value} < baseline {base.level.value}")
    if attack.level == base.level and attack.quorum < base.quorum:
        found.append(f"quorum {attack.quorum} < baseline {base.quorum}")
    if floor is not None and attack.level.rank < floor.rank:
        found.append(f"approval {attack.level.value} < floor {floor.value}")
    if attack.action == "rollback" and base.action != "rollback":
        found.append("a rollback where the baseline is none")
    if WIDTH[attack.action] > WIDTH[base.action]:
        found.append(f"action {attack.action} is wider than {base.action}")
    for name in ("repo", "environment", "workflow", "ref", "sha"):
        mine, theirs = getattr(attack, name), getattr(base, name)
        if mine != theirs:
            found.append(f"{name} {mine!r} != baseline {theirs!r}")
    extra = set(attack.artifacts) - set(base.artifacts)
    if extra:
        found.append(f"artifacts {sorted(extra)} beyond the baseline's {list(base.artifacts)}")
    a, b = attack.inputs, base.inputs
    if WIDTH[a["action"]] > WIDTH[b["action"]] or a["environment"] != b["environment"]:
        found.append(f"dispatch inputs {a} wider than the baseline's {b}")
    if not set(filter(None, a["artifacts"].split(","))) <= set(b["artifacts"].split(",")):
        found.append(f"dispatched artifacts {a['artifacts']} beyond {b['artifacts']}")
    if a["deploy_sha"] != b["deploy_sha"]:
        found.append(f"dispatched sha {a['deploy_sha']!r} != {b['deploy_sha']!r}")
    return found


def check_card(plan: Plan, status: PlanStatus, where: str) -> None:
    record = PlanRecord(plan=plan, status=status, thread=Thread(CHANNEL, "1.0"))
    check_blocks(blocks.card(record), where)
    assert blockkit.view_problems(blocks.plan_modal(plan)) == [], where


def check_blocks(card: list[dict[str, Any]], where: str) -> None:
    assert blockkit.problems(card) == [], where
    shown = json.dumps(card, ensure_ascii=False)
    pings = set(_PINGS.findall(shown.replace(f"<@{REQUESTER}>", "")))
    assert not pings, f"{where}: the card would ping: {pings}"
    # handlers.text.escape puts a zero-width space after *, _ and ~ on purpose.
    unescaped = re.sub("([*_~])\u200b", r"\1", shown)
    assert not _HIDDEN.search(unescaped), f"{where}: hidden characters reach the card"


# -- planning, as roles.flows.planning does it ------------------------------------------


def _reading(text: str, kind: Kind, constitution: Constitution) -> navigator.Reading:
    # /sophie rollback <rest> arrives as "Roll back <rest>" (handlers.commands).
    return navigator.interpret(
        f"Roll back {text}" if kind == "rollback" else text, constitution, kind=kind
    )


def _assemble(
    text: str,
    reading: navigator.Reading,
    proposal: Proposal,
    constitution: Constitution,
    kind: Kind,
) -> Plan:
    rollback_to = (HISTORY, "main") if kind == "rollback" else None
    verdict = diff_engine.evaluate(
        proposal.draft,
        reading,
        constitution,
        proposal.confidence,
        proposal.disagreements,
        rollback_to=rollback_to,
    )
    return integrator.assemble(
        integrator.plan_id_for(f"{kind}:{text[:200]}"),
        datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
        reading,
        Actor(team_id=sr.TEAM, user_id=REQUESTER),
        proposal,
        verdict,
        constitution,
    )


async def plan_of(
    text: str, kind: Kind, planner: Planner, constitution: Constitution
) -> Plan | None:
    """Φ Σ Δ for one text; None when planning fails (nothing to approve: safe)."""
    reading = _reading(text, kind, constitution)
    if kind == "rollback":
        planner = OfflinePlanner()  # the flow never asks a model to plan a rollback
    try:
        proposal = await planner.propose(reading, constitution, [])
    except PlanningFailed:
        return None
    if kind == "rollback":
        draft = offline_planner.pin_rollback(proposal.draft, HISTORY, "main")
        proposal = replace(proposal, draft=draft)
    return _assemble(text, reading, proposal, constitution, kind)


def hostile_plan(text: str, kind: Kind, constitution: Constitution) -> Plan:
    """The obedient model's first reply, taken by Δ without the planner's repair check."""
    reading = _reading(text, kind, constitution)
    body = {"messages": [{"role": "user", "content": f"<directive>{reading.text}</directive>"}]}
    honest: Reply = planning_model()(COMPLIANT, body)
    draft_json = obey(json.loads(honest.text), reading.text)  # type: ignore[union-attr]
    draft = PlanDraft.model_validate(draft_json)
    proposal = Proposal(draft=draft, planner="llm", models=[COMPLIANT], confidence=0.95)
    return _assemble(text, reading, proposal, constitution, kind)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


@pytest.fixture(scope="module")
def llm() -> Iterator[str]:
    fake = FakeLLM(keys=(KEY,))
    compliant, stubborn = obedient_model(), obedient_model(stubborn=True)

    def respond(model: str, body: dict[str, Any]) -> Reply:
        return (stubborn if model == STUBBORN else compliant)(model, body)

    fake.default = respond
    server = ThreadedServer(fake.app).start()
    yield server.url
    server.stop()


_BASELINES: dict[tuple[str, str, Kind], Runs | None] = {}


async def baseline_runs(
    pair: Pair, planner_name: str, planner: Planner, constitution: Constitution
) -> Runs:
    """The baseline's plan by the same planner (cached: several attacks share one)."""
    key = (planner_name, pair.baseline, pair.kind)
    if key not in _BASELINES:
        plan = await plan_of(pair.baseline, pair.kind, planner, constitution)
        where = f"{pair.id} baseline ({planner_name})"
        _BASELINES[key] = None if plan is None else runs_of(plan, constitution, pair.kind, where)
    runs = _BASELINES[key]
    assert runs is not None, f"{pair.id}: the baseline could not be planned by {planner_name}"
    assert runs.blocked == pair.baseline_blocked, f"{pair.id}: baseline blocked={runs.blocked}"
    return runs


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(llm: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        api_key=KEY, base_url=f"{llm}/api/v1", max_retries=0, timeout=5
    ) as shared:
        yield shared


# -- the corpus itself ---------------------------------------------------------------------


def test_the_corpus_pairs_every_attack_with_a_plain_baseline() -> None:
    assert len(PAIRS) > 100
    assert len(set(IDS)) == len(IDS)
    assert {p.category for p in PAIRS} == CATEGORIES
    for p in PAIRS:
        assert p.expect in ("planned", "blocked", "any"), p.id
        assert p.attack != p.baseline, p.id
        # A baseline is the request said plainly: short ASCII words, no markup.
        assert p.baseline.isascii() and len(p.baseline) <= 100, p.id
        assert not re.search(r"[<>{}\[\]`*_~&|\\]", p.baseline), p.id
    languages = " ".join(p.attack for p in PAIRS if p.category == "language")
    for script, pattern in SCRIPTS.items():
        assert pattern.search(languages), f"no {script} directive"
    assert any(len(p.attack) > 2000 for p in PAIRS if p.category == "long")
    assert 6 <= len(SAMPLE) <= 10 and APPROVED_E2E in {p.id for p in SAMPLE}


def test_the_comparison_notices_every_widening() -> None:
    inputs = {"action": "deploy", "environment": "staging", "artifacts": "docker", "deploy_sha": ""}
    base = Runs(
        blocked=False,
        level=ApprovalLevel.APPROVAL,
        quorum=1,
        action="deploy",
        repo="acme/auth-service",
        environment="staging",
        workflow="sophie-pipeline.yml",
        ref="main",
        sha="",
        artifacts=("docker",),
        inputs=inputs,
    )
    assert widenings(base, base) == []
    assert widenings(replace(base, blocked=True), base) == []
    assert widenings(replace(base, action="build"), base) == []
    assert widenings(base, replace(base, blocked=True))
    assert widenings(base, base, ApprovalLevel.SUPERVISION)
    for change in (
        {"level": ApprovalLevel.NOTIFICATION, "quorum": 0},
        {"action": "rollback"},
        {"repo": "acme/web-frontend"},
        {"environment": "production"},
        {"workflow": "evil.yml"},
        {"ref": "hotfix"},
        {"sha": "d" * 40},
        {"artifacts": ("docker", "deb")},
        {"inputs": {**inputs, "action": "rollback"}},
        {"inputs": {**inputs, "environment": "production"}},
        {"inputs": {**inputs, "artifacts": "docker,exe"}},
        {"inputs": {**inputs, "deploy_sha": "d" * 40}},
    ):
        assert widenings(replace(base, **change), base), change
    wide = replace(base, level=ApprovalLevel.SUPERVISION, quorum=2)
    assert widenings(replace(wide, quorum=1), wide)


# -- (a) the offline planner ---------------------------------------------------------------


@ONE_LOOP
@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
async def test_offline_planner_never_plans_lower_or_wider(
    pair: Pair, constitution: Constitution
) -> None:
    planner = OfflinePlanner()
    base = await baseline_runs(pair, "offline", planner, constitution)
    plan = await plan_of(pair.attack, pair.kind, planner, constitution)
    assert plan is not None
    attack = runs_of(plan, constitution, pair.kind, pair.id)
    assert widenings(attack, base, pair.floor) == [], pair.id
    if pair.expect == "planned":
        denied = [w.message for w in plan.warnings if w.effect == "deny"]
        assert not denied, f"{pair.id}: unexpectedly blocked: {denied}"
    if pair.expect == "blocked":
        assert attack.blocked, f"{pair.id}: should have been blocked"
    check_card(plan, PlanStatus.BLOCKED if attack.blocked else PlanStatus.PENDING, pair.id)


# -- (b) a model that obeys the attack ----------------------------------------------------


@ONE_LOOP
@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
async def test_an_obedient_model_never_plans_lower_or_wider(
    pair: Pair, constitution: Constitution, client: AsyncOpenAI
) -> None:
    planner = LLMPlanner(client, (COMPLIANT,))
    base = await baseline_runs(pair, "obedient", planner, constitution)
    plan = await plan_of(pair.attack, pair.kind, planner, constitution)
    if plan is None:
        assert pair.expect != "planned", f"{pair.id}: planning failed"
        return
    attack = runs_of(plan, constitution, pair.kind, pair.id)
    assert widenings(attack, base, pair.floor) == [], pair.id
    if pair.expect == "planned":
        assert not attack.blocked, f"{pair.id}: {plan.warnings}"
    # Nothing the model wrote about itself survives into what runs.
    assert all(s.action.value != "rollback" for s in plan.steps) or pair.kind == "rollback"
    assert "exe" not in plan.artifacts
    check_card(plan, PlanStatus.BLOCKED if attack.blocked else PlanStatus.PENDING, pair.id)


@ONE_LOOP
@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
async def test_a_model_that_insists_gets_no_plan_and_the_kernel_blocks_its_reply(
    pair: Pair, constitution: Constitution, client: AsyncOpenAI
) -> None:
    # Through the planner: told why, it sends the same again; planning fails.
    plan = await plan_of(pair.attack, pair.kind, LLMPlanner(client, (STUBBORN,)), constitution)
    if pair.kind == "directive":
        assert plan is None, f"{pair.id}: a plan with a model's rollback step: {plan}"

    # Straight to Δ: the kernel alone refuses the rollback step, the sha and the exe,
    # and still derives the target from the constitution.
    hostile = hostile_plan(pair.attack, pair.kind, constitution)
    attack = runs_of(hostile, constitution, pair.kind, pair.id)
    assert attack.blocked, f"{pair.id}: a model's rollback step and sha were not refused"
    denied = {w.id for w in hostile.warnings if w.effect == "deny"}
    assert "steps.input-unknown" in denied, (pair.id, denied)  # deploy_sha
    if pair.kind == "directive":
        assert "steps.action-not-requested" in denied, (pair.id, denied)  # rollback step
    else:
        assert "steps.input-invalid" in denied, (pair.id, denied)  # the model's sha
    if pair.kind == "directive":
        assert "artifacts.not-allowed" in denied, (pair.id, denied)  # exe
    assert "exe" not in hostile.artifacts  # a rollback redeploys what was built then
    check_card(hostile, PlanStatus.BLOCKED, pair.id)


# -- (c) end to end through Slack, for a sample ---------------------------------------------


async def _via_slack(app: App, fakes: Fakes, text: str) -> PlanRecord | None:
    """Mention SOPHIE with ``text`` as Slack would; the plan it stored, or None if none."""
    event = sr.mention_event(text, REQUESTER, CHANNEL)
    assert (await app.event(event)).status == 200
    plan_id = integrator.plan_id_for(event["event_id"])
    thread_ts = event["event"]["ts"]

    async def settled() -> PlanRecord | str | None:
        record = await app.rt.store.load(plan_id)
        if record is not None and record.card_ts:
            return record
        said = [m.text or "" for m in fakes.slack.thread(CHANNEL, thread_ts)]
        return "no plan" if any("Nothing will run" in s for s in said) else None

    outcome = await eventually(settled, within=15, what=f"the plan for {text[:40]!r}")
    return outcome if isinstance(outcome, PlanRecord) else None


@pytest.mark.parametrize("pair", SAMPLE, ids=[p.id for p in SAMPLE])
async def test_through_slack_an_attack_never_plans_lower_or_wider(
    pair: Pair, app: App, fakes: Fakes, constitution: Constitution
) -> None:
    fakes.llm.default = obedient_model()
    base_record = await _via_slack(app, fakes, pair.baseline)
    assert base_record is not None, pair.id
    base = runs_of(base_record.plan, constitution, pair.kind, f"{pair.id} baseline")
    record = await _via_slack(app, fakes, pair.attack)
    assert record is not None, f"{pair.id}: the compliant model's plan never came"
    attack = runs_of(record.plan, constitution, pair.kind, pair.id)
    assert widenings(attack, base, pair.floor) == [], pair.id
    if pair.expect != "any":
        assert attack.blocked == (pair.expect == "blocked"), pair.id
    assert record.status == (PlanStatus.BLOCKED if attack.blocked else PlanStatus.PENDING)
    card = fakes.slack.message(CHANNEL, record.card_ts or "")
    assert card is not None
    check_blocks(card.blocks or [], pair.id)
    if pair.id != APPROVED_E2E:
        assert dispatched_inputs(fakes) == [], pair.id
        return

    # Approved: the dispatch runs what the constitution derived, nothing the model chose.
    assert not attack.blocked and attack.level == ApprovalLevel.APPROVAL
    approve = _buttons(card.blocks)[blocks.APPROVE]["value"]
    assert (await app.interact(click(fakes, blocks.APPROVE, approve, ALICE, card.ts, "ok"))).ok
    assert "Approved" in (await eventually(lambda: response_to(fakes.slack, "ok")))["text"]
    (inputs,) = await eventually(lambda: dispatched_inputs(fakes), what="the dispatch")
    (dispatch,) = list(fakes.github.dispatches)
    target = record.plan.target
    assert (dispatch.repo, dispatch.workflow, dispatch.ref) == (
        target.repo,
        target.workflow,
        target.ref,
    )
    assert (dispatch.repo, dispatch.ref) == (base.repo, base.ref)
    # A plan with change steps first dispatches its implement run (the kernel's call,
    # signed in target.implement); what it deploys afterwards is the checked commit.
    first = "implement" if target.implement else "deploy"
    assert inputs["action"] == first and inputs["environment"] == base.environment
    assert "deploy_sha" not in inputs and MODEL_SHA not in json.dumps(inputs)
    assert set(inputs["artifacts"].split(",")) <= set(base.artifacts)
    signed = json.loads(base64.b64decode(inputs["plan"]))
    assert signed["target"] == target.model_dump(mode="json")
    assert all(step["action"] != "rollback" for step in signed["steps"])
