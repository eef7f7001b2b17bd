"""`sophie implement`: the default implementer, run by the pipeline's implement job inside
the target repository's checkout.

A bounded agent loop through the ``openai`` client: the model gets the plan's change steps
(as untrusted data) and tools to list, read, search, edit and write files, to run the
repository's declared test command and to finish. Every path goes through
:func:`roles.implementing.check_path` and is resolved against symlinks; the tests run
with a scrubbed environment; the loop stops at its step, token and time limits. When the
model finishes, the change (exactly the files it wrote) is checked against the
constitution's forbidden paths and change limits, the tests run once more, and only then
is it committed on ``sophie/<plan-id>`` from the plan's base commit. Nothing is pushed:
that is the pipeline's job.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from bot.llm import ATTRIBUTION, _describe
from bot.settings import Settings
from roles.constitution import (
    Constitution,
    ConstitutionError,
    RepoRule,
    from_bundle,
    load_constitution,
    parse_constitution,
)
from roles.implementing import (
    NUDGE,
    TOOLS,
    Failure,
    Limits,
    Result,
    Status,
    StopReason,
    SuiteRun,
    branch_name,
    build_messages,
    change_problem,
    check_path,
    clean_summary,
    commit_message,
    describe_stop,
    needs_implementing,
    parse_call,
    parse_numstat,
    pull_request_text,
    redact,
    scope_refusal,
    scrubbed_environment,
    secret_values,
    stop_reason,
    tail,
)
from roles.plan import Plan

log = logging.getLogger("sophie.implement")

_OUTPUT_KEEP = 256 * 1024  # bytes of test output kept (its tail) while it runs
_MAX_FILE_BYTES = 2 * 1024 * 1024  # larger files are neither read nor searched


class Refused(Exception):
    """A tool call the rules refuse; counted, and the message is the model's answer."""


class ToolError(Exception):
    """A tool call that failed (no such file, text not found…); the message is the answer."""


