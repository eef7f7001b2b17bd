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
from roles.records import Actor, ProducedChange

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


def _target_plan(**target: Any) -> dict[str, Any]:
    """The parts of a plan document :func:`run_problem` reads."""
    return {
        "id": "plan_00000000000000aa",
        "artifacts": ["docker", "deb"],
        "target": {
            "repo": "acme/auth-service",
            "ref": "main",
            "environment": "staging",
            "workflow": "sophie-pipeline.yml",
            "action": "deploy",
            "sha": "",
            **target,
        },
    }


HEAD = "9" * 40
GOOD = "a" * 40  # the last known good commit of a rollback
ROLLBACK = {"action": "rollback", "sha": GOOD}
BRANCH = "refs/heads/sophie/plan_00000000000000aa"
# The second run of a plan that implements: on the checked commit, with its statement.
CHECKED = {"deploy_sha": COMMIT, "run_sha": COMMIT, "change": COMMIT}


@pytest.mark.parametrize(
    ("target", "run", "expect"),
    [
        # As SOPHIE dispatches them: accepted.
        ({}, {}, ""),
        ({}, {"plan_id": "plan_00000000000000aa", "repo": "acme/auth-service", "ref": "main"}, ""),
        ({}, {"repo": "Acme/Auth-Service", "ref": "refs/heads/main"}, ""),  # names ignore case
        ({"action": "build"}, {"action": "build"}, ""),
        ({"implement": True}, {"action": "implement", "ref": "refs/heads/main"}, ""),
        ({"implement": True}, {**CHECKED, "ref": BRANCH}, ""),
        ({"implement": True, "action": "build"}, {**CHECKED, "action": "build"}, ""),
        (ROLLBACK, {"action": "rollback", "deploy_sha": GOOD}, ""),
        # Inputs that are not what the plan says.
        ({}, {"environment": "production"}, "asked to run in production, but the plan targets"),
        ({}, {"environment": ""}, "asked to run in (none)"),
        ({}, {"artifacts": "docker,deb,rpm"}, "build artifacts docker,deb,rpm, but the plan has"),
        ({}, {"artifacts": "deb,docker"}, "build artifacts deb,docker"),
        ({}, {"artifacts": ""}, "build artifacts (none)"),
        ({}, {"plan_id": "plan_00000000000000bb"}, "dispatched for plan plan_00000000000000bb"),
        ({}, {"repo": "acme/web-frontend"}, "runs in acme/web-frontend, but the plan is for"),
        ({}, {"ref": "refs/heads/evil"}, "on ref evil, but the plan runs on main"),
        ({}, {"action": "launch"}, "unknown action 'launch'"),
        ({}, {"action": "build"}, "the plan's action is deploy, not build"),
        ({}, {"deploy_sha": HEAD}, "deploy_sha is only for a rollback or a generated change"),
        ({}, CHECKED, "deploy_sha is only for a rollback or a generated change"),
        ({}, {"change": COMMIT}, "no change statement belongs"),
        # implement is only for a plan that asks for it, and carries nothing to deploy.
        ({}, {"action": "implement"}, "does not ask the pipeline to implement"),
        ({**ROLLBACK, "implement": True}, {"action": "implement"}, "does not ask the pipeline"),
        ({"implement": True}, {"action": "implement", "deploy_sha": HEAD}, "must be empty"),
        ({"implement": True}, {"action": "implement", "change": COMMIT}, "takes no change"),
        ({"implement": True}, {"action": "implement", "ref": BRANCH}, "but the plan runs on main"),
        # The deploy of a plan that implements: only its checked commit, and only from it.
        ({"implement": True}, {}, "implemented and checked before it deploys: no change statement"),
        ({"implement": True, "action": "build"}, {"action": "build"}, "before it builds"),
        ({"implement": True}, {**CHECKED, "deploy_sha": HEAD}, "deploy_sha 999999999999 is not"),
        ({"implement": True}, {**CHECKED, "deploy_sha": ""}, "deploy_sha (empty) is not"),
        (
            {"implement": True},
            {**CHECKED, "run_sha": HEAD},
            f"this run is on commit {HEAD[:12]}, not the checked commit {COMMIT[:12]}",
        ),
        ({"implement": True}, {**CHECKED, "run_sha": ""}, "this run is on commit (unknown)"),
        ({"implement": True}, {**CHECKED, "ref": "main"}, "but the plan runs on sophie/plan_"),
        ({"implement": True}, {"action": "rollback", "deploy_sha": GOOD}, "not rollback"),
        # A rollback restores exactly the plan's commit.
        (ROLLBACK, {"action": "rollback", "deploy_sha": HEAD}, "asked to restore 999999999999"),
        (ROLLBACK, {"action": "rollback"}, "asked to restore (nothing)"),
        ({"action": "rollback"}, {"action": "rollback"}, "the plan restores (nothing)"),
        (ROLLBACK, {"action": "rollback", "deploy_sha": GOOD, "change": GOOD}, "takes no change"),
        (ROLLBACK, {}, "the plan's action is rollback, not deploy"),
        (
            {},
            {"action": "rollback", "deploy_sha": GOOD},
            "the plan's action is deploy, not rollback",
        ),
    ],
)
def test_run_problem_refuses_runs_the_plan_does_not_say(
    target: dict[str, Any], run: dict[str, Any], expect: str
) -> None:
    given: dict[str, Any] = {
        "action": "deploy",
        "environment": "staging",
        "artifacts": "docker,deb",
        "deploy_sha": "",
        "run_sha": HEAD,
        "change": None,
        "plan_id": None,
        "repo": None,
        "ref": None,
        **run,
    }
    reason = verifier.run_problem(
        _target_plan(**target),
        given["action"],
        given["environment"],
        given["artifacts"],
        given["deploy_sha"],
        given["run_sha"],
        given["change"],
        given["plan_id"],
        given["repo"],
        given["ref"],
    )
    if expect:
        assert expect in reason, reason
    else:
        assert reason == ""


