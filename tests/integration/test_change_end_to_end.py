"""The seed directive, implemented for real: Slack → plan → approval → the implement run
(real `sophie implement` on the sample service, its real tests, a scripted model) →
Δ on the commit GitHub lists → the deploy run of that commit → the thread.

The fake GitHub plays the pipeline: its implement job hands the plan and the
constitution SOPHIE dispatched to ``sophie implement`` in a git checkout of the branch,
and pushes what it committed. Bad paths end with a clear message and nothing deployed.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers import blocks as kit
from roles.records import PlanStatus
from tests import slack_requests as sr
from tests.fakes import implementing_model as im
from tests.fakes.github_rest import Implemented
from tests.fakes.llm_api import FakeLLM, tool_call, tool_calls
from tests.fakes.server import ThreadedServer
from tests.harness import LLM_KEY, App, eventually, settings_for, start_app
from tests.integration.conftest import ALICE, BOB, CHANNEL, DAVE, REPO, Fakes
from tests.integration.test_end_to_end import (
    _buttons,
    _text,
    cards,
    click,
    dispatched_inputs,
    response_to,
)
from tests.pipeline_verify import as_the_pipeline

ROOT = Path(__file__).resolve().parents[2]
Implementer = Callable[[dict[str, str], dict[str, str]], Implemented]


def _sample_tree() -> dict[str, str]:
    return {
        str(p.relative_to(im.SAMPLE)): p.read_text()
        for p in sorted(im.SAMPLE.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _decoded(inputs: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    plan = json.loads(base64.b64decode(inputs["plan"]))
    bundle = json.loads(base64.b64decode(inputs["bundle_url"].split(",", 1)[1]))
    return plan, bundle


def real_implementer(tmp: Path, model_url: str) -> Implementer:
    """The pipeline's implement job: `python -m bot implement` in a checkout of the base,
    with only the model's key in its environment; what it committed is pushed."""

    def implement(inputs: dict[str, str], tree: dict[str, str]) -> Implemented:
        work = tmp / f"job-{len(list(tmp.glob('job-*')))}"
        for path, text in tree.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
        im.git(work, "init", "-q", "-b", "main")
        im.git(work, "add", "-A")
        im.git(work, "commit", "-q", "-m", "base")
        plan, bundle = _decoded(inputs)
        (work.parent / f"{work.name}.plan.json").write_text(json.dumps(plan))
        (work.parent / f"{work.name}.constitution.json").write_text(
            json.dumps(bundle["constitution"])
        )
        out = work.parent / f"{work.name}.result.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPHIE_", "GITHUB_"))}
        env.update(
            SOPHIE_DATA_DIR=str(work.parent / f"{work.name}.data"),
            SOPHIE_LLM_API_KEY=LLM_KEY,
            SOPHIE_LLM_BASE_URL=f"{model_url}/api/v1",
            SOPHIE_LLM_MODELS=im.MODEL,
            SOPHIE_LLM_RETRIES="0",
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bot",
                "implement",
                "--plan",
                str(work.parent / f"{work.name}.plan.json"),
                "--constitution",
                str(work.parent / f"{work.name}.constitution.json"),
                "--repo-dir",
                str(work),
                "--out",
                str(out),
                "--max-steps",
                "8",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        result = json.loads(out.read_text())
        tests = result.get("tests") or {}
        if result["status"] != "committed":
            return Implemented(files={}, failure=result["message"])
        changed = im.git(work, "diff", "--name-only", result["base"], result["commit"]).split()
        files: dict[str, str | None] = {}
        for path in changed:
            shown = subprocess.run(
                ["git", "show", f"{result['commit']}:{path}"],
                cwd=work,
                capture_output=True,
                text=True,
            )
            files[path] = shown.stdout if shown.returncode == 0 else None
        summary = (tests.get("output_tail") or "").strip().splitlines()
        return Implemented(
            files=files,
            tests_passed=bool(tests.get("passed")),
            tests_summary=summary[-1] if summary else "",
            test_command=str(tests.get("command") or ""),
        )

    return implement


@pytest.fixture()
def coder() -> Iterator[tuple[FakeLLM, ThreadedServer]]:
    """The implementing model (the job's own provider key), apart from the planner."""
    fake = FakeLLM(keys=(LLM_KEY,), models=(im.MODEL,))
    server = ThreadedServer(fake.app).start()
    yield fake, server
    server.stop()


class Scene:
    def __init__(self, fakes: Fakes, app: App, tmp: Path) -> None:
        self.fakes, self.app, self.tmp = fakes, app, tmp

    async def approved(self, text: str, *people: str) -> tuple[Any, str]:
        event = sr.mention_event(text, DAVE, CHANNEL)
        await self.app.event(event)
        thread_ts = event["event"]["ts"]
        (card,) = await eventually(lambda: cards(self.fakes.slack, thread_ts), what="card")
        card = copy.deepcopy(card)
        value = _buttons(card.blocks)[kit.APPROVE]["value"]
        for n, who in enumerate(people or (ALICE,)):
            await self.app.interact(click(self.fakes, kit.APPROVE, value, who, card.ts, f"a{n}"))
        return card, value.split("|")[0]

    def thread(self, card: Any) -> list[str]:
        return [
            (m.text or "") + _text(m.blocks)
            for m in self.fakes.slack.thread(CHANNEL, card.thread_ts)
        ]

    async def ended(self, plan_id: str) -> PlanStatus:
        """The plan's final status, once the thread has heard it (the result is posted
        just after the status is set)."""
        status = await self._final(plan_id)
        await eventually(
            lambda: any(f"plan `{plan_id}`" in t for t in self.thread_of(plan_id)),
            what="the result message",
        )
        return status

    def thread_of(self, plan_id: str) -> list[str]:
        return [
            (m.text or "") + _text(m.blocks) for m in self.fakes.slack.channel_messages(CHANNEL)
        ]

    async def _final(self, plan_id: str) -> PlanStatus:
        async def final() -> PlanStatus | None:
            record = await self.app.rt.store.load(plan_id)
            done = record is not None and record.status.final
            return record.status if done and record is not None else None

        for _ in range(600):
            status = await final()
            if status is not None:
                return status
            await _sleep()
        raise AssertionError(f"{plan_id} never ended")


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.05)