def _not_dumpable() -> None:
    """Keep other processes of this user (the model's test code) out of this process's
    memory and /proc/<pid>/environ, where the model API key is (Linux; best effort)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


# -- the checkout as the model may see it ----------------------------------------------


class Workspace:
    """The repository checkout seen through the constitution's rules."""

    def __init__(
        self,
        root: Path,
        plan: Plan,
        rule: RepoRule,
        limits: Limits,
        env: dict[str, str],
        secrets: tuple[str, ...],
    ) -> None:
        self.root = root.resolve()
        self.plan = plan
        self.rule = rule
        self.limits = limits
        self.env = env
        self.secrets = secrets
        self.written: dict[str, None] = {}  # in the order first written
        self.refusals: list[str] = []

    def _refuse(self, message: str) -> Refused:
        self.refusals.append(message)
        return Refused(message)

    def resolve(self, raw: object, *, write: bool = False) -> tuple[str, Path]:
        """The checked relative path and where it is; Refused when the rules say no."""
        checked = check_path(raw if raw not in (None, "") else ".", self.rule.forbidden_paths)
        if checked.refusal:
            raise self._refuse(checked.refusal)
        lexical = self.root / checked.path if checked.path else self.root
        real = lexical.resolve()
        if real != self.root and self.root not in real.parents:
            raise self._refuse(f"{checked.path} is a symbolic link leading out of the repository")
        relative = real.relative_to(self.root).as_posix() if real != self.root else ""
        if relative != checked.path:
            again = check_path(relative, self.rule.forbidden_paths) if relative else None
            if again is not None and again.refusal:
                raise self._refuse(f"{checked.path} leads to {relative}: {again.refusal}")
            if write:
                raise self._refuse(
                    f"{checked.path} goes through a symbolic link; write {relative} itself"
                )
        out_of_scope = scope_refusal(checked.path, self.plan) if write else None
        if out_of_scope:
            raise self._refuse(out_of_scope)
        return checked.path, real

    def _visible(self, relative: str) -> bool:
        return check_path(relative, self.rule.forbidden_paths).refusal is None

    def _walk(self, start: Path) -> Iterator[tuple[str, Path]]:
        for folder, dirs, files in os.walk(start, followlinks=False):
            base = Path(folder)
            rel_base = base.relative_to(self.root).as_posix()
            prefix = "" if rel_base == "." else rel_base + "/"
            dirs[:] = sorted(d for d in dirs if self._visible(prefix + d))
            for name in sorted(files):
                if self._visible(prefix + name):
                    yield prefix + name, base / name

    def list_files(self, path: object = None) -> str:
        relative, where = self.resolve(path)
        if where.is_file():
            return relative
        if not where.is_dir():
            raise ToolError(f"no folder {relative or '.'}")
        entries: list[str] = []
        for name, _ in self._walk(where):
            if len(entries) >= self.limits.max_list_entries:
                entries.append(f"[… more files; list a sub-folder of {relative or '.'}]")
                break
            entries.append(name)
        return "\n".join(entries) or "(no files)"

    def _text(self, relative: str, where: Path) -> str:
        if not where.is_file():
            raise ToolError(f"no file {relative}")
        if where.stat().st_size > _MAX_FILE_BYTES:
            raise ToolError(f"{relative} is larger than {_MAX_FILE_BYTES} bytes")
        data = where.read_bytes()
        if b"\x00" in data[:8192]:
            raise ToolError(f"{relative} is a binary file")
        return data.decode("utf-8", errors="replace")

    def read_file(self, path: object, start: int | None = None, end: int | None = None) -> str:
        relative, where = self.resolve(path)
        lines = self._text(relative, where).splitlines(keepends=True)
        first = max(1, start or 1)
        last = min(len(lines), end or len(lines))
        body = "".join(lines[first - 1 : last])
        header = f"{relative}: lines {first}-{last} of {len(lines)}\n"
        if len(body) > self.limits.max_read_chars:
            body = body[: self.limits.max_read_chars]
            header += f"[cut at {self.limits.max_read_chars} characters: read with start/end]\n"
        return header + body

    def search(self, pattern: object, path: object = None) -> str:
        if not isinstance(pattern, str) or not pattern:
            raise ToolError("give a non-empty text to search for")
        relative, where = self.resolve(path)
        files = [(relative, where)] if where.is_file() else list(self._walk(where))
        hits: list[str] = []
        for name, file in files:
            try:
                text = self._text(name, file)
            except (ToolError, OSError):
                continue
            for number, line in enumerate(text.splitlines(), start=1):
                if pattern in line:
                    hits.append(f"{name}:{number}: {line.strip()[:200]}")
                    if len(hits) >= self.limits.max_search_hits:
                        return "\n".join([*hits, "[… more matches; narrow the search]"])
        return "\n".join(hits) or "(no matches)"

    def _write(self, relative: str, where: Path, content: str) -> None:
        if len(content) > self.limits.max_write_chars:
            raise ToolError(f"content longer than {self.limits.max_write_chars} characters")
        if where.is_dir():
            raise ToolError(f"{relative} is a folder")
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(content, encoding="utf-8")
        self.written.setdefault(relative, None)

    def edit_file(self, path: object, old: str, new: str) -> str:
        relative, where = self.resolve(path, write=True)
        if not old:
            raise ToolError("old must not be empty (use write_file to create a file)")
        text = self._text(relative, where)
        count = text.count(old)
        if count != 1:
            raise ToolError(
                f"old text found {count} times in {relative}; "
                + ("read the file and copy it exactly" if count == 0 else "include more context")
            )
        self._write(relative, where, text.replace(old, new, 1))
        return f"edited {relative}"

    def write_file(self, path: object, content: str) -> str:
        relative, where = self.resolve(path, write=True)
        existed = where.exists()
        self._write(relative, where, content)
        return f"{'replaced' if existed else 'created'} {relative} ({len(content)} characters)"

    async def run_tests(self, seconds: float) -> SuiteRun | None:
        """The declared test command, in the repository root, with the scrubbed environment
        and a timeout that kills its whole process group."""
        command = self.rule.test_command
        if not command:
            return None
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            cwd=self.root,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        kept = bytearray()

        async def pump() -> int:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                kept.extend(chunk)
                del kept[:-_OUTPUT_KEEP]
            return await proc.wait()

        code: int | None
        try:
            code = await asyncio.wait_for(pump(), max(0.1, seconds))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            code = None
        output = redact(kept.decode("utf-8", errors="replace"), self.secrets)
        if code is None:
            output += f"\n[stopped after {seconds:g} s]"
        return SuiteRun(
            command=command,
            passed=code == 0,
            exit_code=code,
            seconds=time.monotonic() - started,
            output_tail=tail(output, self.limits.max_output_chars),
        )


# -- git --------------------------------------------------------------------------------


class GitError(Exception):
    pass


