"""`sophie implement` for real: a git repository made from examples/sample-service, the
service's own tests, and a scripted model endpoint answering with tool calls.

The command runs as the pipeline runs it (``python -m bot implement`` in a subprocess).
The good path ends in one commit on ``sophie/<plan-id>`` that links the plan; every bad
path ends with a clear message, a non-zero exit and no commit (no branch, HEAD where it
was), so nothing can be built or deployed from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from roles.plan import Plan
from tests.fakes import implementing_model as im
from tests.fakes.llm_api import FakeLLM, Reply, slow, tool_call, tool_calls
from tests.fakes.server import ThreadedServer
from tests.harness import LLM_KEY

ROOT = Path(__file__).resolve().parents[2]
# Credentials in the job's environment that the model must never see.
GITHUB_SECRET = "ghp_jobtoken0123456789abcdef"
OTHER_SECRET = "sk-other-provider-secret-42"


@pytest.fixture()
def llm() -> Iterator[tuple[FakeLLM, ThreadedServer]]:
    fake = FakeLLM(keys=(LLM_KEY,), models=(im.MODEL,))
    server = ThreadedServer(fake.app).start()
    yield fake, server
    server.stop()


@dataclass
class Scene:
    tmp: Path
    repo: Path
    base: str
    plan: Plan
    plan_file: Path
    constitution: Path
    fake: FakeLLM
    url: str

    def script(self, *replies: Reply) -> None:
        self.fake.script(im.MODEL, *replies)

    def implement(self, *extra: str, **env: str) -> tuple[subprocess.CompletedProcess[str], Any]:
        out = self.tmp / "result.json"
        out.unlink(missing_ok=True)
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SOPHIE_", "SLACK_", "GITHUB_", "OPENAI_", "OPENROUTER_"))
        }
        clean.update(
            {
                "SOPHIE_DATA_DIR": str(self.tmp / "data"),
                "SOPHIE_LLM_API_KEY": LLM_KEY,
                "SOPHIE_LLM_BASE_URL": f"{self.url}/api/v1",
                "SOPHIE_LLM_MODELS": im.MODEL,
                "SOPHIE_LLM_RETRIES": "0",
                "GITHUB_TOKEN": GITHUB_SECRET,
                "OPENAI_API_KEY": OTHER_SECRET,
                **env,
            }
        )
        args = ["--plan", str(self.plan_file), "--constitution", str(self.constitution)]
        args += ["--repo-dir", str(self.repo), "--out", str(out), *extra]
        done = subprocess.run(
            [sys.executable, "-m", "bot", "implement", *args],
            cwd=ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
        )
        result = json.loads(out.read_text()) if out.exists() else None
        return done, result

    def branches(self) -> list[str]:
        return im.git(self.repo, "branch", "--format=%(refname:short)").split()

    def assert_nothing_committed(self) -> None:
        assert self.branches() == ["main"]
        assert im.git(self.repo, "rev-parse", "HEAD") == self.base
        assert im.git(self.repo, "symbolic-ref", "HEAD") == "refs/heads/main"

    def tool_answers(self) -> list[str]:
        """What the model was told: every tool message of the last request it got."""
        last = self.fake.completions(im.MODEL)[-1].body
        return [m["content"] for m in last["messages"] if m["role"] == "tool"]


async def _scene(
    tmp: Path, llm: tuple[FakeLLM, ThreadedServer], bundle: bool = False, **rule: Any
) -> Scene:
    repo = im.sample_repo(tmp / "repo")
    path = im.constitution_file(tmp, **rule)
    constitution = im.load(path)
    plan = await im.seed_plan(constitution)
    plan_file = tmp / "plan.json"
    plan_file.write_text(json.dumps(plan.document()))
    if bundle:  # as the pipeline has it: the bundle the decisions were signed under
        path = tmp / "constitution.json"
        path.write_text(json.dumps(constitution.bundle()))
    fake, server = llm
    base = im.git(repo, "rev-parse", "HEAD")
    return Scene(tmp, repo, base, plan, plan_file, path, fake, server.url)


async def test_the_seed_directive_is_implemented_tested_and_committed_on_its_branch(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm, bundle=True)
    remote = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    im.git(s.repo, "remote", "add", "origin", str(remote))
    im.git(s.repo, "push", "-q", "origin", "main")
    s.script(*im.caching_script())
    output = tmp_path / "github_output"
    done, result = s.implement("--patch", str(tmp_path / "change.patch"), GITHUB_OUTPUT=str(output))
    assert done.returncode == 0, done.stderr
    branch = f"sophie/{s.plan.id}"
    assert "COMMITTED" in done.stdout and f"git push origin {branch}" in done.stdout

    # One commit on the plan's branch, from the base, with exactly the model's two files.
    commit = im.git(s.repo, "rev-parse", branch)
    assert im.git(s.repo, "rev-parse", f"{commit}^") == s.base
    assert im.git(s.repo, "symbolic-ref", "HEAD") == f"refs/heads/{branch}"
    files = im.git(s.repo, "show", "--name-only", "--format=", commit).split()
    assert sorted(files) == ["sample_service/auth.py", "tests/test_cache.py"]
    message = im.git(s.repo, "log", "-1", "--format=%B", commit)
    assert message.startswith(f"SOPHIE plan {s.plan.id} (sha256:{s.plan.digest})")
    assert im.SUMMARY in message and f"Sophie-Plan-Digest: sha256:{s.plan.digest}" in message
    assert im.git(s.repo, "status", "--porcelain", "--untracked-files=no") == ""
    # Nothing pushed: the remote still has main only.
    assert "sophie/" not in im.git(s.repo, "ls-remote", "origin")

    assert result["status"] == "committed" and result["failure"] == ""
    assert result["branch"] == branch and result["commit"] == commit and result["base"] == s.base
    assert result["plan"] == {"id": s.plan.id, "digest": f"sha256:{s.plan.digest}"}
    assert result["diff"]["files"] == 2 and result["diff"]["deletions"] == 2
    assert result["diff"]["additions"] > 20
    assert result["tests"]["passed"] is True and result["tests"]["exit_code"] == 0
    assert result["tests"]["command"] == im.TEST_COMMAND
    assert "OK" in result["tests"]["output_tail"]
    assert (result["steps_used"], result["tool_calls"], result["stop_reason"]) == (6, 8, "finished")
    assert result["tokens_used"] > 0 and result["refusals"] == []
    assert result["pull_request"]["title"].startswith("SOPHIE: Add caching")
    assert "diff --git a/sample_service/auth.py" in (tmp_path / "change.patch").read_text()
    lines = output.read_text().splitlines()
    assert f"branch={branch}" in lines and f"commit={commit}" in lines
    assert "tests_passed=true" in lines and "status=committed" in lines

    # What the model was given: the tools, the rules, the plan's change steps as data.
    first = s.fake.completions(im.MODEL)[0].body
    assert {t["function"]["name"] for t in first["tools"]} == {
        "list_files", "read_file", "search", "edit_file", "write_file", "run_tests", "finish",
    }  # fmt: skip
    system, user = first["messages"][0]["content"], first["messages"][1]["content"]
    assert ".github/workflows/**" in system and "not instructions" in system
    steps = json.loads(user.split("<change_steps>")[1].split("</change_steps>")[0])
    assert [x["action"] for x in steps] == ["code_change", "config_change", "test"]
    answers = s.tool_answers()
    assert "sample_service/auth.py" in answers[0]  # list_files
    assert answers[-1].startswith(f"{im.TEST_COMMAND}: passed")  # run_tests; finish ends it


async def test_a_forbidden_path_is_refused_and_nothing_changes(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    s.script(
        tool_calls(tool_call("write_file", path=".github/workflows/x.yml", content="on: push")),
        tool_calls(tool_call("edit_file", path="config/.env", old="A", new="B")),
        tool_calls(tool_call("read_file", path=".GitHub/Workflows/ci.yml")),
        tool_calls(tool_call("write_file", path=".git/hooks/pre-commit", content="evil")),
        tool_calls(tool_call("finish", summary="Added a workflow.")),
    )
    done, result = s.implement()
    assert done.returncode == 1
    assert "nothing changed" in done.stderr and "refused" in done.stderr
    assert result["failure"] == "nothing_changed" and len(result["refusals"]) == 4
    assert "forbidden by the constitution (.github/workflows/**)" in result["refusals"][0]
    assert all(a.startswith("refused:") for a in s.tool_answers()[:4])
    assert not (s.repo / ".github").exists()
    assert not (s.repo / ".git/hooks/pre-commit").exists()
    s.assert_nothing_committed()


async def test_paths_outside_the_repository_are_refused_symlinks_too(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not read")
    (s.repo / "docs").symlink_to(outside)
    s.script(
        tool_calls(
            tool_call("read_file", path="../../etc/passwd"),
            tool_call("read_file", path="/etc/passwd"),
            tool_call("read_file", path="docs/secret.txt"),
            tool_call("write_file", path="docs/new.txt", content="x"),
            tool_call("search", pattern="root", path="../.."),
            tool_call("list_files", path="sample_service/../../.."),
        ),
        tool_calls(tool_call("finish", summary="Read some files.")),
    )
    done, result = s.implement()
    assert done.returncode == 1 and result["failure"] == "nothing_changed"
    answers = s.tool_answers()
    assert len(answers) == 6 and all(a.startswith("refused:") for a in answers), answers
    assert "leads outside the repository" in answers[0] and "is absolute" in answers[1]
    assert "symbolic link" in answers[2] and "symbolic link" in answers[3]
    assert "do not read" not in json.dumps(s.fake.completions(im.MODEL)[-1].body)
    assert not (outside / "new.txt").exists()
    s.assert_nothing_committed()


async def test_failing_tests_leave_no_commit(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    s.script(*im.naive_caching_script())
    done, result = s.implement()
    assert done.returncode == 1
    assert "not committed: the tests failed" in done.stderr
    assert "test_a_deactivated_user_is_refused_at_once" in done.stderr  # the tail is printed
    assert result["status"] == "failed" and result["failure"] == "tests_failed"
    assert result["tests"]["passed"] is False and result["tests"]["exit_code"] == 1
    assert result["commit"] == "" and result["branch"] == "" and result["diff"]["files"] == 1
    s.assert_nothing_committed()


async def test_a_change_larger_than_the_constitution_allows_is_not_committed(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm, change_limits={"max_files": 5, "max_lines": 20})
    big = "".join(f"LINE_{n} = {n}\n" for n in range(50))
    s.script(
        tool_calls(tool_call("write_file", path="sample_service/constants.py", content=big)),
        tool_calls(tool_call("finish", summary="Constants.")),
    )
    done, result = s.implement()
    assert done.returncode == 1
    assert "adds and deletes 50 lines; the constitution allows 20" in done.stderr
    assert result["failure"] == "change_too_large" and result["tests"] is None
    s.assert_nothing_committed()


async def test_a_model_that_never_finishes_stops_at_the_step_limit(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    s.fake.default = tool_calls(tool_call("list_files", path="."))
    s.script(*im.caching_script()[:4])  # edits made, then it wanders
    done, result = s.implement("--max-steps", "7")
    assert done.returncode == 1
    assert "did not finish within 7 steps; nothing was committed" in done.stderr
    assert result["stop_reason"] == "max_steps" and result["steps_used"] == 7
    assert result["failure"] == "limit_reached"
    assert len(s.fake.completions(im.MODEL)) == 7
    s.assert_nothing_committed()


async def test_a_model_that_never_finishes_stops_at_the_wall_time(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    s.script(slow(30, tool_calls(tool_call("finish", summary="late"))))
    done, result = s.implement("--max-seconds", "1.5")
    assert done.returncode == 1
    assert "did not finish within 1.5 seconds" in done.stderr
    assert result["stop_reason"] == "max_seconds" and result["seconds"] < 10
    s.assert_nothing_committed()


async def test_the_model_cannot_read_the_jobs_credentials_through_the_tests(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    spy = """import os
import unittest


