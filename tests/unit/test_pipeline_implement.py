"""The pipeline's implement and pull-request jobs, run as written.

Each `run:` step of the template runs in bash, in order, with GitHub's rules for `if:`
(tests/unit/test_pipeline_template.py evaluates them) and `$GITHUB_OUTPUT` between steps;
the `uses:` steps are stood in for (the checkout is a git repository made from
examples/sample-service, the artifacts are files under `$RUNNER_TEMP`). `sophie implement`
runs for real against a scripted model; `gh` is a stand-in that records what it was asked,
and `origin` a bare repository. Nothing reaches the network.

What is tried: the good paths for each implementer kind end in one commit on
sophie/<plan id> pushed to origin, a draft pull request and one `sophie-change` notice that
SOPHIE's own parser reads; every bad path ends with one `sophie-implement` error saying
why, and nothing pushed. The implement job never sees the GitHub token.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.github_gateway import produced_change
from roles import integrator
from roles.plan import Plan
from tests.fakes import implementing_model as im
from tests.fakes.llm_api import FakeLLM
from tests.fakes.server import ThreadedServer
from tests.harness import LLM_KEY
from tests.unit.test_pipeline_template import TEMPLATE, condition

TOKEN = "ghs_workflowtoken0123456789abcdef"
PR_URL = "https://github.com/acme/auth-service/pull/7"
CHANGE_KEYS = ["branch", "commit", "base", "pull_request", "files", "additions", "deletions"]
GOOD_SHA = "0123456789abcdef0123456789abcdef01234567"


def _jobs() -> dict[str, Any]:
    jobs: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())["jobs"]
    return jobs


@dataclass
class Ran:
    failed: bool
    outputs: dict[str, str]
    steps: list[str]  # the names of the steps that ran
    log: str

    def annotations(self, kind: str, title: str) -> list[str]:
        prefix = f"::{kind} title={title}::"
        return [
            line[len(prefix) :].replace("%25", "%")
            for line in self.log.splitlines()
            if line.startswith(prefix)
        ]


@dataclass
class Runner:
    """One GitHub-hosted runner, as far as the template's shell steps can tell."""

    tmp: Path
    context: dict[str, str]
    sha: str
    bin: Path = field(init=False)
    home: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bin = self.tmp / "bin"
        self.home = self.tmp / "home"
        self.bin.mkdir(exist_ok=True)
        self.home.mkdir(exist_ok=True)
        _tool(self.bin / "gh", GH)
        _tool(self.bin / "python", PYTHON.replace("REAL", sys.executable))

    def run(self, name: str, workspace: Path, temp: Path, repo: str = im.REPO, **extra: str) -> Ran:
        job = _jobs()[name]
        steps: dict[str, dict[str, str]] = {}
        env_context = dict(self.context)

        def lookup(key: str) -> str:
            if key == "runner.temp":
                return str(temp)
            kind, _, rest = key.partition(".")
            if kind == "steps":
                step, _, output = rest.partition(".outputs.")
                return steps.get(step, {}).get(output, "")
            if kind == "env":
                return job_env.get(rest, "")
            return env_context[key]

        def expand(value: object) -> str:
            return re.sub(r"\$\{\{\s*([\w.-]+)\s*\}\}", lambda m: lookup(m.group(1)), str(value))

        job_env = {k: expand(v) for k, v in (job.get("env") or {}).items()}
        base_env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "RUNNER_TEMP": str(temp),
            "GITHUB_SHA": self.sha,
            "GITHUB_REF": "refs/heads/main",
            "GITHUB_REPOSITORY": repo,
            "GITHUB_WORKSPACE": str(workspace),
            "FAKE_GH_LOG": str(self.tmp / "gh.log"),
            "FAKE_PIP_LOG": str(self.tmp / "pip.log"),
            **extra,
        }
        failed, ran, log = False, [], []
        for n, step in enumerate(job["steps"]):
            if not condition(step.get("if"), lookup, failed):
                continue
            title = step.get("name") or step["uses"]
            ran.append(title)
            if "uses" in step:  # checkout, artifacts, setup-python: stood in for
                continue
            output = temp / f"output-{name}-{n}"
            output.write_text("")
            step_env = {k: expand(v) for k, v in (step.get("env") or {}).items()}
            env = {
                **base_env,
                **job_env,
                **step_env,
                "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(temp / "summary.md"),
            }
            done = subprocess.run(
                ["bash", "-e", "-c", step["run"]],
                cwd=workspace,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            log.append(done.stdout + done.stderr)
            failed = failed or done.returncode != 0
            if "id" in step:
                steps[step["id"]] = dict(
                    line.split("=", 1) for line in output.read_text().splitlines() if "=" in line
                )
        outputs = {k: expand(v) for k, v in (job.get("outputs") or {}).items()}
        return Ran(failed, outputs, ran, "\n".join(log))


def _tool(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


# `gh`: answers `pr list` with $FAKE_GH_OPEN (an open pull request's URL) and `pr create`
# with a new one; records each call and whether it had the token.
GH = f"""#!/bin/sh
printf '%s token=%s\\n' "$*" "${{GH_TOKEN:+yes}}" >> "$FAKE_GH_LOG"
case "$1 $2" in
  "pr list") printf '%s\\n' "${{FAKE_GH_OPEN:-}}" ;;
  "pr create") echo "Creating draft pull request"; echo "{PR_URL}" ;;
  *) exit 1 ;;
esac
"""
# `python` (setup-python's): `-m venv` makes a venv whose pip records what it would
# install and whose python is this test's interpreter (SOPHIE installed).
PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  cat > "$3/bin/python" <<'EOF'
#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$*" >> "$FAKE_PIP_LOG"; exit 0; fi
exec REAL "$@"
EOF
  chmod +x "$3/bin/python"
  exit 0
fi
exec REAL "$@"
"""


@dataclass
class Scene:
    tmp: Path
    checkout: Path
    origin: Path
    base: str
    plan: Plan
    runner: Runner
    temp: Path

    @property
    def branch(self) -> str:
        return f"sophie/{self.plan.id}"

    def implement(self, repo: str = im.REPO) -> Ran:
        return self.runner.run("implement", self.checkout, self.temp, repo)

    def pull_request(self, implemented: Ran, **env: str) -> Ran:
        """The pull-request job: a fresh runner, a fresh shallow checkout of the base."""
        fresh = self.tmp / f"fresh-{len(list(self.tmp.glob('fresh-*')))}"
        temp = fresh / "runner"
        subprocess.run(
            ["git", "clone", "-q", "--depth", "1", f"file://{self.origin}", str(fresh / "work")],
            check=True,
        )
        (temp / "sophie").mkdir(parents=True)
        for name in ("plan.json", "envelopes.json", "constitution.json", "change.json"):
            if (self.temp / "sophie" / name).exists():  # the sophie-plan artifact
                (temp / "sophie" / name).write_bytes((self.temp / "sophie" / name).read_bytes())
        for name in ("result.json", "change.bundle"):  # the sophie-implementation artifact
            if (self.temp / "sophie" / name).exists():
                (temp / "sophie" / name).write_bytes((self.temp / "sophie" / name).read_bytes())
        self.runner.context["needs.implement.outputs.commit"] = implemented.outputs["commit"]
        return self.runner.run("pull-request", fresh / "work", temp, **env)

    def remote_branch(self) -> str:
        return subprocess.run(
            ["git", "-C", str(self.origin), "rev-parse", "--verify", "-q", self.branch],
            capture_output=True,
            text=True,
        ).stdout.strip()

    def gh_calls(self) -> list[str]:
        log = self.tmp / "gh.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture()
def llm() -> Iterator[tuple[FakeLLM, ThreadedServer]]:
    fake = FakeLLM(keys=(LLM_KEY,), models=(im.MODEL,))
    server = ThreadedServer(fake.app).start()
    yield fake, server
    server.stop()


async def _scene(tmp: Path, url: str = "http://127.0.0.1:9", **rule: Any) -> Scene:
    checkout = im.sample_repo(tmp / "checkout")
    origin = tmp / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    im.git(checkout, "remote", "add", "origin", str(origin))
    im.git(checkout, "push", "-q", "origin", "main")
    constitution = im.load(im.constitution_file(tmp, **rule))
    seeded = await im.seed_plan(constitution)
    doc = seeded.document()
    plan = Plan.from_document({**doc, "target": {**doc["target"], "implement": True}})
    temp = tmp / "runner"
    (temp / "sophie").mkdir(parents=True)
    # The sophie-plan artifact, as the verify job left it.
    (temp / "sophie/plan.json").write_text(json.dumps(plan.document()))
    (temp / "sophie/envelopes.json").write_text("[]")
    bundle = integrator.constitution_bundle(constitution)
    (temp / "sophie/constitution.json").write_text(json.dumps(bundle))
    base = im.git(checkout, "rev-parse", "HEAD")
    context = {
        "inputs.plan_id": plan.id,
        "inputs.plan_digest": plan.digest,
        "secrets.SOPHIE_LLM_API_KEY": LLM_KEY,
        "vars.SOPHIE_LLM_BASE_URL": f"{url}/api/v1",
        "vars.SOPHIE_LLM_MODEL": im.MODEL,
        "vars.SOPHIE_INSTALL": "sophie==0.1.0",
        "github.token": TOKEN,
        "github.repository": im.REPO,
        "github.sha": base,
    }
    return Scene(tmp, checkout, origin, base, plan, Runner(tmp, context, base), temp)


def _change_notice(ran: Ran) -> dict[str, Any]:
    notices = ran.annotations("notice", "sophie-change")
    assert len(notices) == 1, ran.log
    report: dict[str, Any] = json.loads(notices[0])
    assert list(report) == [*CHANGE_KEYS, "tests"]
    assert list(report["tests"]) == ["command", "passed", "summary"]
    return report


def _one_failure(ran: Ran) -> str:
    assert ran.failed, ran.log
    errors = ran.annotations("error", "sophie-implement")
    assert len(errors) == 1, ran.log
    return errors[0]


async def test_sophie_implements_and_the_pull_request_job_publishes_it(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    fake, server = llm
    s = await _scene(tmp_path, server.url)
    fake.script(im.MODEL, *im.caching_script())

    implemented = s.implement()
    assert not implemented.failed, implemented.log
    assert "Install SOPHIE, pinned" in implemented.steps
    assert "Commit what the implementer changed" not in implemented.steps
    assert (tmp_path / "pip.log").read_text().split()[-1] == "sophie==0.1.0"
    commit = implemented.outputs["commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert im.git(s.checkout, "rev-parse", f"{commit}^") == s.base
    assert (s.temp / "sophie/change.bundle").exists()
    assert s.remote_branch() == ""  # the implement job never pushes

    published = s.pull_request(implemented)
    assert not published.failed, published.log
    assert s.remote_branch() == commit
    calls = s.gh_calls()
    create = [c for c in calls if c.startswith("pr create")]
    assert len(create) == 1 and create[0].endswith("token=yes")
    assert f"--draft --base main --head {s.branch} --title SOPHIE: " in create[0]

    report = _change_notice(published)
    assert report["branch"] == s.branch and report["commit"] == commit
    assert report["base"] == s.base and report["pull_request"] == PR_URL
    files = im.git(s.checkout, "diff", "--name-only", s.base, commit).split()
    assert report["files"] == len(files) == 2 and report["additions"] > 0
    assert report["tests"]["command"] == im.TEST_COMMAND and report["tests"]["passed"] is True
    assert report["tests"]["summary"] == "OK"  # unittest's closing line
    # SOPHIE's own reader of the notice takes it.
    change = produced_change([json.dumps(report)])
    assert change is not None and change.commit == commit and change.pull_request == PR_URL

    # Run again (a retried job): the branch is already there at this commit, and the open
    # pull request for it is reused.
    again = s.pull_request(implemented, FAKE_GH_OPEN=PR_URL)
    assert not again.failed, again.log
    assert len([c for c in s.gh_calls() if c.startswith("pr create")]) == 1
    assert _change_notice(again)["pull_request"] == PR_URL


async def test_a_command_implementer_runs_without_the_token_and_its_change_is_committed(
    tmp_path: Path,
) -> None:
    command = (
        "printf 'CACHE_SECONDS = 30\\n' >> sample_service/auth.py && "
        'env > "$RUNNER_TEMP/command.env"'
    )
    s = await _scene(tmp_path, implementer={"kind": "command", "run": command})
    implemented = s.implement()
    assert not implemented.failed, implemented.log
    assert "Install SOPHIE, pinned" not in implemented.steps
    seen = (s.temp / "command.env").read_text()
    assert TOKEN not in seen and LLM_KEY not in seen
    assert f"SOPHIE_PLAN_FILE={s.temp}/sophie/plan.json" in seen
    commit = implemented.outputs["commit"]
    subject = im.git(s.checkout, "log", "-1", "--format=%s", commit)
    assert subject == f"SOPHIE plan {s.plan.id} (sha256:{s.plan.digest})"
    assert im.git(s.checkout, "rev-parse", f"{commit}^") == s.base
    assert im.git(s.checkout, "diff", "--name-only", s.base, commit) == "sample_service/auth.py"
    result = json.loads((s.temp / "sophie/result.json").read_text())
    assert result["status"] == "committed" and result["branch"] == s.branch
    assert result["tests"]["passed"] is True and result["pull_request"]["title"].startswith(
        "SOPHIE: "
    )

    published = s.pull_request(implemented)
    assert not published.failed, published.log
    report = _change_notice(published)
    assert (report["files"], report["additions"], report["deletions"]) == (1, 1, 0)
    assert s.remote_branch() == commit


async def test_commits_a_command_made_itself_become_one_commit_on_the_base(
    tmp_path: Path,
) -> None:
    command = (
        "echo one >> README.md && git -c user.name=x -c user.email=x@example.com "
        "commit -qam wip && git switch -qc elsewhere && echo two >> README.md"
    )
    s = await _scene(tmp_path, implementer={"kind": "command", "run": command})
    implemented = s.implement()
    assert not implemented.failed, implemented.log
    commit = implemented.outputs["commit"]
    assert im.git(s.checkout, "rev-list", f"{s.base}..{commit}") == commit
    assert im.git(s.checkout, "rev-parse", f"{commit}^") == s.base
    assert im.git(s.checkout, "show", f"{commit}:README.md").endswith("one\ntwo")
    assert im.git(s.checkout, "symbolic-ref", "--short", "HEAD") == s.branch


async def test_a_branch_already_there_at_another_commit_is_not_overwritten(
    tmp_path: Path,
) -> None:
    command = "echo 'CACHE_SECONDS = 30' >> sample_service/auth.py"
    s = await _scene(tmp_path, implementer={"kind": "command", "run": command})
    # Someone pushed sophie/<plan id> before (an earlier run, or by hand).
    im.git(s.checkout, "push", "-q", "origin", f"main:refs/heads/{s.branch}")
    implemented = s.implement()
    assert not implemented.failed, implemented.log
    published = s.pull_request(implemented)
    reason = _one_failure(published)
    assert f"{s.branch} already exists at {s.base[:12]}" in reason
    assert s.remote_branch() == s.base
    assert not published.annotations("notice", "sophie-change")
    assert not [c for c in s.gh_calls() if c.startswith("pr create")]


async def test_a_bundle_that_is_not_the_reported_commit_is_not_pushed(tmp_path: Path) -> None:
    command = "echo 'CACHE_SECONDS = 30' >> sample_service/auth.py"
    s = await _scene(tmp_path, implementer={"kind": "command", "run": command})
    implemented = s.implement()
    assert not implemented.failed, implemented.log
    # Two commits where one was reported: the implement job's output is not the bundle's.
    im.git(s.checkout, "commit", "-q", "--allow-empty", "-m", "more")
    im.git(
        s.checkout,
        "bundle",
        "create",
        str(s.temp / "sophie/change.bundle"),
        f"refs/heads/{s.branch}",
        f"^{s.base}",
    )
    reason = _one_failure(s.pull_request(implemented))
    assert "not the one the implement job reported" in reason
    assert s.remote_branch() == ""


@pytest.mark.parametrize(
    ("rule", "install", "says"),
    [
        (
            {"implementer": {"kind": "command", "run": "exit 3"}},
            "",
            "the implementer command (exit 3) exited with status 3",
        ),
        (
            {"implementer": {"kind": "command", "run": "true"}},
            "",
            "nothing changed: the command implementer left no change",
        ),
        (
            {
                "implementer": {
                    "kind": "command",
                    "run": "mkdir -p .github/workflows && touch .github/workflows/x.yml",
                }
            },
            "",
            "not committed: the implementer changed .github/workflows/x.yml",
        ),
        (
            {
                "implementer": {"kind": "command", "run": "echo x >> README.md"},
                "test_command": "exit 4",
            },
            "",
            "not committed: the tests failed (exit 4: exit code 4)",
        ),
        ({"implementer": {"kind": "none"}}, "", "are not implemented here (implementer: none)"),
        (
            {"implementer": {"kind": "action", "run": "acme/implement@v1"}},
            "",
            "with the Action acme/implement@v1, but this workflow's placeholder step was not "
            "replaced",
        ),
        ({}, "sophie", "Set the repository variable SOPHIE_INSTALL"),
        ({}, "sophie>=0.1", "Set the repository variable SOPHIE_INSTALL"),
        ({}, "sophie==0.*", "Set the repository variable SOPHIE_INSTALL"),
        ({}, "", "Set the repository variable SOPHIE_INSTALL to SOPHIE pinned exactly"),
        ({}, "sophie>=0.1", "(it is not pinned)"),
        ({}, "", "(it is unset)"),
        ({}, "git+https://github.com/acme/sophie@main", "SOPHIE_INSTALL"),
        ({}, f"git+https://u:p@github.com/acme/sophie@{GOOD_SHA}x", "SOPHIE_INSTALL"),
        ({}, "sophie==0.1.0 --index-url https://evil.example", "SOPHIE_INSTALL"),
    ],
)
async def test_the_implement_job_fails_with_one_clear_reason(
    tmp_path: Path, rule: dict[str, Any], install: str, says: str
) -> None:
    s = await _scene(tmp_path, **rule)
    if rule == {}:
        s.runner.context["vars.SOPHIE_INSTALL"] = install
    implemented = s.implement()
    assert says in _one_failure(implemented)
    assert "Check the result and bundle the commit" not in implemented.steps
    assert not (s.temp / "sophie/change.bundle").exists()
    assert not (tmp_path / "pip.log").exists()  # nothing unpinned is ever installed


@pytest.mark.parametrize(
    "install",
    [
        "sophie==0.1.0",
        "sophie==1.2.3rc1",
        f"git+https://github.com/acme/sophie@{GOOD_SHA}",
        f"sophie @ git+https://github.com/acme/sophie.git@{GOOD_SHA}",
    ],
)
async def test_sophie_is_installed_only_pinned(tmp_path: Path, install: str) -> None:
    s = await _scene(tmp_path)
    s.runner.context["vars.SOPHIE_INSTALL"] = install
    s.runner.context["secrets.SOPHIE_LLM_API_KEY"] = ""
    implemented = s.implement()
    assert (tmp_path / "pip.log").read_text().strip().endswith(install)
    # No model key: `sophie implement` says so, and that is the job's one reason.
    assert "no model configured: set SOPHIE_LLM_API_KEY" in _one_failure(implemented)


async def test_what_sophie_implement_refuses_is_the_reason_sophie_reads(
    tmp_path: Path, llm: tuple[FakeLLM, ThreadedServer]
) -> None:
    fake, server = llm
    s = await _scene(tmp_path, server.url)
    fake.script(im.MODEL, *im.naive_caching_script())
    implemented = s.implement()
    reason = _one_failure(implemented)
    assert reason.startswith("not committed: the tests failed (")
    assert json.loads((s.temp / "sophie/result.json").read_text())["message"] == reason


async def test_a_repository_outside_the_constitution_is_not_implemented(tmp_path: Path) -> None:
    s = await _scene(tmp_path)
    reason = _one_failure(s.implement(repo="acme/unknown"))
    assert reason == (
        "acme/unknown is not in the constitution, so nothing says who implements its changes"
    )


def test_the_package_built_is_the_package_attested_and_reported(tmp_path: Path) -> None:
    """The build job's .deb step and the attest job's steps, run as written: the digest
    the build reports is the file's, checked again before it is attested and reported."""
    workspace = tmp_path / "build"
    workspace.mkdir()
    (workspace / "app.py").write_text("print('hi')\n")
    context = {
        "inputs.artifacts": "deb",
        "github.event.repository.name": "svc",
        "github.sha": "c" * 40,
        "github.repository": "acme/svc",
    }
    runner = Runner(tmp_path, context, "c" * 40)
    (tmp_path / "temp").mkdir()
    built = runner.run("build", workspace, tmp_path / "temp")
    assert not built.failed, built.log
    deb = workspace / "svc.deb"
    digest = "sha256:" + hashlib.sha256(deb.read_bytes()).hexdigest()
    assert built.outputs == {
        "deb": "svc.deb",
        "deb_digest": digest,
        "image": "",
        "image_digest": "",
    }

    for tampered in (False, True):
        attest = tmp_path / f"attest-{tampered}"
        (attest / "dist").mkdir(parents=True)  # what actions/download-artifact fetched
        (attest / "dist/svc.deb").write_bytes(deb.read_bytes() + (b"x" if tampered else b""))
        runner.context.update({f"needs.build.outputs.{k}": v for k, v in built.outputs.items()})
        ran = runner.run("attest", attest, tmp_path / "temp")
        if tampered:
            assert ran.failed and "Report the artifacts" not in ran.steps
            continue
        assert not ran.failed, ran.log
        assert "Attest the package" in ran.steps and "Attest the image" not in ran.steps
        assert [line for line in ran.log.splitlines() if "sophie-artifact" in line] == [
            f"::notice title=sophie-artifact::svc.deb {digest}"
        ]
        assert json.loads(ran.outputs["artifacts"]) == [{"name": "svc.deb", "digest": digest}]