@pytest.fixture()
async def scene(
    fakes: Fakes, redis_url: str, tmp_path: Path, coder: tuple[FakeLLM, ThreadedServer]
) -> AsyncIterator[Scene]:
    constitution = im.constitution_file(tmp_path)
    fakes.github.seed_files = _sample_tree()
    fakes.github.implementer = real_implementer(tmp_path / "jobs", coder[1].url)
    (tmp_path / "jobs").mkdir()
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=fakes.llm_server.url,
        constitution=constitution,
    )
    app = await start_app(settings)
    # Every run's verify job runs the pinned verifier with the template's flags.
    keys = await (await app.session.get(f"{app.url}/.well-known/sophie/keys")).text()
    fakes.github.verify_with = as_the_pipeline(keys, tmp_path / "verify", REPO)
    yield Scene(fakes, app, tmp_path)
    await app.close()


async def test_the_seed_directive_becomes_a_checked_commit_deployed_to_staging(
    scene: Scene, fakes: Fakes, coder: tuple[FakeLLM, ThreadedServer]
) -> None:
    coder[0].script(im.MODEL, *im.caching_script())
    card, plan_id = await scene.approved(im.SEED)
    assert await scene.ended(plan_id) == PlanStatus.SUCCEEDED
    assert fakes.github.errors == []
    branch = f"sophie/{plan_id}"
    commit = fakes.github.branch_head(REPO, branch)
    pull = fakes.github.pull_for(REPO, branch)
    assert commit is not None and pull is not None and pull.draft
    thread = scene.thread(card)
    (checked,) = [t for t in thread if "The change was checked" in t]
    for shown in (pull.html_url, "sample_service/auth.py", "tests/test_cache.py", "passed"):
        assert shown in checked, shown
    first, second = dispatched_inputs(fakes)
    assert (first["action"], second["action"]) == ("implement", "deploy")
    assert second["deploy_sha"] == commit
    (result,) = await eventually(
        lambda: [t for t in scene.thread(card) if f"plan `{plan_id}`" in t and "completed" in t],
        what="the result",
    )
    assert commit[:12] in result and "Staging URL" in result
    record = await scene.app.rt.store.load(plan_id)
    assert record is not None and record.run is not None and record.run.change is not None
    assert record.run.change.verdict == "checked" and record.run.change.files == 2
    # Both runs were verified by the pinned verifier (plan, approvals, run, change).
    assert len(list((scene.tmp / "verify").iterdir())) == 2


async def test_a_pipeline_that_pins_other_keys_refuses_to_implement(
    scene: Scene, fakes: Fakes, tmp_path: Path
) -> None:
    other = json.dumps({"keys": [{"public_key_base64": base64.b64encode(b"k" * 32).decode()}]})
    fakes.github.verify_with = as_the_pipeline(other, tmp_path / "other", REPO)
    _, plan_id = await scene.approved(im.SEED)
    assert await scene.ended(plan_id) == PlanStatus.FAILED
    assert fakes.github.pulls == [] and fakes.github.deployments == []
    assert len(dispatched_inputs(fakes)) == 1
    # The verify job's refusal (its sophie-verify annotation) is what the thread says.
    said = " ".join(scene.thread_of(plan_id))
    assert "REJECTED" in said and "known key" in said


async def test_a_model_that_writes_a_workflow_is_stopped_and_nothing_deploys(
    scene: Scene, fakes: Fakes, coder: tuple[FakeLLM, ThreadedServer]
) -> None:
    # sophie implement refuses the write itself; the model then finishes with nothing.
    coder[0].script(
        im.MODEL,
        tool_calls(im.write(".github/workflows/sophie-pipeline.yml", "on: push\n")),
        tool_calls(tool_call("finish", summary="done")),
    )
    card, plan_id = await scene.approved(im.SEED)
    assert await scene.ended(plan_id) == PlanStatus.FAILED
    assert len(dispatched_inputs(fakes)) == 1 and fakes.github.deployments == []
    text = " ".join(scene.thread(card))
    assert "Implementing the change failed" in text and "Nothing was deployed" in text


