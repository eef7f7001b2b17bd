"""Δ reads a produced change from GitHub as GitHub reports it, and fails closed.

The real gateway (PyGithub) against the fake GitHub, whose compare answers as GitHub
documents it (tests/fakes/github_git.py cites the pages): what the gateway reads is
checked by the real rules with the shipped constitution.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from github import Auth

from bot.github_gateway import GitHubGateway
from roles import diff_engine, integrator, navigator
from roles.change_check import Change, check_change
from roles.constitution import Constitution, load_constitution
from roles.offline_planner import OFFLINE_MODEL, offline_draft
from roles.plan import Plan
from roles.ports import Proposal
from roles.records import Actor
from tests.fakes.github_rest import FakeGitHub
from tests.fakes.server import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghp_change0123456789"
REPO = "acme/auth-service"
SEED = "Add caching to the user authentication system and deploy to staging"
SERVICE = {
    "app/auth.py": "def login(user):\n    return check(user)\n",
    "tests/test_auth.py": "def test_login():\n    assert login('u')\n",
}


@pytest.fixture()
def github() -> Iterator[tuple[FakeGitHub, GitHubGateway]]:
    fake = FakeGitHub(token=TOKEN, repos=(REPO,))
    server = ThreadedServer(fake.app).start()
    yield fake, GitHubGateway(Auth.Token(TOKEN), server.url)
    server.stop()


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


@pytest.fixture(scope="module")
def seed(constitution: Constitution) -> Plan:
    reading = navigator.interpret(SEED, constitution)
    proposal = Proposal(offline_draft(reading), "offline", [OFFLINE_MODEL], 0.75)
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, 0.75)
    return integrator.assemble(
        integrator.plan_id_for(SEED),
        datetime.now(UTC),
        reading,
        Actor("T0SOPHIE01", "U0REQUEST1", "dave"),
        proposal,
        verdict,
        constitution,
    )


def _verdict(constitution: Constitution, plan: Plan, change: Change) -> set[str]:
    repo = constitution.repo(REPO)
    assert repo is not None
    verdict = check_change(plan, repo, constitution.environment("staging"), constitution, change)
    return {h.id for h in verdict.denials}


async def test_delta_checks_the_change_github_reports(
    github: tuple[FakeGitHub, GitHubGateway], constitution: Constitution, seed: Plan
) -> None:
    fake, gateway = github
    base = fake.push(REPO, SERVICE)
    branch = f"sophie/{seed.id}"
    good = fake.push(
        REPO,
        {
            "app/cache.py": "CACHE = {}\n",
            "app/auth.py": "from app.cache import CACHE\n\ndef login(user):\n"
            "    return CACHE.setdefault(user, check(user))\n",
            "tests/test_cache.py": "def test_cached():\n    assert login('u') is login('u')\n",
        },
        branch=branch,
        parent=base,
    )
    change = await gateway.compare(REPO, base, good)
    assert (change.base_sha, change.head_sha, change.status) == (base, good, "ahead")
    assert change.stat() == {"files": 3, "additions": 6, "deletions": 1}
    assert _verdict(constitution, seed, change) == set()

    # Each bad commit on top of the good one: Δ refuses it, and says why.
    bad: dict[str, tuple[Mapping[str, str | bytes | None], str]] = {
        "a workflow edited": (
            {".github/workflows/sophie-pipeline.yml": "on: push\n"},
            "change.forbidden-path",
        ),
        "TLS checks turned off": (
            {"app/http.py": "get(url, verify=False)\n"},
            "policy.change-disables-tls-verification",
        ),
        "a binary file (no patch)": ({"app/model.bin": b"\0\1\2"}, "change.unreadable"),
        "a file too large for a diff": (
            {"app/data.py": "".join(f"X{n} = {n}\n" for n in range(20_001))},
            "change.unreadable",
        ),
        "more files than GitHub lists": (
            {f"app/gen/m{n}.py": f"N = {n}\n" for n in range(300)},
            "change.too-large",
        ),
    }
    for name, (files, rule) in bad.items():
        head = fake.push(REPO, files, branch=f"{branch}-{len(name)}", parent=good)
        change = await gateway.compare(REPO, base, head)
        assert rule in _verdict(constitution, seed, change), name
    # A branch built on an older base: main moved on, the change is not on top of it.
    fake.push(REPO, {"app/other.py": "x = 1\n"})
    stale = await gateway.compare(REPO, "main", good)
    assert stale.status == "diverged"
    assert "change.not-on-base" in _verdict(constitution, seed, stale)
    with pytest.raises(ValueError, match="full sha"):
        await gateway.compare(REPO, base, branch)
    assert fake.rejections == []
    compares = [r for r in fake.requests if "/compare/" in r.path]
    # One page of one commit: the files come with the first page only.
    assert compares and all(r.query == {"page": "1", "per_page": "1"} for r in compares)


async def test_a_commit_is_on_the_default_branch_once_merged(
    github: tuple[FakeGitHub, GitHubGateway],
) -> None:
    fake, gateway = github
    base = fake.push(REPO, SERVICE)
    head = fake.push(REPO, {"app/cache.py": "CACHE = {}\n"}, branch="sophie/p", parent=base)
    assert not await gateway.commit_on_default_branch(REPO, head, "main")  # ahead of main
    assert await gateway.commit_on_default_branch(REPO, base, "main")  # main's head
    # A squash merge writes a new commit: the checked sha itself is not on main.
    squash = fake.push(REPO, {"app/cache.py": "CACHE = {}\n"}, message="squash")
    assert not await gateway.commit_on_default_branch(REPO, head, "main")
    # A merge commit keeps it: main is now past it ("behind").
    fake.push(REPO, {}, message="Merge pull request #1", merge=head)
    assert await gateway.commit_on_default_branch(REPO, head, "main")
    assert await gateway.commit_on_default_branch(REPO, squash, "main")
    assert not await gateway.commit_on_default_branch(REPO, "9" * 40, "main")  # unknown: 404
    assert not await gateway.commit_on_default_branch(REPO, "main", "main")  # not a sha
