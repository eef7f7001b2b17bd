"""The command line as a workflow or an operator uses it: keygen, rotation, pubkey,
verify (what a pipeline runs before it builds), audit verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis.asyncio as aioredis

from bot.audit_log import AuditLog
from bot.redis_store import RedisStore
from bot.signer import load_keyring
from roles import diff_engine, integrator, navigator
from roles.attestation import decision_statement, sign_statement
from roles.constitution import load_constitution
from roles.offline_planner import OfflinePlanner
from roles.plan import Plan
from roles.records import Actor, PlanRecord, PlanStatus, Thread

ROOT = Path(__file__).resolve().parents[2]
ALICE = Actor("T0SOPHIE01", "U0ALICE001", "alice")


def sophie(*args: str, data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("SOPHIE_", "SLACK_", "GITHUB_"))
    }
    clean.update({"SOPHIE_DATA_DIR": str(data), **env})
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=ROOT, env=clean, capture_output=True, text=True
    )


async def _plan() -> Plan:
    constitution = load_constitution(ROOT / "constitution.yml")
    reading = navigator.interpret("deploy auth to staging", constitution)
    proposal = await OfflinePlanner().propose(reading, constitution, [])
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, proposal.confidence)
    return integrator.assemble(
        integrator.plan_id_for("cli-test"),
        datetime.now(UTC).replace(microsecond=0),
        reading,
        Actor("T0SOPHIE01", "U0DAVE0004"),
        proposal,
        verdict,
        constitution,
    )


async def test_keygen_rotation_pubkey_and_verify(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = sophie("keygen", data=data)
    assert made.returncode == 0 and (data / "signing.key").stat().st_mode & 0o777 == 0o600
    assert sophie("keygen", data=data).returncode == 1  # never overwrites silently

    # A decision signed with the first key, for a plan written to files.
    constitution = load_constitution(ROOT / "constitution.yml")
    plan = await _plan()
    first = load_keyring(None, None, data)
    statement = decision_statement(
        plan, ALICE, "approve", datetime.now(UTC), timedelta(hours=1), constitution.digest_hex
    )
    envelope = sign_statement(statement, first)
    (tmp_path / "plan.json").write_text(json.dumps(plan.document()))
    (tmp_path / "envelopes.json").write_text(json.dumps([envelope]))
    (tmp_path / "constitution.json").write_text(json.dumps(constitution.bundle()))

    rotated = sophie("keygen", "--rotate", data=data)
    assert rotated.returncode == 0 and f"retired keyid {first.keyid}" in rotated.stdout
    ring = load_keyring(None, None, data)
    assert ring.keyid != first.keyid
    (tmp_path / "keys.json").write_text(json.dumps(ring.public_keys()))
    statuses = {k["keyid"]: k["status"] for k in ring.public_keys()["keys"]}
    assert statuses == {ring.keyid: "current", first.keyid: "retired"}

    shown = sophie("pubkey", data=data)
    assert shown.returncode == 0 and ring.keyid in shown.stdout
    assert "ssh-ed25519 " in shown.stdout and "BEGIN PUBLIC KEY" in shown.stdout

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return sophie(
            "verify",
            str(tmp_path / "envelopes.json"),
            "--plan",
            str(tmp_path / "plan.json"),
            "--keys",
            str(tmp_path / "keys.json"),
            "--constitution",
            str(tmp_path / "constitution.json"),
            *extra,
            data=data,
        )

    ok = verify("--expect-digest", f"sha256:{plan.digest}")
    assert ok.returncode == 0, ok.stderr
    assert f"authorise plan {plan.id}" in ok.stdout  # an old decision, a retired key: still valid
    wrong = verify("--expect-digest", "0" * 64)
    assert wrong.returncode == 1 and "REJECTED" in wrong.stderr

    tampered = plan.document()
    tampered["steps"][0]["description"] = "something else entirely"
    (tmp_path / "plan.json").write_text(json.dumps(tampered))
    changed = verify()
    assert changed.returncode == 1 and "plan changed after it was approved" in changed.stderr
    missing = sophie("verify", str(tmp_path / "nope.json"), "--plan", "x", data=data)
    assert missing.returncode == 2 and "error:" in missing.stderr


async def test_audit_verify(redis_url: str, tmp_path: Path) -> None:
    client = aioredis.Redis.from_url(redis_url)
    # The bot's key (the CLI loads the same one from the data dir): entries carry its MAC.
    store = RedisStore(client, AuditLog(client, load_keyring(None, None, tmp_path), tmp_path))
    plan = await _plan()
    await store.save_new(PlanRecord(plan=plan, status=PlanStatus.PENDING, thread=Thread("C1", "1")))
    await store.transition(plan.id, {PlanStatus.PENDING}, PlanStatus.VETOED, "test")
    good = sophie("audit", "verify", data=tmp_path, REDIS_URL=redis_url)
    assert good.returncode == 0, good.stderr
    entries = await client.xrange("sophie:audit")
    first_id, fields = entries[0]
    fields[b"body"] = fields[b"body"].replace(b"vetoed", b"approved").replace(b"created", b"forged")
    await client.xdel("sophie:audit", first_id)
    await client.xadd("sophie:audit", fields)
    bad = sophie("audit", "verify", data=tmp_path, REDIS_URL=redis_url)
    assert bad.returncode != 0
    await client.aclose()


async def test_doctor_checks_every_service(redis_url: str, tmp_path: Path) -> None:
    from tests.fakes.github_rest import FakeGitHub
    from tests.fakes.llm_api import FakeLLM
    from tests.fakes.server import ThreadedServer
    from tests.fakes.slack_api import FakeSlack
    from tests.harness import env_for

    servers = [
        ThreadedServer(FakeSlack(token="xoxb-test-bot-token").app).start(),
        ThreadedServer(FakeGitHub(token="ghp_testtoken0123456789").app).start(),
        ThreadedServer(FakeLLM(keys=("sk-or-test-key",)).app).start(),
    ]
    try:
        env = env_for(
            redis_url,
            tmp_path / "data",
            slack_url=servers[0].url,
            github_url=servers[1].url,
            llm_url=servers[2].url,
        )
        healthy = sophie("doctor", data=tmp_path / "data", **env)
        assert healthy.returncode == 0, healthy.stdout
        for name in ("constitution", "signing key", "redis", "slack", "github", "llm"):
            assert f"✓ {name}" in healthy.stdout
        assert "xoxb-test-bot-token" not in healthy.stdout + healthy.stderr
        broken = sophie("doctor", data=tmp_path / "data", **{**env, "SLACK_BOT_TOKEN": "xoxb-bad"})
        assert (
            broken.returncode == 1
            and "✗ slack" in broken.stdout
            and "invalid_auth" in broken.stdout
        )
    finally:
        for server in servers:
            server.stop()