async def test_failing_tests_stop_the_change(
    scene: Scene, fakes: Fakes, coder: tuple[FakeLLM, ThreadedServer]
) -> None:
    coder[0].script(im.MODEL, *im.naive_caching_script())
    card, plan_id = await scene.approved(im.SEED)
    assert await scene.ended(plan_id) == PlanStatus.FAILED
    assert len(dispatched_inputs(fakes)) == 1 and fakes.github.deployments == []
    text = " ".join(scene.thread(card))
    assert "Implementing the change failed" in text and "test" in text


async def test_a_model_that_never_finishes_stops_with_a_reason(
    scene: Scene, fakes: Fakes, coder: tuple[FakeLLM, ThreadedServer]
) -> None:
    coder[0].script(im.MODEL, *[tool_calls(tool_call("list_files", path=".")) for _ in range(12)])
    card, plan_id = await scene.approved(im.SEED)
    assert await scene.ended(plan_id) == PlanStatus.FAILED
    assert fakes.github.deployments == []
    assert "step" in " ".join(scene.thread(card))


async def test_a_pushed_change_outside_the_plan_is_refused_by_delta(
    scene: Scene, fakes: Fakes
) -> None:
    """A misbehaving implementer (a command, an Action) pushes what it likes: Δ reads the
    commit from GitHub and refuses it, whatever the job reported."""
    fakes.github.implementer = lambda inputs, tree: Implemented(
        files={".github/workflows/sophie-pipeline.yml": "on: push\n", "app/x.py": "x = 1\n"}
    )
    card, plan_id = await scene.approved(im.SEED)
    assert await scene.ended(plan_id) == PlanStatus.FAILED
    assert len(dispatched_inputs(fakes)) == 1 and fakes.github.deployments == []
    (refused,) = [t for t in scene.thread(card) if "Nothing built from this commit deploys" in t]
    assert "The change was refused" in refused and ".github/workflows" in refused
    assert any("Not deployed" in t for t in scene.thread(card))  # the result says so too


async def test_a_change_larger_than_the_constitution_allows_is_refused(
    scene: Scene, fakes: Fakes
) -> None:
    big = "".join(f"LINE_{n} = {n}\n" for n in range(2500))  # change_limits: 2000 lines
    fakes.github.implementer = lambda inputs, tree: Implemented(files={"app/big.py": big})
    card, plan_id = await scene.approved(im.SEED)
    assert await scene.ended(plan_id) == PlanStatus.FAILED
    assert len(dispatched_inputs(fakes)) == 1 and fakes.github.deployments == []
    (refused,) = [t for t in scene.thread(card) if "Nothing built from this commit deploys" in t]
    assert "adds and deletes 2500 lines" in refused and "is 2000" in refused


async def test_production_deploys_the_change_once_the_diff_is_approved_on_a_second_card(
    scene: Scene, fakes: Fakes, coder: tuple[FakeLLM, ThreadedServer]
) -> None:
    coder[0].script(im.MODEL, *im.caching_script())
    directive = "Add caching to the user authentication system and deploy to production"
    card, plan_id = await scene.approved(directive, ALICE, BOB)
    assert await scene.ended(plan_id) == PlanStatus.REVIEW
    assert len(dispatched_inputs(fakes)) == 1 and fakes.github.deployments == []
    text = " ".join(scene.thread(card))
    assert "The change was checked" in text and "only reviewed code" in text

    def second_card() -> Any:
        for m in fakes.slack.thread(CHANNEL, card.thread_ts):
            if kit.APPROVE_CHANGE in _buttons(m.blocks):
                return m
        return None

    review = copy.deepcopy(await eventually(second_card, what="the second card"))
    value = _buttons(review.blocks)[kit.APPROVE_CHANGE]["value"]
    assert value.startswith(f"{plan_id}|")

    async def press(who: str, rid: str, value: str = value, ts: str = review.ts) -> str:
        await scene.app.interact(click(fakes, kit.APPROVE_CHANGE, value, who, ts, rid))
        reply = await eventually(lambda: response_to(fakes.slack, rid), what=rid)
        return str(reply["text"])

    # The plan's card is not the second card; a forged digest is not the change.
    assert "does not belong" in await press(ALICE, "r0", ts=card.ts)
    assert "out of date" in await press(ALICE, "r1", value=f"{plan_id}|{'0' * 64}")
    assert "not an approver" in await press(DAVE, "r2")
    assert "still needed" in await press(ALICE, "r3")
    assert "the change deploys" in await press(BOB, "r4")
    assert await eventually(
        lambda: fakes.github.deployments, within=20, what="the production deployment"
    )
    record = await scene.app.rt.store.load(plan_id)
    commit = fakes.github.branch_head(REPO, f"sophie/{plan_id}")
    assert commit is not None
    (deployment,) = fakes.github.deployments
    assert deployment.sha == commit and deployment.environment == "production"
    _, second = dispatched_inputs(fakes)
    assert second["action"] == "deploy" and second["deploy_sha"] == commit
    assert record is not None
