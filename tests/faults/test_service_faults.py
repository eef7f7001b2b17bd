"""The services SOPHIE calls fail at chosen calls: Slack answers 429 or 5xx to the card,
the run's status message, its edits or the result; GitHub answers 5xx or a secondary
rate limit to the dispatch or to the run lookups; the model never answers.

Seen from outside, whatever fails: one card (or a clear message), one dispatch, one
result, and the status message ends showing how the run ended.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.github_rest import FakeGitHub
from tests.faults.scene import MODEL, RESULT_TEXT, Scene, cards, notes, statuses

# --- Slack -------------------------------------------------------------------------------


def _header_says_plan(params: dict[str, Any]) -> bool:
    """A chat.postMessage of a plan card (the metadata SOPHIE posts it with)."""
    metadata = params.get("metadata")
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return isinstance(metadata, dict) and metadata.get("event_type") == "sophie_plan_card"


def _status_text(params: dict[str, Any]) -> bool:
    return str(params.get("text", "")).startswith("Workflow run")


def _result_text(params: dict[str, Any]) -> bool:
    return bool(RESULT_TEXT.match(str(params.get("text", ""))))


@dataclass(frozen=True)
class SlackCall:
    id: str
    method: str
    where: Callable[[dict[str, Any]], bool]


SLACK_CALLS = [
    SlackCall("card", "chat.postMessage", _header_says_plan),
    SlackCall("status", "chat.postMessage", _status_text),
    SlackCall("status-edit", "chat.update", _status_text),
    SlackCall("result", "chat.postMessage", _result_text),
]
RETRY_AFTER = 1


@pytest.mark.parametrize("status", [429, 503], ids=["429", "503"])
@pytest.mark.parametrize("call", SLACK_CALLS, ids=lambda c: c.id)
async def test_slack_fails_at_each_call(scene: Scene, call: SlackCall, status: int) -> None:
    seen: list[float] = []  # when each matching call arrived

    def where(params: dict[str, Any]) -> bool:
        if call.where(params):
            seen.append(time.monotonic())
            return True
        return False

    fault = scene.slack.fail_matching(call.method, where, status=status, retry_after=RETRY_AFTER)
    await scene.start()
    card, _ = await scene.end_to_end()
    assert fault.hits == 1, f"no {call.id} call was made"
    assert len(seen) >= 2, f"the failed {call.id} call was never made again"
    if status == 429:  # Slack: do not call again before Retry-After seconds
        assert seen[1] - seen[0] >= RETRY_AFTER * 0.95, (
            f"called again after {seen[1] - seen[0]:.2f} s"
        )
    (status_message,) = statuses(scene.slack, card.thread_ts or card.ts)
    assert "success" in (status_message.text or ""), status_message.text


# --- GitHub --------------------------------------------------------------------------------

DISPATCH = r"/actions/workflows/[^/]+/dispatches$"
RUN_LIST = r"/actions/workflows/[^/]+/runs$"
RUN = r"/actions/runs/\d+$"


@dataclass(frozen=True)
class GitHubFault:
    id: str
    inject: Callable[[FakeGitHub], None]
    method: str
    path: str
    statuses: tuple[int, ...]


def _reply_lost_then_lookup_fails(gh: FakeGitHub) -> None:
    gh.fail_next("POST", DISPATCH, status=502, after=True)
    gh.fail_next("GET", RUN_LIST, status=503, times=4)


GITHUB_FAULTS = [
    # Nothing reached the workflow, twice in a row.
    GitHubFault(
        "dispatch-5xx-twice",
        lambda gh: gh.fail_next("POST", DISPATCH, status=502, times=2),
        "POST",
        DISPATCH,
        (502,),
    ),
    # The run started but the reply was lost; then the lookup by correlation id fails
    # (one GET and urllib3's three retries).
    GitHubFault(
        "dispatch-reply-lost-then-lookup-5xx",
        lambda gh: _reply_lost_then_lookup_fails(gh),
        "GET",
        RUN_LIST,
        (503,),
    ),
    GitHubFault(
        "dispatch-secondary-rate-limit-403",
        lambda gh: gh.rate_limit_at("POST", DISPATCH, status=403, retry_after=1),
        "POST",
        DISPATCH,
        (403,),
    ),
    GitHubFault(
        "dispatch-secondary-rate-limit-429",
        lambda gh: gh.rate_limit_at("POST", DISPATCH, status=429, retry_after=1),
        "POST",
        DISPATCH,
        (429,),
    ),
    # Tracking: the run lookup fails through every urllib3 retry.
    GitHubFault(
        "run-lookup-5xx",
        lambda gh: gh.fail_next("GET", RUN, status=503, times=4),
        "GET",
        RUN,
        (503,),
    ),
]


@pytest.mark.parametrize("fault", GITHUB_FAULTS, ids=lambda f: f.id)
async def test_github_fails_at_each_call(scene: Scene, fault: GitHubFault) -> None:
    fault.inject(scene.github)
    await scene.start()
    card, _ = await scene.end_to_end()
    path = re.compile(fault.path)
    landed = [
        r
        for r in list(scene.github.requests)
        if r.method == fault.method and path.search(r.path) and r.status in fault.statuses
    ]
    assert landed, f"the fault never landed on {fault.method} {fault.path}"
    (status_message,) = statuses(scene.slack, card.thread_ts or card.ts)
    assert "success" in (status_message.text or ""), status_message.text


# --- the model ------------------------------------------------------------------------------

LLM_DIRECTIVE = "Add caching to the user authentication system and deploy to staging"


async def test_a_model_that_hangs_once_still_gives_a_card(scene: Scene) -> None:
    scene.fakes.llm.hang(MODEL, times=1)
    await scene.start(llm=True)
    thread_ts = await scene.directive(LLM_DIRECTIVE)
    await scene.card(thread_ts)
    assert len(scene.fakes.llm.completions(MODEL)) >= 2  # the hung call, then the answer


async def test_a_model_that_never_answers_gets_a_clear_message(scene: Scene) -> None:
    scene.fakes.llm.hang(MODEL, times=50)
    await scene.start(llm=True)
    asked = time.monotonic()
    thread_ts = await scene.directive(LLM_DIRECTIVE)
    card = await scene.outcome(thread_ts, within=45)
    took = time.monotonic() - asked
    assert card is None, "a card without a plan"
    said = " ".join(m.text or "" for m in notes(scene.slack, thread_ts))
    assert "plan" in said.lower(), said
    assert cards(scene.slack, thread_ts) == []
    print(f"\nmodel never answers: the thread was told after {took:.1f} s: {said[:200]!r}")
