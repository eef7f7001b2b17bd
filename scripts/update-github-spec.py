#!/usr/bin/env python3
"""Regenerate tests/fakes/github_spec.json: GitHub's official OpenAPI description
(the @octokit/openapi npm package), pruned to the operations SOPHIE and its fake use.

    .venv/bin/python scripts/update-github-spec.py [--version 23.0.2] [--tarball FILE]

Needs npm (to fetch the package) unless --tarball names an already downloaded one.
The output records the package version and the tarball's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests/fakes/github_spec.json"
VERSION = "23.0.2"
MEMBER = "package/generated/api.github.com.deref.json"

OPERATIONS = [
    ("get", "/repos/{owner}/{repo}"),
    ("get", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}"),
    ("post", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches"),
    ("get", "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs"),
    ("get", "/repos/{owner}/{repo}/actions/runs/{run_id}"),
    ("get", "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs"),
    ("get", "/repos/{owner}/{repo}/actions/runs/{run_id}/artifacts"),
    ("get", "/repos/{owner}/{repo}/actions/artifacts/{artifact_id}"),
    ("post", "/repos/{owner}/{repo}/actions/runs/{run_id}/cancel"),
    ("get", "/repos/{owner}/{repo}/deployments"),
    ("post", "/repos/{owner}/{repo}/deployments"),
    ("get", "/repos/{owner}/{repo}/deployments/{deployment_id}"),
    ("get", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"),
    ("post", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"),
    ("get", "/repos/{owner}/{repo}/releases"),
    ("get", "/repos/{owner}/{repo}/releases/tags/{tag}"),
    ("get", "/repos/{owner}/{repo}/releases/{release_id}/assets"),
    ("get", "/repos/{owner}/{repo}/tags"),
    ("get", "/repos/{owner}/{repo}/commits/{ref}/check-runs"),
    ("get", "/repos/{owner}/{repo}/check-runs/{check_run_id}"),
    ("get", "/repos/{owner}/{repo}/check-runs/{check_run_id}/annotations"),
    ("get", "/repos/{owner}/{repo}/compare/{basehead}"),
    ("get", "/rate_limit"),
    ("post", "/app/installations/{installation_id}/access_tokens"),
    ("get", "/app/installations/{installation_id}"),
]

# Documentation noise that the validator never reads.
_DROP = {"examples", "example", "x-github", "externalDocs", "description", "summary"}


def _prune(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _prune(v)
            for k, v in node.items()
            # "description" is also a property name inside schemas: keep it there.
            if k not in _DROP or (k == "description" and isinstance(v, dict))
        }
    if isinstance(node, list):
        return [_prune(v) for v in node]
    return node


def fetch(version: str, workdir: Path) -> Path:
    subprocess.run(
        ["npm", "pack", f"@octokit/openapi@{version}", "--silent"],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (tarball,) = workdir.glob("octokit-openapi-*.tgz")
    return tarball


def build(tarball: Path, version: str) -> dict[str, Any]:
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise SystemExit(f"{MEMBER} not found in {tarball}")
        spec = json.load(member)
    paths: dict[str, Any] = {}
    for method, path in OPERATIONS:
        operation = spec["paths"].get(path, {}).get(method)
        if operation is None:
            raise SystemExit(f"{method.upper()} {path} is not in @octokit/openapi {version}")
        entry = paths.setdefault(path, {})
        entry[method] = _prune(operation)
        if "parameters" in spec["paths"][path]:
            entry["parameters"] = _prune(spec["paths"][path]["parameters"])
    return {
        "openapi": spec["openapi"],
        "info": {
            "title": spec["info"]["title"],
            "version": spec["info"]["version"],
            "x-sophie-source": {
                "package": "@octokit/openapi",
                "version": version,
                "file": MEMBER.removeprefix("package/"),
                "tarball_sha256": digest,
                "operations": len(OPERATIONS),
            },
        },
        "paths": paths,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=VERSION)
    parser.add_argument("--tarball", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball or fetch(args.version, Path(tmp))
        doc = build(tarball, args.version)
    OUT.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    print(
        f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size // 1024} KiB, "
        f"{len(OPERATIONS)} operations)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
