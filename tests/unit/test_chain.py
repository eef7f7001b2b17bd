"""`sophie verify --chain` (bot/chain.py): real signed chains, each link broken from outside."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from bot.chain import KIND, VERSION, Report, artifact_kind, verify_chain
from bot.signer import KeyRing
from bot.verify import PublicKeys
from roles import diff_engine, integrator, navigator
from roles.attestation import change_statement, decision_statement, sign_statement
from roles.change_check import Change, ChangedFile
from roles.constitution import Constitution, load_constitution, parse_constitution
from roles.offline_planner import OFFLINE_MODEL, offline_draft
from roles.plan import Plan
from roles.ports import Proposal
from roles.records import Actor

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SEED = "Add caching to the user authentication system and deploy to staging"
REPO = "acme/auth-service"
BASE = "a" * 40
HEAD = "b" * 40
REQUESTER = Actor("T0SOPHIE01", "U0REQUEST1", "dave")
ALICE = Actor("T0SOPHIE01", "U0ALICE001", "alice")
MALLORY = Actor("T0SOPHIE01", "U0MALLORY9", "mallory")
DEB = b"!<arch>\ndebian-binary the package bytes"
IMAGE_DIGEST = "sha256:" + "c" * 64
CHANGE = Change(
    repo=REPO,
    base_sha=BASE,
    head_sha=HEAD,
    files=(
        ChangedFile(
            "src/auth/cache.py", "added", 1, 0, "@@ -0,0 +1 @@\n+cache = TTLCache(maxsize=1024)"
        ),
        ChangedFile("tests/test_cache.py", "added", 1, 0, "@@ -0,0 +1 @@\n+def test_cache(): ..."),
    ),
)


def make_plan(
    constitution: Constitution, text: str = SEED, implement: bool = False, at: datetime = NOW
) -> Plan:
    reading = navigator.interpret(text, constitution)
    proposal = Proposal(offline_draft(reading), "offline", [OFFLINE_MODEL], 0.75)
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, proposal.confidence)
    plan = integrator.assemble(
        integrator.plan_id_for(text), at, reading, REQUESTER, proposal, verdict, constitution
    )
    doc = plan.document()
    doc["target"]["implement"] = implement
    return Plan.from_document(doc)


def approve(
    plan: Plan, constitution: Constitution, ring: KeyRing, actor: Actor = ALICE, at: datetime = NOW
) -> dict[str, Any]:
    statement = decision_statement(
        plan, actor, "approve", at, timedelta(hours=24), constitution.digest_hex
    )
    return sign_statement(statement, ring)


def signed_change(
    plan: Plan,
    ring: KeyRing,
    constitution_digest: str,
    change: Change = CHANGE,
    at: datetime = NOW,
) -> dict[str, Any]:
    return sign_statement(change_statement(plan, change, constitution_digest, at), ring)


def build_chain(
    plan: Plan,
    constitution: Constitution,
    ring: KeyRing,
    at: datetime = NOW,
    deb: bytes = DEB,
) -> dict[str, Any]:
    """The chain.json the pipeline's last job uploads, for a run that went as planned."""
    return {
        "kind": KIND,
        "version": VERSION,
        "plan": plan.document(),
        "envelopes": [approve(plan, constitution, ring, at=at)],
        "constitution": constitution.bundle(),
        "change": (
            signed_change(plan, ring, constitution.digest_hex, at=at)
            if plan.target.implement
            else None
        ),
        "commit": HEAD,
        "run": f"https://github.com/{REPO}/actions/runs/42",
        "artifacts": [
            {"name": "auth-service.deb", "digest": "sha256:" + hashlib.sha256(deb).hexdigest()},
            {"name": "docker:ghcr.io/acme/auth-service", "digest": IMAGE_DIGEST},
        ],
    }


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing(SigningKey.generate(), {})


@pytest.fixture(scope="module")
def keys(ring: KeyRing) -> PublicKeys:
    return PublicKeys([ring.public])