async def test_the_verifier_checks_the_run_after_the_signatures(
    constitution: Constitution, ring: KeyRing, tmp_path: Path
) -> None:
    """`verify.py` with the run flags, on signed inputs: what it says and its exit status."""
    plan = _implementing(await _plan(constitution, "Add caching to auth, deploy to staging"))
    approved = [_decide(plan, constitution, ring, ALICE)]
    files = {
        "envelopes": approved,
        "plan": plan.document(),
        "keys": _keys(ring),
        "constitution": integrator.constitution_bundle(constitution),
        "change": _checked(plan, constitution, ring),
        "other": _checked(plan, constitution, ring, commit="3" * 40),
    }
    for name, doc in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    signed = [str(tmp_path / "envelopes.json")]
    for flag in ("plan", "keys", "constitution"):
        signed += [f"--{flag}", str(tmp_path / f"{flag}.json")]
    run = [
        "--environment",
        plan.target.environment,
        "--artifacts",
        ",".join(plan.artifacts),
        "--run-sha",
        COMMIT,
    ]
    change = ["--change", str(tmp_path / "change.json"), "--commit", COMMIT]
    other = ["--change", str(tmp_path / "other.json"), "--commit", "3" * 40]
    cases: dict[str, tuple[list[str], int, str]] = {
        "implement": (["--action", "implement", "--deploy-sha", "", *run], 0, "OK: implement"),
        "deploy the checked commit": (
            ["--action", "deploy", "--deploy-sha", COMMIT, *run, *change],
            0,
            f"OK: deploy in {plan.target.environment} is what plan {plan.id} says",
        ),
        "deploy without the change": (
            ["--action", "deploy", "--deploy-sha", COMMIT, *run],
            1,
            "REJECTED: the plan's change must be implemented and checked",
        ),
        "a change checked for another commit": (
            ["--action", "deploy", "--deploy-sha", "3" * 40, *run, *other],
            1,
            f"REJECTED: this run is on commit {COMMIT[:12]}, not the checked commit 333333333333",
        ),
        "the signatures first": (
            ["--action", "deploy", "--deploy-sha", COMMIT, *run, "--plan-id", plan.id],
            1,
            "REJECTED",
        ),
        "no run flags": ([], 0, f"(sha256:{plan.digest}) at level"),
        "--action alone": (["--action", "deploy"], 2, "--action needs --environment"),
        "run flags without --action": (run, 2, "the run flags go with --action"),
        "--ref without --action": (["--ref", "main"], 2, "go with --action"),
    }
    for name, (argv, status, says) in cases.items():
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = verifier.main([*signed, *argv])
        lines = (out.getvalue() + err.getvalue()).strip().splitlines()
        assert code == status and says in lines[-1], (name, code, lines)
    # Tampering is found before the run is judged: a tampered plan says so, not "the run".
    (tmp_path / "plan.json").write_text(json.dumps(_tamper_plan(plan.document())))
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        assert verifier.main([*signed, "--action", "implement", "--deploy-sha", "", *run]) == 1
    assert "the plan changed after it was approved" in err.getvalue()


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


def _expand(value: object, context: dict[str, str]) -> str:
    """A workflow value with its ``${{ name }}`` expressions looked up in ``context``."""
    return re.sub(r"\$\{\{\s*([\w.-]+)\s*\}\}", lambda m: context[m.group(1)], str(value))


def _implementing(plan: Plan) -> Plan:
    """``plan`` with its target asking the pipeline to implement its change steps."""
    doc = plan.document()
    return Plan.from_document({**doc, "target": {**doc["target"], "implement": True}})