@dataclass
class Git:
    root: Path
    env: dict[str, str]

    def run(self, *args: str, index: Path | None = None, stdin: str | None = None) -> str:
        env = dict(self.env)
        if index is not None:
            env["GIT_INDEX_FILE"] = str(index)
        # No hooks, no fsmonitor: nothing the model's code could have configured runs here.
        cmd = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", *args]
        done = subprocess.run(
            cmd, cwd=self.root, env=env, input=stdin, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise GitError(f"git {args[0]} failed: {done.stderr.strip()[:500]}")
        return done.stdout


# -- the loop ---------------------------------------------------------------------------


@dataclass
class Job:
    plan: Plan
    rule: RepoRule
    root: Path
    model: str
    limits: Limits = field(default_factory=Limits)
    pass_env: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()  # known secret values (the settings'), never shown
    author: tuple[str, str] = ("SOPHIE", "sophie@users.noreply.github.com")
    patch: Path | None = None


@dataclass
class _Run:
    job: Job
    started: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("setup", "model", "tools", "tests", "commit"), 0.0)
    )
    steps: int = 0
    tokens: int = 0
    tool_calls: int = 0
    summary: str = ""
    model_error: str = ""
    base: str = ""

    _open: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time spent in ``name``; a phase inside another is not counted twice."""
        began = time.monotonic()
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            spent = time.monotonic() - began
            self.phases[name] += spent
            if self._open:
                self.phases[self._open[-1]] -= spent

    def elapsed(self) -> float:
        return time.monotonic() - self.started


async def implement(job: Job, client: AsyncOpenAI) -> Result:
    """Run the loop and commit the change; the Result says what happened (never raises
    for anything the model, the tests or the repository do)."""
    run = _Run(job)
    plan, rule = job.plan, job.rule
    env = scrubbed_environment(os.environ, job.pass_env)
    secrets = secret_values(os.environ, job.secrets)
    git_env = {
        **env,
        "GIT_AUTHOR_NAME": job.author[0],
        "GIT_AUTHOR_EMAIL": job.author[1],
        "GIT_COMMITTER_NAME": job.author[0],
        "GIT_COMMITTER_EMAIL": job.author[1],
        "GIT_TERMINAL_PROMPT": "0",
    }

    def result(status: Status, failure: Failure, message: str, **kw: Any) -> Result:
        return Result(
            status=status,
            failure=failure,
            message=message,
            plan_id=plan.id,
            plan_digest=plan.digest,
            repo=plan.target.repo,
            base=run.base,
            steps_used=run.steps,
            tokens_used=run.tokens,
            tool_calls=run.tool_calls,
            model=job.model,
            summary=run.summary,
            seconds=run.elapsed(),
            phases=dict(run.phases),
            **kw,
        )

    with run.phase("setup"):
        try:
            top = Git(job.root, git_env).run("rev-parse", "--show-toplevel").strip()
            git = Git(Path(top), git_env)
            run.base = git.run("rev-parse", "--verify", "HEAD^{commit}").strip()
            dirty = git.run("status", "--porcelain", "--untracked-files=no")
        except (GitError, OSError) as exc:
            return result("error", "git_error", f"{job.root} is not a git checkout: {exc}")
        if plan.target.sha and plan.target.sha != run.base:
            return result(
                "error",
                "bad_input",
                f"the checkout is at {run.base[:12]} but the plan's base commit is "
                f"{plan.target.sha[:12]}",
            )
        if dirty.strip():
            return result(
                "error",
                "bad_input",
                "the checkout has uncommitted changes; implement starts from a clean commit",
            )
        workspace = Workspace(git.root, plan, rule, job.limits, env, secrets)
    if not needs_implementing(plan):
        return result(
            "skipped",
            "",
            f"the plan has no change steps: nothing to implement; {plan.target.ref}@"
            f"{run.base[:12]} deploys as it is",
        )

    reason = await _loop(run, client, workspace, secrets)
    refused = tuple(workspace.refusals)
    refusal_note = f" ({len(refused)} call(s) refused: {refused[-1]})" if refused else ""
    if reason != "finished":
        failure: Failure = "model_error" if reason.startswith("model") else "limit_reached"
        message = describe_stop(reason, job.limits, run.model_error)
        return result(
            "failed",
            failure,
            f"stopped: {message}; nothing was committed{refusal_note}",
            stop_reason=reason,
            refusals=refused,
        )
    paths = [p for p in workspace.written if (workspace.root / p).is_file()]
    linked = [p for p in paths if (workspace.root / p).is_symlink()]

    def failed(failure: Failure, message: str, **kw: Any) -> Result:
        return result("failed", failure, message, stop_reason=reason, refusals=refused, **kw)

    if not paths:
        return failed("nothing_changed", f"nothing changed: the model wrote no file{refusal_note}")
    if linked:  # the model's own code (its tests) swapped a file for a link
        return failed("forbidden_change", f"not committed: {linked[0]} became a symbolic link")

    with run.phase("commit"), tempfile.TemporaryDirectory(prefix="sophie-index-") as tmp:
        index = Path(tmp) / "index"
        try:
            git.run("read-tree", run.base, index=index)
            git.run("add", "--force", "--", *paths, index=index)
            diff = parse_numstat(
                git.run("diff", "--cached", "--numstat", "--no-renames", run.base, index=index)
            )
            if job.patch is not None:
                patch = git.run("diff", "--cached", "--binary", run.base, index=index)
                job.patch.write_text(redact(patch, secrets))
        except (GitError, OSError) as exc:
            return failed("git_error", f"could not stage the change: {exc}")
        if not diff.files:
            return failed(
                "nothing_changed",
                f"nothing changed: what the model wrote is what was there{refusal_note}",
            )
        problem = change_problem(diff, rule.change_limits, rule.forbidden_paths)
        if problem is not None:
            return failed(problem[0], f"not committed: {problem[1]}", diff=diff)
        leaked = [p for p in paths if _contains_secret(workspace.root / p, secrets)]
        if leaked:
            return failed(
                "secret_in_change",
                f"not committed: {leaked[0]} contains a credential from the job's environment",
                diff=diff,
            )
        tests = None
        if rule.test_command:
            with run.phase("tests"):
                tests = await workspace.run_tests(job.limits.test_timeout)
            if tests is not None and not tests.passed:
                how = "timed out" if tests.exit_code is None else f"exit code {tests.exit_code}"
                return failed(
                    "tests_failed",
                    f"not committed: the tests failed ({tests.command}: {how})",
                    diff=diff,
                    tests=tests,
                )
        branch = branch_name(plan.id)
        try:
            tree = git.run("write-tree", index=index).strip()
            message = commit_message(plan, run.summary, job.model, run.steps, run.tokens)
            commit = git.run("commit-tree", tree, "-p", run.base, "-F", "-", stdin=message)
            commit = commit.strip()
            git.run("update-ref", f"refs/heads/{branch}", commit)
            git.run("symbolic-ref", "HEAD", f"refs/heads/{branch}")
            git.run("reset", "--quiet")  # the real index now matches the commit
        except (GitError, OSError) as exc:
            return failed("git_error", f"could not commit: {exc}", diff=diff, tests=tests)
    tested = "no test command declared" if tests is None else "tests passed"
    return result(
        "committed",
        "",
        f"committed {commit[:12]} on {branch}: {len(diff.files)} file(s), "
        f"+{diff.additions} −{diff.deletions}; {tested}",
        branch=branch,
        commit=commit,
        diff=diff,
        tests=tests,
        stop_reason=reason,
        refusals=refused,
    )


def _contains_secret(path: Path, secrets: tuple[str, ...]) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return any(s.encode() in data for s in secrets)


async def _loop(
    run: _Run, client: AsyncOpenAI, workspace: Workspace, secrets: tuple[str, ...]
) -> StopReason:
    job, limits = run.job, run.job.limits
    messages: list[dict[str, Any]] = list(build_messages(job.plan, job.rule, run.base, limits))
    while True:
        reason = stop_reason(limits, run.steps, run.tokens, run.elapsed())
        if reason is not None:
            return reason
        left = limits.max_seconds - run.elapsed()
        try:
            with run.phase("model"):
                completion = await asyncio.wait_for(
                    client.chat.completions.create(
                        model=job.model,
                        messages=cast("list[ChatCompletionMessageParam]", messages),
                        tools=cast(Any, TOOLS),
                        tool_choice="auto",
                        temperature=0.1,
                        max_tokens=max(1, min(8192, limits.max_tokens - run.tokens)),
                        extra_body={"provider": {"require_parameters": True}},
                        timeout=min(limits.model_timeout, left),
                    ),
                    timeout=left,
                )
        except TimeoutError:
            return "max_seconds"
        except openai.OpenAIError as exc:
            if isinstance(exc, openai.APITimeoutError) and run.elapsed() >= limits.max_seconds:
                return "max_seconds"
            run.model_error = _describe(exc)
            return "model_error"
        run.steps += 1
        usage = completion.usage
        run.tokens += usage.total_tokens if usage is not None else len(json.dumps(messages)) // 4
        extra: dict[str, Any] = completion.model_extra or {}
        if extra.get("error") or not completion.choices:
            err = extra.get("error")
            detail = err.get("message", "error") if isinstance(err, dict) else str(err or "")
            run.model_error = f"the provider reported an error: {str(detail)[:200]}"
            return "model_error"
        choice = completion.choices[0]
        if choice.message.refusal:
            return "model_refused"
        said = choice.message.model_dump()
        calls = [c for c in (said.get("tool_calls") or []) if isinstance(c, dict)]
        if not calls:
            messages.append({"role": "assistant", "content": said.get("content") or ""})
            messages.append({"role": "user", "content": NUDGE})
            continue
        messages.append(
            {
                "role": "assistant",
                "content": said.get("content"),
                "tool_calls": [
                    {
                        "id": str(c.get("id")),
                        "type": "function",
                        "function": {
                            "name": str((c.get("function") or {}).get("name")),
                            "arguments": str((c.get("function") or {}).get("arguments") or ""),
                        },
                    }
                    for c in calls
                ],
            }
        )
        finished = False
        for n, call in enumerate(calls):
            fn = call.get("function") or {}
            if finished:
                answer = "not run: finish was called"
            elif n >= limits.max_calls_per_step:
                answer = f"not run: at most {limits.max_calls_per_step} tool calls per turn"
            else:
                run.tool_calls += 1
                answer, finished = await _dispatch(
                    run, workspace, fn.get("name"), fn.get("arguments")
                )
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(call.get("id")),
                    "content": redact(answer, secrets),
                }
            )
        if finished:
            return "finished"


async def _dispatch(
    run: _Run, workspace: Workspace, name: object, arguments: object
) -> tuple[str, bool]:
    """Run one tool call; the text answered to the model and whether it was finish."""
    call = parse_call(name, arguments)
    if call.problem:
        return call.problem, False
    args = call.arguments
    if call.name == "finish":
        run.summary = clean_summary(args.get("summary"))
        return "finished", True
    if call.name == "run_tests":
        left = run.job.limits.max_seconds - run.elapsed()
        with run.phase("tests"):
            tests = await workspace.run_tests(min(run.job.limits.test_timeout, left))
        note = "note: run_tests takes no arguments; the declared command ran\n" if args else ""
        if tests is None:
            return note + "no test command is declared for this repository; nothing ran", False
        verdict = (
            "passed"
            if tests.passed
            else (
                "timed out" if tests.exit_code is None else f"failed (exit code {tests.exit_code})"
            )
        )
        return (
            f"{note}{tests.command}: {verdict} in {tests.seconds:.1f} s\n{tests.output_tail}",
            False,
        )
    with run.phase("tools"):
        try:
            if call.name == "list_files":
                return workspace.list_files(args.get("path")), False
            if call.name == "read_file":
                return workspace.read_file(args["path"], args.get("start"), args.get("end")), False
            if call.name == "search":
                return workspace.search(args["pattern"], args.get("path")), False
            if call.name == "edit_file":
                return workspace.edit_file(args["path"], args["old"], args["new"]), False
            if call.name == "write_file":
                return workspace.write_file(args["path"], args["content"]), False
        except Refused as exc:
            return f"refused: {exc}", False
        except ToolError as exc:
            return f"error: {exc}", False
        except OSError as exc:
            return f"error: {exc.strerror or type(exc).__name__}", False
    return f"error: no tool named {call.name}", False


# -- the command ------------------------------------------------------------------------


def _text_of(value: str) -> str:
    path = Path(value)
    return path.read_text() if len(value) < 4096 and path.exists() else value


def load_plan(value: str) -> Plan:
    from bot.verify import read_json_or_base64

    doc = read_json_or_base64(_text_of(value))
    if not isinstance(doc, dict):
        raise ValueError("the plan must be a JSON or YAML object")
    return Plan.from_document(doc)


def load_rules(value: str) -> Constitution:
    """A constitution YAML file, a bundle (``/.well-known/sophie/constitution`` JSON) as a
    file, base64 text or a ``data:application/json;base64,`` URL."""
    if value.startswith("data:"):
        value = value.partition(",")[2]
    path = Path(value)
    if len(value) < 4096 and path.exists():
        text = path.read_text()
        if text.lstrip().startswith("{"):
            return from_bundle(json.loads(text))
        return load_constitution(path)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:
        decoded = value
    if decoded.lstrip().startswith("{"):
        return from_bundle(json.loads(decoded))
    return parse_constitution(decoded)


def _client(settings: Settings, limits: Limits) -> AsyncOpenAI:
    assert settings.llm_api_key is not None
    return AsyncOpenAI(
        api_key=settings.llm_api_key,
        base_url=settings.llm_base_url,
        timeout=limits.model_timeout,
        max_retries=settings.llm_retries,
        default_headers=ATTRIBUTION,
    )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    """``sophie implement``: exit 0 committed (or nothing to implement), 1 not committed
    (the reason is printed and in the result), 2 bad input."""
    try:
        plan = load_plan(args.plan)
        constitution = load_rules(args.constitution or str(settings.constitution_path))
    except (OSError, ValueError, ConstitutionError) as exc:
        return _fail(str(exc))
    expected = (args.expect_digest or "").removeprefix("sha256:")
    if expected and expected != plan.digest:
        return _fail(f"the plan's digest is sha256:{plan.digest}, not the expected {expected}")
    if plan.constitution.digest != constitution.digest_hex:
        return _fail(
            f"the plan was made under constitution sha256:{plan.constitution.digest[:12]}, "
            f"not the given sha256:{constitution.digest_hex[:12]}"
        )
    rule = constitution.repo(plan.target.repo)
    if rule is None:
        return _fail(f"{plan.target.repo} is not in the constitution")
    if rule.implementer.kind != "sophie":
        return _fail(
            f"the constitution has {rule.name} implemented by {rule.implementer.kind} "
            f"{rule.implementer.run or ''}, not by sophie implement".replace("  ", " ")
        )
    if settings.llm_api_key is None and needs_implementing(plan):
        return _fail(
            "no model configured: set SOPHIE_LLM_API_KEY (and SOPHIE_LLM_BASE_URL, "
            "SOPHIE_LLM_MODELS) in the implement job; without one, change steps cannot be "
            "implemented"
        )
    limits = Limits(
        max_steps=args.max_steps,
        max_tokens=args.max_tokens,
        max_seconds=args.max_seconds,
        test_timeout=args.test_timeout,
        model_timeout=min(args.model_timeout, args.max_seconds),
    )
    job = Job(
        plan=plan,
        rule=rule,
        root=Path(args.repo_dir),
        model=args.model or settings.llm_models[0],
        limits=limits,
        pass_env=tuple(args.pass_env or ()),
        secrets=tuple(settings.secrets()),
        patch=args.patch,
    )
    _not_dumpable()
    result = asyncio.run(_implement_with_client(settings, job))
    return report(result, plan, args.out)


async def _implement_with_client(settings: Settings, job: Job) -> Result:
    if settings.llm_api_key is None:  # no change steps: nothing will be asked
        settings = replace(settings, llm_api_key="unused")
    client = _client(settings, job.limits)
    try:
        return await implement(job, client)
    finally:
        await client.close()


def report(result: Result, plan: Plan, out: Path | None) -> int:
    """Write the result (``--out``, ``$GITHUB_OUTPUT``) and tell the job log."""
    doc = result.to_dict()
    if result.status == "committed":
        title, body = pull_request_text(plan, result)
        doc["pull_request"] = {"title": title, "body": body}
    if out is not None:
        out.write_text(json.dumps(doc, indent=2) + "\n")
    github_output = os.environ.get("GITHUB_OUTPUT")
    if github_output:
        with open(github_output, "a", encoding="utf-8") as fh:
            fh.write("\n".join(result.github_outputs()) + "\n")
    stream = sys.stdout if result.exit_code == 0 else sys.stderr
    print(f"{result.status.upper()}: {result.message}", file=stream)
    if result.tests is not None and not result.tests.passed:
        print(result.tests.output_tail, file=sys.stderr)
    if result.status == "committed":
        print(
            "next (the pipeline's job; sophie implement never pushes):\n"
            f"  git push origin {result.branch}\n"
            f"  open a draft pull request from {result.branch}: "
            f"{doc['pull_request']['title']!r}"
        )
    return result.exit_code
