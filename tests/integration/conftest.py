"""Fixtures for end-to-end tests: fake Slack, GitHub and LLM servers, and SOPHIE itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.github_rest import FakeGitHub
from tests.fakes.llm_api import FakeLLM
from tests.fakes.llm_plans import planning_model
from tests.fakes.server import ThreadedServer
from tests.fakes.slack_api import FakeSlack
from tests.harness import BOT_TOKEN, GITHUB_TOKEN, LLM_KEY, App, settings_for, start_app

ALICE, BOB, CAROL = "U0ALICE001", "U0BOBBY002", "U0CAROL003"
DAVE = "U0DAVE0004"  # the requester, not an approver
MALLORY = "U0MALLORY9"  # not an approver
SRE_GROUP = "S0SRETEAM1"
SEC_GROUP = "S0SECURITY1"
ERIN = "U0ERIN0005"  # an approver only through the SRE user group
FRANK = "U0FRANK006"  # an approver only through the security user group
CHANNEL = "C0DEPLOYS1"
REPO = "acme/auth-service"
STAGING_URL = "https://staging.acme.test/auth-service"
USERS = {
    ALICE: "alice",
    BOB: "bob",
    CAROL: "carol",
    DAVE: "dave",
    MALLORY: "mallory",
    ERIN: "erin",
    FRANK: "frank",
}


@dataclass
class Fakes:
    slack: FakeSlack
    github: FakeGitHub
    llm: FakeLLM
    slack_server: ThreadedServer
    github_server: ThreadedServer
    llm_server: ThreadedServer


@pytest.fixture()
def fakes() -> Iterator[Fakes]:
    slack = FakeSlack(
        token=BOT_TOKEN, users=USERS, usergroups={SRE_GROUP: [ERIN], SEC_GROUP: [FRANK]}
    )
    github = FakeGitHub(
        token=GITHUB_TOKEN,
        repos=(REPO, "acme/web-frontend"),
        environment_url=STAGING_URL,
    )
    llm = FakeLLM(keys=(LLM_KEY,))
    llm.default = planning_model()
    servers = [ThreadedServer(x.app).start() for x in (slack, github, llm)]
    yield Fakes(slack, github, llm, *servers)
    for server in servers:
        server.stop()


@pytest.fixture()
def planner_url(fakes: Fakes) -> str | None:
    """The model endpoint the ``app`` fixture uses; a module returns None from its own
    ``planner_url`` fixture for the offline planner (deterministic cards)."""
    return fakes.llm_server.url


@pytest.fixture()
async def app(
    fakes: Fakes, redis_url: str, tmp_path: Path, planner_url: str | None
) -> AsyncIterator[App]:
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=planner_url,
    )
    running = await start_app(settings)
    yield running
    await running.close()
