"""`python -m bot verify --chain` as a person runs it on a downloaded `sophie-chain` bundle."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from nacl.signing import SigningKey

from bot.signer import KeyRing
from roles.constitution import load_constitution
from tests.unit.test_chain import DEB, HEAD, build_chain, make_plan

ROOT = Path(__file__).resolve().parents[2]


def sophie(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SOPHIE_", "SLACK_", "GITHUB_"))
    }
    env["SOPHIE_DATA_DIR"] = str(data)
    return subprocess.run(
        [sys.executable, "-m", "bot", "verify", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_verify_chain_from_the_command_line(tmp_path: Path) -> None:
    constitution = load_constitution(ROOT / "constitution.yml")
    ring = KeyRing(SigningKey.generate(), {})
    now = datetime.now(UTC).replace(microsecond=0)
    plan = make_plan(constitution, implement=True, at=now)
    (tmp_path / "chain.json").write_text(json.dumps(build_chain(plan, constitution, ring, at=now)))
    (tmp_path / "keys.json").write_text(json.dumps(ring.public_keys()))
    (tmp_path / "auth-service.deb").write_bytes(DEB)
    (tmp_path / "evil.deb").write_bytes(DEB + b"\n")
    data = tmp_path / "data"
    chain, keys = str(tmp_path / "chain.json"), str(tmp_path / "keys.json")

    ok = sophie(
        "--chain",
        chain,
        "--keys",
        keys,
        "--artifact",
        str(tmp_path / "auth-service.deb"),
        data=data,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"plan {plan.id} sha256:{plan.digest}" in ok.stdout
    assert f"change: commit {HEAD}" in ok.stdout
    deb = hashlib.sha256(DEB).hexdigest()
    assert f"is artifact auth-service.deb (sha256:{deb})" in ok.stdout
    assert "gh attestation verify" in ok.stdout
    assert ok.stdout.rstrip().endswith("OK: chain verified")
    assert ok.stderr == ""

    evil = sophie(
        "--chain", chain, "--keys", keys, "--artifact", str(tmp_path / "evil.deb"), data=data
    )
    assert evil.returncode == 1
    assert evil.stderr.startswith(f"REJECTED: {tmp_path / 'evil.deb'}: its sha256:")
    assert "OK: chain verified" not in evil.stdout

    # A tampered chain: the plan edited after it was approved.
    doc = json.loads((tmp_path / "chain.json").read_text())
    doc["plan"]["target"]["environment"] = "production"
    (tmp_path / "tampered.json").write_text(json.dumps(doc))
    tampered = sophie("--chain", str(tmp_path / "tampered.json"), "--keys", keys, data=data)
    assert tampered.returncode == 1
    assert tampered.stderr.strip().splitlines() == [
        "REJECTED: the plan changed after it was approved"
    ]

    # Inputs that cannot be read, and options that do not go together: exit 2.
    (tmp_path / "junk.json").write_text("{not json")
    unreadable = [
        ("--chain", str(tmp_path / "missing.json"), "--keys", keys),
        ("--chain", str(tmp_path / "junk.json"), "--keys", keys),
        ("--chain", chain, "--keys", keys, "--artifact", str(tmp_path / "missing.deb")),
        ("--chain", chain, "--keys", str(tmp_path / "junk.json")),
        ("--chain", chain),
        ("--chain", chain, "--keys", keys, "--plan", "plan.json"),
        ("--chain", chain, "--keys", keys, "--commit", HEAD),
        ("envelopes.json", "--plan", "plan.json", "--artifact", str(tmp_path / "auth-service.deb")),
        (),
    ]
    for args in unreadable:
        result = sophie(*args, data=data)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error:"), (args, result.stderr)
    assert not (data / "signing.key").exists()  # never made a key to verify with
