"""The pipeline's own verifier (examples/github/verify.py) agrees with `sophie verify`.

The workflow verifies the signed plan without reaching SOPHIE, with a stdlib-only script
whose sha256 the template pins. Both verifiers run here on the same good and tampered
inputs, and must accept and refuse alike; the template's collect step runs for real on
what SOPHIE dispatches (constitution inline as a data: URL, or the bundle).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.util
import io
import json
import random
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import rfc8785
import yaml
from nacl.signing import SigningKey

from bot.settings import Settings
from bot.signer import KeyRing
from roles import diff_engine, integrator, navigator
from roles.attestation import change_statement, decision_statement, sign_statement
from roles.change_check import Change, ChangedFile
from roles.constitution import Constitution, load_constitution
from roles.offline_planner import OfflinePlanner
from roles.plan import Plan
from roles.records import Actor

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples/github/verify.py"
TEMPLATE = ROOT / "examples/github/sophie-pipeline.yml"
TEAM = "T0SOPHIE01"
REQUESTER = Actor(TEAM, "U0REQUEST1", "dave")
ALICE = Actor(TEAM, "U0ALICE001", "alice")
BOB = Actor(TEAM, "U0BOBBY002", "bob")
MALLORY = Actor(TEAM, "U0MALLORY9", "mallory")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pipeline_verify", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verifier = _script()


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing(SigningKey.generate(), {})


async def _plan(constitution: Constitution, text: str) -> Plan:
    reading = navigator.interpret(text, constitution)
    proposal = await OfflinePlanner().propose(reading, constitution, [])
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, proposal.confidence)
    return integrator.assemble(
        integrator.plan_id_for(text),
        datetime.now(UTC),
        reading,
        REQUESTER,
        proposal,
        verdict,
        constitution,
    )


def _decide(
    plan: Plan,
    constitution: Constitution,
    signer: KeyRing,
    actor: Actor,
    decision: str = "approve",
    at: datetime | None = None,
    groups: tuple[str, ...] = (),
) -> dict[str, Any]:
    statement = decision_statement(
        plan,
        actor,
        decision,  # type: ignore[arg-type]
        at or datetime.now(UTC),
        timedelta(hours=1),
        constitution.digest_hex,
        groups=groups,
    )
    return sign_statement(statement, signer)


@dataclass
class Case:
    plan: dict[str, Any]
    envelopes: list[dict[str, Any]]
    bundle: dict[str, Any]
    keys: dict[str, Any]
    expect: str
    # The deploy of a generated change: its signed statement and the commit to deploy.
    change: dict[str, Any] | None = None
    commit: str | None = None


def _keys(*rings: KeyRing) -> dict[str, Any]:
    return {"keys": [{"public_key_base64": base64.b64encode(r.public).decode()} for r in rings]}


def _run_both(case: Case, tmp: Path) -> tuple[tuple[int, str], tuple[int, str]]:
    """(exit status, last output line) of `sophie verify` and of the pipeline's verifier."""
    from bot.cli import _parser, _verify

    files = {}
    for name, doc in (
        ("plan", case.plan),
        ("envelopes", case.envelopes),
        ("constitution", case.bundle),
        ("keys", case.keys),
    ):
        files[name] = tmp / f"{name}.json"
        files[name].write_text(json.dumps(doc))
    argv = [
        str(files["envelopes"]),
        "--plan",
        str(files["plan"]),
        "--keys",
        str(files["keys"]),
        "--constitution",
        str(files["constitution"]),
    ]
    if case.expect:
        argv += ["--expect-digest", case.expect]
    if case.change is not None:
        (tmp / "change.json").write_text(json.dumps(case.change))
        argv += ["--change", str(tmp / "change.json")]
    if case.commit is not None:
        argv += ["--commit", case.commit]

    def run(fn: Callable[[], int]) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = fn()
        lines = (out.getvalue() + err.getvalue()).strip().splitlines()
        return code, lines[-1] if lines else ""

    settings = Settings.from_env({"SOPHIE_DATA_DIR": str(tmp / "data")})
    ours = run(lambda: _verify(settings, _parser().parse_args(["verify", *argv])))
    theirs = run(lambda: int(verifier.main(argv)))
    return ours, theirs