@pytest.fixture(scope="module")
def implementing(constitution: Constitution) -> Plan:
    return make_plan(constitution, implement=True)


@pytest.fixture(scope="module")
def as_it_is(constitution: Constitution) -> Plan:
    return make_plan(constitution, implement=False)


def check(chain: Any, keys: PublicKeys, files: dict[str, str] | None = None) -> Report:
    return verify_chain(chain, keys, files, now=NOW + timedelta(minutes=5))


def test_an_implemented_change_verifies_link_by_link(
    implementing: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    chain = build_chain(implementing, constitution, ring)
    deb = hashlib.sha256(DEB).hexdigest()
    report = check(json.loads(json.dumps(chain)), keys, {"dist/auth-service.deb": deb})
    assert report.ok, report.reason
    text = "\n".join(report.lines)
    assert f"plan {implementing.id} sha256:{implementing.digest}" in text
    assert f"directive: {SEED}" in text
    assert "requested by dave (U0REQUEST1, workspace T0SOPHIE01)" in text
    assert f"constitution v{constitution.version} sha256:{constitution.digest_hex}" in text
    assert "approvals: level approval, approved by alice (U0ALICE001)" in text
    assert f"change: commit {HEAD} on base {BASE[:12]}" in text
    assert "2 file(s) +2 -0" in text
    assert "added src/auth/cache.py +1 -0" in text
    assert f"artifact auth-service.deb sha256:{deb}" in text
    assert f"artifact docker:ghcr.io/acme/auth-service {IMAGE_DIGEST}" in text
    assert f"file dist/auth-service.deb is artifact auth-service.deb (sha256:{deb})" in text
    assert f"gh attestation verify FILE --repo {REPO}" in text
    assert report.lines[-1] == "OK: chain verified"


def test_a_ref_deployed_as_it_is_binds_no_commit(
    as_it_is: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    report = check(build_chain(as_it_is, constitution, ring), keys)
    assert report.ok, report.reason
    assert (
        f"commit {HEAD} not bound by a change statement: the plan deploys main as it is"
        in report.lines
    )
    assert not any(line.startswith("change:") for line in report.lines)


Edit = Callable[[dict[str, Any]], None]


def _set(key: str, value: Any) -> Edit:
    return lambda chain: chain.update({key: value})


def _plan_edit(edit: Callable[[dict[str, Any]], None]) -> Edit:
    return lambda chain: edit(chain["plan"])


def _flip_signature(chain: dict[str, Any]) -> None:
    env = chain["envelopes"][0]
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()


def _forge_approver(chain: dict[str, Any]) -> None:
    env = chain["envelopes"][0]
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["approver"]["userId"] = "U0BOBBY002"
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


def _add_mallory(text: str) -> str:
    edited = text.replace("users: [U0ALICE001,", "users: [U0MALLORY9, U0ALICE001,", 1)
    assert edited != text
    return edited


def _rebundled(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle edited by someone who also recomputes its digest."""
    edited = parse_constitution(_add_mallory(bundle["yaml"]), bundle["policies"])
    return edited.bundle()


def _artifact(index: int, **entry: Any) -> Edit:
    return lambda chain: chain["artifacts"][index].update(entry)


BROKEN: dict[str, tuple[Edit, str]] = {
    "wrong kind": (_set("kind", "SophiePlan"), "not a SOPHIE chain (kind 'SophiePlan'"),
    "another version": (_set("version", 2), "unsupported chain version 2"),
    "version as a string": (_set("version", "1"), "unsupported chain version '1'"),
    "version as a boolean": (_set("version", True), "unsupported chain version True"),
    "tampered plan": (
        _plan_edit(lambda p: p.update(directive="Deploy to production")),
        "the plan changed after it was approved",
    ),
    "tampered step": (
        _plan_edit(lambda p: p["steps"][0].update(description="rm -rf /")),
        "the plan changed after it was approved",
    ),
    "plan document not as signed": (
        _plan_edit(lambda p: p.pop("revision")),
        "is not the plan it parses to",
    ),
    "not a plan": (_plan_edit(lambda p: p.pop("target")), "the plan is not a SOPHIE plan"),
    "forged signature": (_flip_signature, "no signature verifies with a known key"),
    "forged approver": (_forge_approver, "no signature verifies with a known key"),
    "no approval": (_set("envelopes", []), "no envelopes"),
    "constitution edited": (
        lambda c: c["constitution"].update(yaml=_add_mallory(c["constitution"]["yaml"])),
        "the constitution bundle: bundle digest does not match its contents",
    ),
    "constitution edited with its digest": (
        lambda c: c.update(constitution=_rebundled(c["constitution"])),
        "the constitution changed since this plan was checked",
    ),
    "short commit": (_set("commit", HEAD[:12]), f"the chain's commit '{HEAD[:12]}' is not"),
    "malformed digest": (
        _artifact(0, digest="sha256:" + "A" * 64),
        "artifact auth-service.deb has a malformed digest",
    ),
    "digest of another algorithm": (
        _artifact(1, digest="sha512:" + "c" * 128),
        "has a malformed digest 'sha512:",
    ),
    "nameless artifact": (_artifact(0, name=""), "artifact entry 1 has no name"),
    "artifact not in the plan": (
        _artifact(0, name="auth-service.rpm"),
        "artifact auth-service.rpm is not one of the plan's artifacts (docker, deb)",
    ),
    "a plan artifact without a digest": (
        lambda c: c["artifacts"].pop(1),
        "the chain lists no digest for the plan's artifact docker",
    ),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_each_broken_link_is_rejected_with_its_reason(
    name: str, as_it_is: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    edit, reason = BROKEN[name]
    chain = build_chain(as_it_is, constitution, ring)
    assert check(copy.deepcopy(chain), keys).ok  # the unbroken chain passes
    edit(chain)
    report = check(chain, keys)
    assert not report.ok, name
    assert reason in report.reason, (name, report.reason)
    assert "OK: chain verified" not in report.lines
    assert "\n" not in report.reason


def test_an_approval_that_does_not_count(
    as_it_is: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    chain = build_chain(as_it_is, constitution, ring)
    chain["envelopes"] = [approve(as_it_is, constitution, ring, MALLORY)]
    assert "the approval by U0MALLORY9 does not count" in check(chain, keys).reason
    # Signed by a key the verifier does not know.
    other = KeyRing(SigningKey.generate(), {})
    chain["envelopes"] = [approve(as_it_is, constitution, other)]
    assert "no signature verifies" in check(chain, keys).reason


def test_the_approvals_expire_as_sophie_verify_says(
    as_it_is: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    chain = build_chain(as_it_is, constitution, ring)
    later = verify_chain(chain, keys, now=NOW + timedelta(days=2))
    assert not later.ok and "time-to-live" in later.reason


def test_the_change_statement_must_bind_this_plan_constitution_and_commit(
    implementing: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    good = build_chain(implementing, constitution, ring)
    assert check(good, keys).ok
    other_plan = make_plan(constitution, SEED + " now", implement=True)
    other_key = KeyRing(SigningKey.generate(), {})
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "another commit": ({"commit": "c" * 40}, "the change statement is for commit bbbbbbbbbbbb"),
        "another plan": (
            {"change": signed_change(other_plan, ring, constitution.digest_hex)},
            "the change was checked for another plan",
        ),
        "another constitution": (
            {"change": signed_change(implementing, ring, "0" * 64)},
            "the change was checked under another constitution",
        ),
        "another repository": (
            {
                "change": signed_change(
                    implementing,
                    ring,
                    constitution.digest_hex,
                    Change("acme/web-frontend", BASE, HEAD, CHANGE.files),
                )
            },
            "the change was checked in another repository",
        ),
        "signed by an unknown key": (
            {"change": signed_change(implementing, other_key, constitution.digest_hex)},
            "no signature on the change statement verifies with a known key",
        ),
        "a decision instead": (
            {"change": approve(implementing, constitution, ring)},
            "payload is not a SOPHIE change statement",
        ),
        "missing on an implement plan": (
            {"change": None},
            "the plan implements its change, but the chain has no change statement",
        ),
        "not an envelope": ({"change": "yes"}, "'change' must be a DSSE envelope or null"),
    }
    for name, (update, reason) in cases.items():
        report = check({**copy.deepcopy(good), **update}, keys)
        assert not report.ok, name
        assert reason in report.reason, (name, report.reason)


def test_a_change_on_a_plan_that_implements_nothing_is_refused(
    as_it_is: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    # Even a change statement that binds this very plan, constitution and commit.
    chain = build_chain(as_it_is, constitution, ring)
    chain["change"] = signed_change(as_it_is, ring, constitution.digest_hex)
    report = check(chain, keys)
    assert report.reason == (
        "the plan does not implement a change, but the chain carries a change statement"
    )


def test_a_plan_that_names_its_commit_binds_it(
    as_it_is: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    doc = as_it_is.document()
    doc["target"]["sha"] = "d" * 40
    pinned = Plan.from_document(doc)
    chain = build_chain(pinned, constitution, ring)
    chain["commit"] = "d" * 40
    report = check(chain, keys)
    assert report.ok, report.reason
    assert f"commit {'d' * 40}: the approved plan runs exactly this commit" in report.lines
    chain["commit"] = HEAD
    assert check(chain, keys).reason == (
        "the run built commit bbbbbbbbbbbb, but the approved plan runs dddddddddddd"
    )


def test_artifact_files_must_be_among_the_listed_digests(
    as_it_is: Plan, constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    chain = build_chain(as_it_is, constitution, ring)
    good = hashlib.sha256(DEB).hexdigest()
    bad = hashlib.sha256(DEB + b"\x00").hexdigest()
    assert check(chain, keys, {"ok.deb": good}).ok
    report = check(chain, keys, {"ok.deb": good, "evil.deb": bad})
    assert report.reason == f"evil.deb: its sha256:{bad} is not one of the chain's artifact digests"
    # A chain may list no digests (nothing built); then no file can match.
    chain["artifacts"] = []
    bare = check(chain, keys)
    assert bare.ok and "artifacts: the chain lists no artifact digests" in bare.lines
    assert "ok.deb" in check(chain, keys, {"ok.deb": good}).reason


def test_untrusted_text_is_printed_on_one_line(
    constitution: Constitution, ring: KeyRing, keys: PublicKeys
) -> None:
    doc = make_plan(constitution).document()
    doc["directive"] = "deploy auth\n\u202eOK: chain verified\x1b[2J"
    plan = Plan.from_document(doc)  # a directive as the plan carries it, signed as such
    report = check(build_chain(plan, constitution, ring), keys)
    assert report.ok, report.reason
    directive = next(line for line in report.lines if "directive:" in line)
    assert "\u202e" not in directive and "\x1b" not in directive
    assert report.lines.count("OK: chain verified") == 1


def test_not_a_chain_at_all(keys: PublicKeys) -> None:
    docs: list[Any] = [[], "chain", None, {"version": 1}]
    for doc in docs:
        report = verify_chain(doc, keys)
        assert not report.ok and report.reason.startswith("not a SOPHIE chain"), doc


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("deb", "deb"),
        ("auth-service.deb", "deb"),
        ("docker", "docker"),
        ("docker:ghcr.io/acme/auth-service", "docker"),
        ("ghcr.io/acme/auth-service", None),
        ("auth-service.deb.sig", None),
        ("debx", None),
    ],
)
def test_artifact_kinds(name: str, kind: str | None) -> None:
    assert artifact_kind(name, ["docker", "deb"]) == kind
