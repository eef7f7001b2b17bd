"""The implement stage's own overhead, excluding model time, on the sample service.

Each round copies examples/sample-service into a fresh git repository (not timed) and
makes the seed directive's caching change twice:

* `sophie implement`, as the pipeline runs it (``python -m bot implement`` in a
  subprocess), against the fake LLM answering a 5-tool-call script at once (read the
  file, three edits, finish); its result JSON splits the time into phases: process
  start (imports, plan and constitution checks), setup (git checks), model (round trips
  to the fake), tools, tests (the final run of the declared test command) and commit
  (staging, diff checks, commit, branch);
* the baseline, a shell script doing the same by hand: write the edited file, run the
  same test command, create the branch and commit.

Nothing passes or fails on time; the figures and ratios are printed.

    .venv/bin/python bench/bench_implement.py --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import summary  # noqa: E402
from tests.fakes import implementing_model as im  # noqa: E402
from tests.fakes.llm_api import FakeLLM, ToolCalls, tool_call, tool_calls  # noqa: E402
from tests.fakes.server import ThreadedServer  # noqa: E402
from tests.harness import LLM_KEY  # noqa: E402

PHASES = ("start", "setup", "model", "tools", "tests", "commit")

BASELINE = """set -eu
start=$(date +%s%N)
cp "$EDITED" sample_service/auth.py
edited=$(date +%s%N)
$TEST_COMMAND >/dev/null 2>&1
tested=$(date +%s%N)
git switch -q -c "$BRANCH"
git add sample_service/auth.py
git commit -q -m "$MESSAGE"
done=$(date +%s%N)
echo "$(( (edited - start) / 1000 )) $(( (tested - edited) / 1000 )) $(( (done - tested) / 1000 ))"
"""


def _script() -> list[ToolCalls]:
    return [
        tool_calls(tool_call("read_file", path=im.AUTH)),
        tool_calls(im.edit(im.CONSTANT)),
        tool_calls(im.edit(im.CACHE_FIELD)),
        tool_calls(im.edit(im.CACHED_LOOKUP)),
        tool_calls(tool_call("finish", summary=im.SUMMARY)),
    ]


def _env(llm_url: str, data: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SOPHIE_", "SLACK_", "GITHUB_", "OPENAI_", "OPENROUTER_"))
    }
    env.update(
        {
            "SOPHIE_DATA_DIR": str(data),
            "SOPHIE_LLM_API_KEY": LLM_KEY,
            "SOPHIE_LLM_BASE_URL": f"{llm_url}/api/v1",
            "SOPHIE_LLM_MODELS": im.MODEL,
            "SOPHIE_LLM_RETRIES": "0",
            "GIT_AUTHOR_NAME": "Dev",
            "GIT_AUTHOR_EMAIL": "dev@example.com",
            "GIT_COMMITTER_NAME": "Dev",
            "GIT_COMMITTER_EMAIL": "dev@example.com",
        }
    )
    return env


def _edited_auth() -> str:
    text = (im.SAMPLE / im.AUTH).read_text()
    for _, old, new in (im.CONSTANT, im.CACHE_FIELD, im.CACHED_LOOKUP):
        text = text.replace(old, new, 1)
    return text


def run(rounds: int) -> None:
    fake = FakeLLM(keys=(LLM_KEY,), models=(im.MODEL,))
    server = ThreadedServer(fake.app).start()
    sophie: dict[str, list[float]] = {p: [] for p in (*PHASES, "total")}
    baseline: dict[str, list[float]] = {p: [] for p in ("edit", "tests", "commit", "total")}
    try:
        with tempfile.TemporaryDirectory(prefix="sophie-bench-") as tmp_name:
            tmp = Path(tmp_name)
            constitution_path = im.constitution_file(tmp)
            plan = asyncio.run(im.seed_plan(im.load(constitution_path)))
            plan_file = tmp / "plan.json"
            plan_file.write_text(json.dumps(plan.document()))
            edited = tmp / "auth.py"
            edited.write_text(_edited_auth())
            env = _env(server.url, tmp / "data")
            for n in range(rounds):
                repo = im.sample_repo(tmp / f"sophie-{n}")
                fake.script(im.MODEL, *_script())
                out = tmp / f"result-{n}.json"
                began = time.perf_counter()
                args = ["--plan", str(plan_file), "--constitution", str(constitution_path)]
                args += ["--repo-dir", str(repo), "--out", str(out)]
                done = subprocess.run(
                    [sys.executable, "-m", "bot", "implement", *args],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                total = time.perf_counter() - began
                if done.returncode != 0:
                    raise SystemExit(f"sophie implement failed: {done.stderr}")
                result = json.loads(out.read_text())
                sophie["total"].append(total)
                sophie["start"].append(total - result["seconds"])
                for phase in PHASES[1:]:
                    sophie[phase].append(result["phases"][phase])

                repo = im.sample_repo(tmp / f"baseline-{n}")
                began = time.perf_counter()
                by_hand = subprocess.run(
                    ["bash", "-c", BASELINE],
                    cwd=repo,
                    env={
                        **env,
                        "EDITED": str(edited),
                        "TEST_COMMAND": im.TEST_COMMAND,
                        "BRANCH": f"sophie/{plan.id}",
                        "MESSAGE": f"SOPHIE plan {plan.id} (sha256:{plan.digest})",
                    },
                    capture_output=True,
                    text=True,
                    check=True,
                )
                baseline["total"].append(time.perf_counter() - began)
                for phase, micros in zip(
                    ("edit", "tests", "commit"), by_hand.stdout.split(), strict=True
                ):
                    baseline[phase].append(int(micros) / 1e6)
    finally:
        server.stop()

    def p50(samples: list[float]) -> float:
        return summary(samples)[0]

    print(f"sophie implement on the sample service, {rounds} rounds (model answers at once)")
    print(f"{'phase':<34}{'p50':>10}{'p99':>10}")
    rows = [
        ("process start (imports, checks)", "start"),
        ("setup (git checks)", "setup"),
        ("model round trips (5 turns)", "model"),
        ("tools (read, 3 edits)", "tools"),
        ("tests (final run)", "tests"),
        ("commit (stage, check, commit)", "commit"),
        ("total wall time", "total"),
    ]
    for label, key in rows:
        x50, x99, _ = summary(sophie[key])
        print(f"{label:<34}{x50:>8.2f}ms{x99:>8.2f}ms")
    print("baseline: the same edit, tests and commit by a shell script")
    for label, key in (("edit (cp)", "edit"), ("tests", "tests"), ("commit (git)", "commit")):
        x50, x99, _ = summary(baseline[key])
        print(f"{label:<34}{x50:>8.2f}ms{x99:>8.2f}ms")
    x50, x99, _ = summary(baseline["total"])
    print(f"{'total wall time':<34}{x50:>8.2f}ms{x99:>8.2f}ms")
    own = [t - s for t, s in zip(sophie["total"], sophie["tests"], strict=True)]
    hand = [t - s for t, s in zip(baseline["total"], baseline["tests"], strict=True)]
    print(
        f"ratio total p50: {p50(sophie['total']) / p50(baseline['total']):.2f}; "
        f"without the tests: {p50(own):.0f} ms vs {p50(hand):.0f} ms "
        f"({p50(own) / p50(hand):.1f}x); sophie's commit phase vs git by hand: "
        f"{p50(sophie['commit']) / p50(baseline['commit']):.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    run(args.rounds)


if __name__ == "__main__":
    main()
