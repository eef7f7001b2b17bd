"""The pipeline's verify job, as the template runs it, for the fake GitHub's runs.

Plugged into :attr:`tests.fakes.github_rest.FakeGitHub.verify_with`: it decodes the
dispatch inputs (plan, envelopes, the ``data:`` bundle with the constitution and the
change statement) and runs ``examples/github/verify.py`` with the flags the template
passes, so end-to-end runs are verified by the real, pinned verifier.
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERIFY = ROOT / "examples" / "github" / "verify.py"
_runs = itertools.count()


def as_the_pipeline(
    keys_json: str, folder: Path, repo: str
) -> Callable[[dict[str, str], str, str], str]:
    def verify(inputs: dict[str, str], head_sha: str, ref: str) -> str:
        work = folder / f"verify-{next(_runs)}"
        work.mkdir(parents=True)
        bundle = json.loads(base64.b64decode(inputs["bundle_url"].split(",", 1)[1]))
        files = {
            "plan": json.loads(base64.b64decode(inputs["plan"])),
            "envelopes": json.loads(base64.b64decode(inputs["envelopes"])),
            "constitution": bundle["constitution"],
        }
        if "change" in bundle:
            files["change"] = bundle["change"]
        for name, doc in files.items():
            (work / f"{name}.json").write_text(json.dumps(doc))
        (work / "keys.json").write_text(keys_json)
        deploy_sha = inputs.get("deploy_sha", "")
        argv = [str(work / "envelopes.json")]
        for flag in ("plan", "keys", "constitution"):
            argv += [f"--{flag}", str(work / f"{flag}.json")]
        argv += ["--expect-digest", inputs["plan_digest"], "--action", inputs["action"]]
        argv += ["--environment", inputs["environment"], "--artifacts", inputs["artifacts"]]
        argv += ["--deploy-sha", deploy_sha, "--run-sha", head_sha, "--plan-id", inputs["plan_id"]]
        argv += ["--repo", repo, "--ref", ref]
        if "change" in files:
            argv += ["--change", str(work / "change.json"), "--commit", deploy_sha]
        done = subprocess.run(
            [sys.executable, str(VERIFY), *argv], capture_output=True, text=True, timeout=60
        )
        return "" if done.returncode == 0 else (done.stderr or done.stdout).strip()[:500]

    return verify
