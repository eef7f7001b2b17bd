"""Directive-to-card time: from the signed app_mention to the plan card in the thread.

Three ways in the same run, all over loopback with a real Redis and the worker
in-process: the offline planner, the fake LLM answering at once, and the fake LLM
with three models (consensus). The baseline is one bare chat-completion round trip
to the same fake LLM through the `openai` client, so the ratio shows what SOPHIE
adds on top of the model call.

    .venv/bin/python bench/bench_card.py --rounds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from openai import AsyncOpenAI  # noqa: E402

from bench.common import CHANNEL, REQUESTER, USERS, redis, summary  # noqa: E402
from bot.llm import _RESPONSE_FORMAT as RESPONSE_FORMAT  # noqa: E402
from bot.llm import ATTRIBUTION, LLMPlanner  # noqa: E402
from roles import navigator  # noqa: E402
from roles.constitution import load_constitution  # noqa: E402
from tests import slack_requests as sr  # noqa: E402
from tests.fakes.llm_api import FakeLLM  # noqa: E402
from tests.fakes.llm_plans import planning_model  # noqa: E402
from tests.fakes.server import ThreadedServer  # noqa: E402
from tests.fakes.slack_api import FakeSlack  # noqa: E402
from tests.harness import BOT_TOKEN, LLM_KEY, settings_for, start_app  # noqa: E402

SEED = "Add caching to the user authentication system and deploy to staging"
MODELS = ("openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet", "google/gemini-2.0-flash")


def _has_card(slack: FakeSlack, thread_ts: str) -> bool:
    return any(
        b.get("type") == "header"
        for m in slack.thread(CHANNEL, thread_ts)
        for b in (m.blocks or [])
    )


async def directive_to_card(
    name: str, rounds: int, slack: FakeSlack, slack_url: str, llm_url: str | None, models: str
) -> list[float]:
    samples = []
    with redis() as server, tempfile.TemporaryDirectory(prefix="sophie-bench-") as tmp:
        extra: dict[str, Any] = {"SOPHIE_LLM_MODELS": models} if models else {}
        settings = settings_for(
            server.url, Path(tmp), slack_url=slack_url, github_url=None, llm_url=llm_url, **extra
        )
        app = await start_app(settings)
        try:
            for _ in range(rounds):
                event = sr.mention_event(SEED, REQUESTER, CHANNEL)
                thread_ts = event["event"]["ts"]
                start = time.perf_counter()
                resp = await app.event(event)
                assert resp.status == 200
                # The fake records the card on its own thread; look every millisecond.
                while not _has_card(slack, thread_ts):  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                samples.append(time.perf_counter() - start)
        finally:
            await app.close()
    return samples


async def bare_llm(rounds: int, llm_url: str) -> list[float]:
    """The exact request SOPHIE's planner sends (prompt, strict schema), made directly."""
    constitution = load_constitution(ROOT / "constitution.yml")
    reading = navigator.interpret(SEED, constitution)
    samples = []
    async with AsyncOpenAI(
        api_key=LLM_KEY, base_url=f"{llm_url}/api/v1", default_headers=ATTRIBUTION
    ) as client:
        messages = LLMPlanner(client, MODELS[:1])._messages(reading, constitution, [])
        for _ in range(rounds):
            start = time.perf_counter()
            await client.chat.completions.create(
                model=MODELS[0],
                messages=messages,
                temperature=0.2,
                response_format=RESPONSE_FORMAT,
                extra_body={"provider": {"require_parameters": True}},
            )
            samples.append(time.perf_counter() - start)
    return samples


async def run(rounds: int) -> None:
    slack = FakeSlack(token=BOT_TOKEN, users=USERS, usergroups={"S0SRETEAM1": []})
    llm = FakeLLM(keys=(LLM_KEY,), models=MODELS)
    llm.default = planning_model()
    slack_server = ThreadedServer(slack.app).start()
    llm_server = ThreadedServer(llm.app).start()
    try:
        baseline = await bare_llm(rounds, llm_server.url)
        results = {
            "offline planner": await directive_to_card(
                "offline", rounds, slack, slack_server.url, None, ""
            ),
            "fake LLM, 1 model": await directive_to_card(
                "llm", rounds, slack, slack_server.url, llm_server.url, MODELS[0]
            ),
            "fake LLM, 3 models": await directive_to_card(
                "consensus", rounds, slack, slack_server.url, llm_server.url, ",".join(MODELS)
            ),
        }
    finally:
        slack_server.stop()
        llm_server.stop()
    b50, b99, _ = summary(baseline)
    print(f"Directive → card over loopback, {rounds} directives each (worker in-process)")
    print(f"{'':<22}{'p50':>10}{'p99':>10}{'p50 / bare LLM call':>22}")
    print(f"{'bare LLM call':<22}{b50:>8.2f}ms{b99:>8.2f}ms{1.0:>22.2f}")
    for name, samples in results.items():
        p50, p99, _ = summary(samples)
        print(f"{name:<22}{p50:>8.2f}ms{p99:>8.2f}ms{p50 / b50:>22.2f}")
    print(f"fake Slack rejections during the run: {len(slack.rejections)}")
    print(json.dumps({"rejections": [r.error for r in slack.rejections][:5]}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args(argv)
    asyncio.run(run(args.rounds))


if __name__ == "__main__":
    main()
