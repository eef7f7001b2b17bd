"""A scripted implementer model and the sample service it works on.

The tests and ``bench/bench_implement.py`` run ``sophie implement`` for real: a copy of
``examples/sample-service`` made into a git repository, the repository's own tests, and
:class:`tests.fakes.llm_api.FakeLLM` answering with the tool calls scripted here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from roles import diff_engine, integrator, navigator
from roles.constitution import Constitution, load_constitution
from roles.offline_planner import OfflinePlanner
from roles.plan import Plan
from roles.records import Actor
from tests.fakes.llm_api import ToolCalls, tool_call, tool_calls

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample-service"
SEED = "Add caching to the user authentication system and deploy to staging"
REPO = "acme/auth-service"
MODEL = "openai/gpt-4o-mini"
# The sample service's tests, with the interpreter running the suite (no PATH lookup).
TEST_COMMAND = f"{sys.executable} -m unittest discover -s tests -t ."


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, env=_git_env()
    )
    return done.stdout.strip()


def _git_env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
    }


def sample_repo(dest: Path) -> Path:
    """A git repository holding the sample service, one commit on main."""
    shutil.copytree(SAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "sample service")
    return dest


def constitution_file(folder: Path, **repo_rule: Any) -> Path:
    """The documented constitution, with the sample service as ``acme/auth-service`` (its
    test command declared) and ``repo_rule`` overriding that repo's rule."""
    data = yaml.safe_load((ROOT / "constitution.yml").read_text())
    data["policies_dir"] = str(ROOT / "policies")
    for repo in data["repos"]:
        if repo["name"] == REPO:
            repo.update({"test_command": TEST_COMMAND, **repo_rule})
    path = folder / "constitution.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def seed_plan(constitution: Constitution, directive: str = SEED) -> Plan:
    """The plan SOPHIE makes for ``directive`` (offline planner): change steps included."""
    reading = navigator.interpret(directive, constitution)
    proposal = await OfflinePlanner().propose(reading, constitution, [])
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, proposal.confidence)
    return integrator.assemble(
        integrator.plan_id_for(f"implement:{directive}"),
        datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
        reading,
        Actor("T0SOPHIE01", "U0DAVE0004"),
        proposal,
        verdict,
        constitution,
    )


def load(path: Path) -> Constitution:
    return load_constitution(path)


# -- the edits ---------------------------------------------------------------------------

AUTH = "sample_service/auth.py"

CONSTANT = (AUTH, "TOKEN_TTL_SECONDS = 3600\n", "TOKEN_TTL_SECONDS = 3600\nCACHE_SECONDS = 30\n")
CACHE_FIELD = (
    AUTH,
    "        self.clock = clock\n        self.ttl = ttl\n",
    "        self.clock = clock\n        self.ttl = ttl\n"
    "        # Users looked up by verify(), kept CACHE_SECONDS; forgotten when they change.\n"
    "        self._cache: dict[str, tuple[float, User]] = {}\n"
    "        store.subscribe(self._forget)\n\n"
    "    def _forget(self, username: str) -> None:\n"
    "        self._cache.pop(username, None)\n",
)
NAIVE_FIELD = (
    AUTH,
    "        self.clock = clock\n        self.ttl = ttl\n",
    "        self.clock = clock\n        self.ttl = ttl\n"
    "        self._cache: dict[str, tuple[float, User]] = {}\n",
)
CACHED_LOOKUP = (
    AUTH,
    "        # Every request looks the user up in the store (a database round trip).\n"
    "        user = self.store.get(username)\n",
    "        cached = self._cache.get(username)\n"
    "        if cached is not None and cached[0] > self.clock():\n"
    "            user: User | None = cached[1]\n"
    "        else:\n"
    "            user = self.store.get(username)\n"
    "            if user is not None:\n"
    "                self._cache[username] = (self.clock() + CACHE_SECONDS, user)\n",
)
CACHE_TEST = (
    "tests/test_cache.py",
    """import unittest

from sample_service.auth import Authenticator
from sample_service.users import UserStore


class CacheTest(unittest.TestCase):
    def test_verify_looks_a_user_up_once(self) -> None:
        store = UserStore()
        store.add("alice", "pw", iterations=1000)
        auth = Authenticator(store, b"k" * 32)
        token = auth.login("alice", "pw")
        before = store.lookups
        for _ in range(5):
            auth.verify(token)
        self.assertEqual(store.lookups - before, 1)
""",
)
SUMMARY = "Cache verified users for 30 s in Authenticator, forgotten when a user changes."


def edit(change: tuple[str, str, str]) -> Any:
    path, old, new = change
    return tool_call("edit_file", path=path, old=old, new=new)


def write(path: str, content: str) -> Any:
    return tool_call("write_file", path=path, content=content)


def caching_script(summary: str = SUMMARY) -> list[ToolCalls]:
    """Six turns: look, read, edit (three calls at once), add a test, run the tests, finish."""
    return [
        tool_calls(tool_call("list_files", path=".")),
        tool_calls(tool_call("read_file", path=AUTH)),
        tool_calls(edit(CONSTANT), edit(CACHE_FIELD), edit(CACHED_LOOKUP)),
        tool_calls(write(*CACHE_TEST)),
        tool_calls(tool_call("run_tests")),
        tool_calls(tool_call("finish", summary=summary)),
    ]


def naive_caching_script() -> list[ToolCalls]:
    """A cache that never forgets: the sample's deactivation test fails."""
    return [
        tool_calls(tool_call("read_file", path=AUTH)),
        tool_calls(edit(CONSTANT), edit(NAIVE_FIELD), edit(CACHED_LOOKUP)),
        tool_calls(tool_call("finish", summary="Cache users in verify().")),
    ]