def _tamper_plan(doc: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(doc)
    changed["directive"] += " and also drop the audit table"
    return changed


def _flip_signature(envelope: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(envelope)
    sig = bytearray(base64.b64decode(changed["signatures"][0]["sig"]))
    sig[5] ^= 0x01
    changed["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return changed


def _extra_approver(bundle: dict[str, Any], digest: bool) -> dict[str, Any]:
    rules = json.loads(bundle["yaml"])
    rules["approvers"]["users"].append("U0MALLORY9")
    changed = {**bundle, "yaml": json.dumps(rules)}
    if digest:  # a consistent forgery: the bundle's digest is recomputed
        changed["digest"] = verifier.digest_of(
            {"constitution": rules, "policies": bundle["policies"]} if bundle["policies"] else rules
        )
    return changed


async def test_both_verifiers_accept_and_refuse_alike(
    constitution: Constitution, ring: KeyRing, tmp_path: Path
) -> None:
    staging = await _plan(constitution, "deploy auth to staging")
    production = await _plan(constitution, "deploy auth to production")
    assert staging.approval.level.value == "approval"
    assert production.approval.level.value == "supervision"
    bundle = integrator.constitution_bundle(constitution)
    other = KeyRing(SigningKey.generate(), {})
    good = _decide(staging, constitution, ring, ALICE)
    keys = _keys(ring)
    doc = staging.document()
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    bot = Actor("sophie", f"sophie:{ring.keyid}", "SOPHIE")
    impostor = Actor("sophie", f"sophie:{other.keyid}", "SOPHIE")
    cases: dict[str, tuple[Case, bool]] = {
        "good": (Case(doc, [good], bundle, keys, staging.digest), True),
        "good without expected digest": (Case(doc, [good], bundle, keys, ""), True),
        "plan changed, digest expected": (
            Case(_tamper_plan(doc), [good], bundle, keys, staging.digest),
            False,
        ),
        "plan changed": (Case(_tamper_plan(doc), [good], bundle, keys, ""), False),
        "signature flipped": (Case(doc, [_flip_signature(good)], bundle, keys, ""), False),
        "unknown key": (
            Case(doc, [_decide(staging, constitution, other, ALICE)], bundle, keys, ""),
            False,
        ),
        "constitution forged consistently": (
            Case(doc, [good], _extra_approver(bundle, digest=True), keys, ""),
            False,
        ),
        "constitution edited": (
            Case(doc, [good], _extra_approver(bundle, digest=False), keys, ""),
            False,
        ),
        "not an approver": (
            Case(doc, [_decide(staging, constitution, ring, MALLORY)], bundle, keys, ""),
            False,
        ),
        "own request": (
            Case(doc, [_decide(staging, constitution, ring, REQUESTER)], bundle, keys, ""),
            False,
        ),
        "another workspace": (
            Case(
                doc,
                [_decide(staging, constitution, ring, Actor("T0OTHER001", ALICE.user_id))],
                bundle,
                keys,
                "",
            ),
            False,
        ),
        "approval expired": (
            Case(doc, [_decide(staging, constitution, ring, ALICE, at=long_ago)], bundle, keys, ""),
            False,
        ),
        "vetoed": (
            Case(
                doc,
                [good, _decide(staging, constitution, ring, BOB, "veto")],
                bundle,
                keys,
                "",
            ),
            False,
        ),
        "no envelopes": (Case(doc, [], bundle, keys, ""), False),
        "supervision, one approver": (
            Case(
                production.document(),
                [_decide(production, constitution, ring, ALICE)],
                bundle,
                keys,
                "",
            ),
            False,
        ),
        "supervision, two approvers": (
            Case(
                production.document(),
                [
                    _decide(production, constitution, ring, ALICE),
                    _decide(production, constitution, ring, BOB),
                ],
                bundle,
                keys,
                production.digest,
            ),
            True,
        ),
        "supervision, the same approver twice": (
            Case(
                production.document(),
                [
                    _decide(production, constitution, ring, ALICE),
                    _decide(production, constitution, ring, ALICE),
                ],
                bundle,
                keys,
                "",
            ),
            False,
        ),
        "the bot's own decision": (
            Case(doc, [_decide(staging, constitution, ring, bot)], bundle, keys, ""),
            False,  # staging needs a person's approval; the bot only signs autonomous plans
        ),
        "a decision claiming to be the bot's": (
            Case(doc, [_decide(staging, constitution, ring, impostor)], bundle, keys, ""),
            False,
        ),
    }
    for name, (case, accepted) in cases.items():
        work = tmp_path / re.sub(r"\W+", "-", name)
        work.mkdir()
        ours, theirs = _run_both(case, work)
        assert (ours[0] == 0) is accepted, f"{name}: sophie verify said {ours}"
        # The same verdict, exit status and words (the reasons are approvals.py's).
        assert ours == theirs, f"{name}: sophie verify {ours} but the pipeline's {theirs}"


BASE_SHA = "1" * 40
COMMIT = "2" * 40


def _checked(
    plan: Plan,
    constitution: Constitution,
    signer: KeyRing,
    commit: str = COMMIT,
    repo: str | None = None,
    digest: str | None = None,
) -> dict[str, Any]:
    """The signed statement that Δ checked the change that produced ``commit``."""
    change = Change(
        repo=repo or plan.target.repo,
        base_sha=BASE_SHA,
        head_sha=commit,
        files=(ChangedFile("src/cache.py", "added", 1, 0, "@@ -0,0 +1 @@\n+cache = {}"),),
    )
    statement = change_statement(plan, change, digest or constitution.digest_hex, datetime.now(UTC))
    return sign_statement(statement, signer)


async def test_both_verifiers_check_the_change_statement_alike(
    constitution: Constitution, ring: KeyRing, tmp_path: Path
) -> None:
    staging = await _plan(constitution, "Add caching to the auth service and deploy to staging")
    other = await _plan(constitution, "Add caching to the auth service and deploy to development")
    bundle = integrator.constitution_bundle(constitution)
    keys = _keys(ring)
    doc = staging.document()
    approved = [_decide(staging, constitution, ring, ALICE)]
    good = _checked(staging, constitution, ring)
    stranger = KeyRing(SigningKey.generate(), {})

    def case(change: dict[str, Any] | None, commit: str | None = COMMIT) -> Case:
        return Case(doc, approved, bundle, keys, staging.digest, change, commit)

    cases: dict[str, tuple[Case, int, str]] = {
        "checked, this commit": (case(good), 0, "OK: the change of plan"),
        "checked, another commit": (case(good, "3" * 40), 1, "for commit 222222222222, not"),
        "checked, a short sha": (case(good, COMMIT[:12]), 1, "not this one"),
        "checked for another plan": (
            case(_checked(other, constitution, ring)),
            1,
            "checked for another plan",
        ),
        "checked in another repository": (
            case(_checked(staging, constitution, ring, repo="acme/web-frontend")),
            1,
            "checked in another repository",
        ),
        "checked under another constitution": (
            case(_checked(staging, constitution, ring, digest="0" * 64)),
            1,
            "checked under another constitution",
        ),
        "signed by an unknown key": (
            case(_checked(staging, constitution, stranger)),
            1,
            "verifies with a known key",
        ),
        "signature flipped": (case(_flip_signature(good)), 1, "verifies with a known key"),
        "a decision offered as the change": (
            case(approved[0]),
            1,
            "not a SOPHIE change statement",
        ),
        "the plan changed": (
            Case(_tamper_plan(doc), approved, bundle, keys, "", good, COMMIT),
            1,
            "the plan changed after it was approved",
        ),
        "no approval, a checked change": (
            Case(
                doc, [_decide(staging, constitution, ring, MALLORY)], bundle, keys, "", good, COMMIT
            ),
            1,
            "not an approver",
        ),
        "--change without --commit": (case(good, None), 2, "go together"),
        "--commit without --change": (case(None), 2, "go together"),
    }
    for name, (c, status, words) in cases.items():
        work = tmp_path / re.sub(r"\W+", "-", name)
        work.mkdir()
        ours, theirs = _run_both(c, work)
        assert ours[0] == status and words in ours[1], f"{name}: sophie verify said {ours}"
        assert ours == theirs, f"{name}: sophie verify {ours} but the pipeline's {theirs}"
    ok, _ = _run_both(case(good), tmp_path)
    assert ok[1] == f"OK: the change of plan {staging.id} to commit {COMMIT} was checked"


def test_canonical_json_and_ed25519_are_the_libraries_own() -> None:
    rng = random.Random(8785)
    floats = [0.1, 0.05, 1e21, 1e-7, 5e-324, 1.7976931348623157e308, -0.0, 1e20, 123.456]
    while len(floats) < 5000:
        f = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if f == f and abs(f) != float("inf"):
            floats.append(f)
    for f in floats:
        assert verifier.canonical_json(f) == rfc8785.dumps(f), f
    doc: dict[str, Any] = {
        "z": [1, 2.5, 'x\u2028\x01"\\\t', None, True, False],
        "é": {"\U0001f600": -3, "a": {"": []}},
        "10": 1e-6,
        "1": 2**53 - 1,
    }
    assert verifier.canonical_json(doc) == rfc8785.dumps(doc)
    for _ in range(10):
        key = SigningKey.generate()
        message = rng.randbytes(rng.randrange(1, 300))
        signature = key.sign(message).signature
        public = bytes(key.verify_key)
        assert verifier.ed25519_verify(public, message, signature)
        assert not verifier.ed25519_verify(public, message + b"!", signature)
        bad = bytearray(signature)
        bad[rng.randrange(64)] ^= 1 << rng.randrange(8)
        assert not verifier.ed25519_verify(public, message, bytes(bad))
    # s >= L (malleable) and a small-order key are refused, as libsodium refuses them.
    key = SigningKey.generate()
    sig = key.sign(b"m").signature
    s = int.from_bytes(sig[32:], "little") + verifier._L
    assert not verifier.ed25519_verify(
        bytes(key.verify_key), b"m", sig[:32] + s.to_bytes(32, "little")
    )
    identity = (1).to_bytes(32, "little")
    assert not verifier.ed25519_verify(identity, b"m", sig)


async def test_the_template_collects_and_verifies_what_sophie_dispatches(
    constitution: Constitution, ring: KeyRing, tmp_path: Path
) -> None:
    """The verify job's steps, run as written, on both ways the plan travels."""
    plan = await _plan(constitution, "deploy auth to staging")
    envelopes = [_decide(plan, constitution, ring, ALICE)]
    keys = json.dumps(_keys(ring))
    job = yaml.safe_load(TEMPLATE.read_text())["jobs"]["verify"]
    steps = {step.get("name"): step for step in job["steps"]}
    collect = steps["Collect plan, envelopes, constitution and keys"]["run"]
    check = steps["Check the verifier is the pinned one"]["run"]
    verify = steps["Verify digest, signatures, expiry, constitution and quorum"]["run"]
    pinned = yaml.safe_load(TEMPLATE.read_text())["env"]["VERIFIER_SHA256"]
    inline = integrator.workflow_inputs(plan, envelopes, None, "c.1", constitution)
    assert inline["bundle_url"].startswith("data:application/json;base64,")
    for name, inputs, served in (
        ("inline", inline, None),
        ("fetched", {**inline, "plan": "", "envelopes": "", "bundle_url": "https://x"}, True),
        ("no constitution", {**inline, "bundle_url": ""}, None),
    ):
        work = tmp_path / name
        (work / ".github/sophie").mkdir(parents=True)
        (work / ".github/sophie/verify.py").write_bytes(SCRIPT.read_bytes())
        if served:  # curl stands in for SOPHIE's bundle URL
            (work / "bin").mkdir()
            (work / "served.json").write_text(integrator.bundle(plan, envelopes, constitution))
            curl = work / "bin/curl"
            served_file = work / "served.json"
            curl.write_text(
                f'#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\ncp {served_file} "$2"\n'
            )
            curl.chmod(0o755)
        env = {
            "PATH": f"{work / 'bin'}:/usr/bin:/bin",
            "PLAN_B64": inputs.get("plan", ""),
            "ENVELOPES_B64": inputs.get("envelopes", ""),
            "BUNDLE_URL": inputs["bundle_url"],
            "PINNED_KEYS": keys,
            "PLAN_DIGEST": inputs["plan_digest"],
            "VERIFIER_SHA256": pinned,
        }
        ran = [
            subprocess.run(
                ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True
            )
            for script in (check, collect, verify.replace("\n", " "))
        ]
        if name == "no constitution":
            assert ran[1].returncode != 0 and "no constitution" in ran[1].stdout
            continue
        assert [r.returncode for r in ran] == [0, 0, 0], (name, [r.stderr for r in ran])
        assert ran[2].stdout.startswith(f"OK: 1 decision(s) authorise plan {plan.id}")


def test_the_verifier_needs_only_the_standard_library(tmp_path: Path) -> None:
    """No site-packages (-S), no environment (-I): as on a bare runner."""
    ran = subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), "--help"], capture_output=True, text=True
    )
    assert ran.returncode == 0 and "--constitution" in ran.stdout
    pinned = yaml.safe_load(TEMPLATE.read_text())["env"]["VERIFIER_SHA256"]
    assert pinned == hashlib.sha256(SCRIPT.read_bytes()).hexdigest(), (
        "examples/github/verify.py changed: update VERIFIER_SHA256 in the template"
    )