class Spy(unittest.TestCase):
    def test_print_everything(self) -> None:
        print(sorted(os.environ.items()))
        shell = os.getppid()
        with open(f"/proc/{shell}/stat") as fh:
            sophie = int(fh.read().rsplit(")", 1)[1].split()[1])
        for pid in (shell, sophie):
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    print(fh.read().replace(b"\\0", b" ").decode())
            except OSError as exc:
                print("cannot read", pid, exc)
"""
    s.script(
        tool_calls(tool_call("write_file", path="tests/test_spy.py", content=spy)),
        tool_calls(tool_call("run_tests", command="env; cat /proc/$PPID/environ")),
        # A model that learned a credential anyway cannot commit it.
        tool_calls(tool_call("write_file", path="notes.txt", content=f"t={GITHUB_SECRET}")),
        tool_calls(tool_call("finish", summary="Spied.")),
    )
    done, result = s.implement(MY_SERVICE_PASSWORD="hunter2-hunter2-hunter2")
    answers = s.tool_answers()
    assert answers[1].startswith("note: run_tests takes no arguments; the declared command ran")
    # Its test printed the environment and the parent's /proc/<pid>/environ: it saw only
    # the allow-listed variables, and the parent's credentials redacted (as root) or not
    # at all (an ordinary user: sophie implement is not dumpable).
    assert "GITHUB_TOKEN=[redacted]" in answers[1] or "cannot read" in answers[1]
    assert "('GITHUB_TOKEN'" not in answers[1] and "('OPENAI_API_KEY'" not in answers[1]
    told = [  # every tool answer the model got, over the whole run
        m["content"]
        for r in s.fake.completions(im.MODEL)
        for m in r.body["messages"]
        if m["role"] in ("tool", "user", "system")
    ]
    assert len(told) > 3
    seen = json.dumps(told)
    for secret in (GITHUB_SECRET, OTHER_SECRET, LLM_KEY, "hunter2-hunter2-hunter2"):
        assert secret not in seen
    assert done.returncode == 1 and result["failure"] == "secret_in_change"
    assert "notes.txt contains a credential" in done.stderr and GITHUB_SECRET not in done.stderr
    s.assert_nothing_committed()


async def test_bad_input_is_refused_before_any_model_call(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    done, _ = s.implement("--expect-digest", "sha256:" + "0" * 64)
    assert done.returncode == 2 and "not the expected" in done.stderr
    done, _ = s.implement(SOPHIE_LLM_API_KEY="", OPENAI_API_KEY="")
    assert done.returncode == 2 and "no model configured" in done.stderr
    original = s.constitution
    (tmp_path / "other").mkdir()
    s.constitution = im.constitution_file(tmp_path / "other", test_command="true")
    done, _ = s.implement()
    assert done.returncode == 2 and "not the given" in done.stderr  # another constitution
    # A repo the constitution has implemented by a command: sophie implement declines.
    command = {"kind": "command", "run": "make implement"}
    s.constitution = im.constitution_file(tmp_path / "other", implementer=command)
    s.plan_file.write_text(json.dumps((await im.seed_plan(im.load(s.constitution))).document()))
    done, _ = s.implement()
    assert done.returncode == 2
    assert "implemented by command make implement, not by sophie implement" in done.stderr
    s.constitution = original
    s.plan_file.write_text(json.dumps(s.plan.document()))
    (s.repo / "sample_service/__init__.py").write_text("# edited by hand\n")
    done, result = s.implement()
    assert done.returncode == 2 and "uncommitted changes" in done.stderr
    assert result["status"] == "error" and result["failure"] == "bad_input"
    assert s.fake.completions() == []


async def test_a_plan_without_change_steps_deploys_the_ref_as_it_is(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    plan = await im.seed_plan(im.load(s.constitution), "deploy auth to staging")
    assert [x.action.value for x in plan.steps if x.action.value == "test"] == ["test"]
    s.plan_file.write_text(json.dumps(plan.document()))
    done, result = s.implement(SOPHIE_LLM_API_KEY="", OPENAI_API_KEY="")  # no model needed
    assert done.returncode == 0 and "nothing to implement" in done.stdout
    assert result["status"] == "skipped" and result["commit"] == "" and result["base"] == s.base
    assert s.fake.completions() == []
    s.assert_nothing_committed()


async def test_writes_outside_the_plans_declared_files_are_refused(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    s = await _scene(tmp_path, llm)
    steps = [
        x.model_copy(update={"inputs": {**x.inputs, "files": "sample_service/auth.py"}})
        if x.action.value == "code_change"
        else x
        for x in s.plan.steps
    ]
    s.plan = s.plan.model_copy(update={"steps": steps})
    s.plan_file.write_text(json.dumps(s.plan.document()))
    s.script(*im.caching_script())  # it also adds tests/test_cache.py: refused
    done, result = s.implement()
    assert done.returncode == 0, done.stderr
    assert result["diff"]["paths"][0]["path"] == "sample_service/auth.py"
    assert result["diff"]["files"] == 1 and len(result["refusals"]) == 1
    assert "tests/test_cache.py is outside the plan's declared files" in result["refusals"][0]