async def test_the_template_collects_and_verifies_what_sophie_dispatches(
    constitution: Constitution, ring: KeyRing, tmp_path: Path
) -> None:
    """The verify job's steps, run as written, on both ways the plan travels, for both
    runs of a plan that implements, and on runs that are not what the plan says."""
    plan = await _plan(constitution, "deploy auth to staging")
    envelopes = [_decide(plan, constitution, ring, ALICE)]
    changing = _implementing(await _plan(constitution, "Add caching to auth, deploy to staging"))
    approved = [_decide(changing, constitution, ring, ALICE)]
    checked = _checked(changing, constitution, ring)
    produced = ProducedChange(f"sophie/{changing.id}", COMMIT, BASE_SHA, statement=checked)
    keys = json.dumps(_keys(ring))
    job = yaml.safe_load(TEMPLATE.read_text())["jobs"]["verify"]
    steps = {step.get("name"): step for step in job["steps"]}
    collect = steps["Collect plan, envelopes, constitution and keys"]
    check = steps["Check the verifier is the pinned one"]
    verify = steps["Verify digest, signatures, expiry, constitution and quorum"]
    pinned = yaml.safe_load(TEMPLATE.read_text())["env"]["VERIFIER_SHA256"]
    inline = integrator.workflow_inputs(plan, envelopes, None, "c.1", constitution)
    assert inline["bundle_url"].startswith("data:application/json;base64,")
    phase1 = integrator.workflow_inputs(
        changing, approved, None, "c.1", constitution, implementing=True
    )
    phase2 = integrator.workflow_inputs(
        changing, approved, None, "c.2", constitution, change=produced
    )
    assert phase1["action"] == "implement" and phase2["deploy_sha"] == COMMIT
    on_main, on_branch = "refs/heads/main", f"refs/heads/sophie/{changing.id}"
    head = "9" * 40
    # name: (dispatch inputs, the run's commit, its ref, what the verify step says)
    cases: dict[str, tuple[dict[str, str], str, str, str]] = {
        "inline": (inline, head, on_main, "OK"),
        "fetched": (
            {**inline, "plan": "", "envelopes": "", "bundle_url": "https://x"},
            head,
            on_main,
            "OK",
        ),
        "no constitution": ({**inline, "bundle_url": ""}, head, on_main, "no constitution"),
        "another environment": (
            {**inline, "environment": "production"},
            head,
            on_main,
            "REJECTED: the workflow was asked to run in production",
        ),
        "another plan id": (
            {**inline, "plan_id": "plan_0000000000000000"},
            head,
            on_main,
            "REJECTED: the workflow was dispatched for plan plan_0000000000000000",
        ),
        "another branch": (inline, head, "refs/heads/evil", "REJECTED: this run is on ref evil"),
        "implement, phase 1": (phase1, head, on_main, "OK"),
        "implement, the plan's action instead": (
            {**phase1, "action": "deploy"},
            head,
            on_main,
            "REJECTED: the plan's change must be implemented and checked before it deploys",
        ),
        "implement, phase 2": (phase2, COMMIT, on_branch, "OK"),
        "phase 2 on another commit": (
            phase2,
            head,
            on_branch,
            f"REJECTED: this run is on commit {head[:12]}, not the checked commit",
        ),
        "phase 2, deploy_sha of another commit": (
            {**phase2, "deploy_sha": head},
            head,
            on_branch,
            "REJECTED: the change statement is for commit 222222222222, not this one",
        ),
    }
    for name, (inputs, sha, ref, says) in cases.items():
        work = tmp_path / re.sub(r"\W+", "-", name)
        (work / ".github/sophie").mkdir(parents=True)
        (work / ".github/sophie/verify.py").write_bytes(SCRIPT.read_bytes())
        served = inputs["bundle_url"] == "https://x"
        if served:  # curl stands in for SOPHIE's bundle URL
            (work / "bin").mkdir()
            (work / "served.json").write_text(integrator.bundle(plan, envelopes, constitution))
            curl = work / "bin/curl"
            served_file = work / "served.json"
            curl.write_text(
                f'#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\ncp {served_file} "$2"\n'
            )
            curl.chmod(0o755)
        context = {f"inputs.{k}": inputs.get(k, "") for k in (*inline, *phase2, "deploy_sha")}
        context["vars.SOPHIE_PUBLIC_KEYS"] = keys
        env = {
            "PATH": f"{work / 'bin'}:/usr/bin:/bin",
            "VERIFIER_SHA256": pinned,
            "GITHUB_SHA": sha,
            "GITHUB_REF": ref,
            "GITHUB_REPOSITORY": plan.target.repo,
        }
        ran = [
            subprocess.run(
                ["bash", "-e", "-c", step["run"]],
                cwd=work,
                env={**env, **{k: _expand(v, context) for k, v in step.get("env", {}).items()}},
                capture_output=True,
                text=True,
            )
            for step in (check, collect, verify)
        ]
        if name == "no constitution":
            assert ran[1].returncode != 0 and "no constitution" in ran[1].stdout
            continue
        assert [r.returncode for r in ran[:2]] == [0, 0], (name, [r.stderr for r in ran])
        if says != "OK":
            assert ran[2].returncode == 1 and says in ran[2].stderr, (name, ran[2].stderr)
            continue
        assert ran[2].returncode == 0, (name, ran[2].stderr)
        checked_plan = changing if name.startswith("implement") else plan
        assert ran[2].stdout.startswith(f"OK: 1 decision(s) authorise plan {checked_plan.id}"), name
        # The change statement, when it came, is kept with the plan for the chain.
        assert (work / "change.json").exists() is (name == "implement, phase 2"), name


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
