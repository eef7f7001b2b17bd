"""Signed decisions: DSSE over in-toto, bound to the plan, verifiable outside SOPHIE."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from bot.signer import KeyRing, keyid_for, load_keyring, public_pem
from bot.verify import PublicKeys, verify
from roles import approvals, diff_engine, integrator, navigator
from roles.attestation import (
    PAYLOAD_TYPE,
    EnvelopeError,
    decision_statement,
    open_envelope,
    pae,
    sign_statement,
)
from roles.constitution import Constitution, load_constitution
from roles.offline_planner import OfflinePlanner
from roles.plan import Plan
from roles.records import Actor, DecisionRecord, PlanRecord, PlanStatus, Thread

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ALICE = Actor("T0SOPHIE01", "U0ALICE001", "alice")
BOB = Actor("T0SOPHIE01", "U0BOBBY002", "bob")


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


@pytest.fixture()
def ring() -> KeyRing:
    return KeyRing(SigningKey.generate(), {})


async def make_plan(constitution: Constitution, text: str) -> Plan:
    reading = navigator.interpret(text, constitution)
    proposal = await OfflinePlanner().propose(reading, constitution, [])
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, proposal.confidence)
    return integrator.assemble(
        integrator.plan_id_for(text),
        NOW,
        reading,
        Actor("T0SOPHIE01", "U0REQUEST1"),
        proposal,
        verdict,
        constitution,
    )


def decision(
    plan: Plan, constitution: Constitution, ring: KeyRing, actor: Actor, at: datetime = NOW
) -> DecisionRecord:
    statement = decision_statement(
        plan, actor, "approve", at, timedelta(hours=24), constitution.digest_hex
    )
    return DecisionRecord(
        actor=actor, decision="approve", at=at, envelope=sign_statement(statement, ring)
    )


def test_pae_matches_the_dsse_spec() -> None:
    # The example from the DSSE v1 protocol document.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


async def test_envelope_round_trip_and_statement_shape(
    constitution: Constitution, ring: KeyRing
) -> None:
    plan = await make_plan(constitution, "Add caching to auth and deploy to staging")
    env = decision(plan, constitution, ring, ALICE).envelope
    assert env["payloadType"] == PAYLOAD_TYPE
    assert env["signatures"][0]["keyid"] == ring.keyid
    verified = open_envelope(env, ring)
    st = verified.statement
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["subject"][0]["digest"]["sha256"] == plan.digest
    pred = verified.predicate
    assert pred["approver"] == {
        "teamId": "T0SOPHIE01",
        "enterpriseId": "",
        "userId": "U0ALICE001",
        "name": "alice",
        "groups": [],
    }
    assert (pred["action"], pred["sha"], pred["artifacts"]) == ("deploy", "", plan.artifacts)
    assert (pred["repo"], pred["environment"], pred["ref"]) == (
        "acme/auth-service",
        "staging",
        "main",
    )
    assert pred["constitutionDigest"] == constitution.digest_hex


async def test_tampering_is_detected(constitution: Constitution, ring: KeyRing) -> None:
    plan = await make_plan(constitution, "deploy auth to staging")
    env = decision(plan, constitution, ring, ALICE).envelope
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["predicate"]["environment"] = "production"
    forged = {**env, "payload": base64.b64encode(json.dumps(payload).encode()).decode()}
    with pytest.raises(EnvelopeError):
        open_envelope(forged, ring)
    with pytest.raises(EnvelopeError):
        open_envelope({**env, "payloadType": "application/json"}, ring)
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    bad_sig = {
        **env,
        "signatures": [{**env["signatures"][0], "sig": base64.b64encode(bytes(sig)).decode()}],
    }
    with pytest.raises(EnvelopeError):
        open_envelope(bad_sig, ring)
    other = KeyRing(SigningKey.generate(), {})
    with pytest.raises(EnvelopeError):
        open_envelope(env, other)


def _why(record: PlanRecord, constitution: Constitution, ring: Any, now: datetime) -> str | None:
    counted = approvals.tally(record.plan, record.decisions, constitution, ring, now)
    return None if counted.complete else counted.reason


async def test_quorum_binds_to_plan_target_and_constitution(
    constitution: Constitution, ring: KeyRing
) -> None:
    plan = await make_plan(constitution, "deploy auth to staging")
    record = PlanRecord(
        plan=plan,
        status=PlanStatus.PENDING,
        thread=Thread("C1", "1.0"),
        decisions=[decision(plan, constitution, ring, ALICE)],
    )
    assert _why(record, constitution, ring, NOW) is None
    # The same approval over an edited plan no longer counts.
    edited = Plan.from_document({**plan.document(), "directive": "something else"})
    record_edited = PlanRecord(
        plan=edited, status=PlanStatus.PENDING, thread=record.thread, decisions=record.decisions
    )
    assert "changed" in (_why(record_edited, constitution, ring, NOW) or "")
    # Expired after the time-to-live.
    later = NOW + timedelta(hours=25)
    assert "time-to-live" in (_why(record, constitution, ring, later) or "")
    # A constitution edit voids it.
    bumped = constitution.model_copy(update={"version": constitution.version + 1})
    assert "constitution" in (_why(record, bumped, ring, NOW) or "")


async def test_supervision_needs_distinct_approvers(
    constitution: Constitution, ring: KeyRing
) -> None:
    plan = await make_plan(constitution, "deploy auth to production")
    one = PlanRecord(
        plan=plan,
        status=PlanStatus.PENDING,
        thread=Thread("C1", "1.0"),
        decisions=[decision(plan, constitution, ring, ALICE)],
    )
    assert _why(one, constitution, ring, NOW) == "1 more approver"
    two = PlanRecord(
        plan=plan,
        status=PlanStatus.PENDING,
        thread=Thread("C1", "1.0"),
        decisions=[
            decision(plan, constitution, ring, ALICE),
            decision(plan, constitution, ring, BOB),
        ],
    )
    assert _why(two, constitution, ring, NOW) is None


async def test_refusals(constitution: Constitution) -> None:
    plan = await make_plan(constitution, "deploy auth to staging")
    stranger = Actor("T0SOPHIE01", "U0MALLORY9")
    assert "not an approver" in (
        approvals.may_decide(constitution, plan, [], stranger, set(), "approve") or ""
    )
    sre = Actor("T0SOPHIE01", "U0SREPERS1")
    assert approvals.may_decide(constitution, plan, [], sre, {"S0SRETEAM1"}, "approve") is None
    requester_is_approver = Actor("T0SOPHIE01", "U0REQUEST1")
    assert "separation of duties" in (
        approvals.may_decide(
            constitution, plan, [], requester_is_approver, {"S0SRETEAM1"}, "approve"
        )
        or ""
    )


async def test_offline_verifier_and_cli_module(constitution: Constitution, ring: KeyRing) -> None:
    plan = await make_plan(constitution, "deploy auth to staging")
    env = decision(plan, constitution, ring, ALICE).envelope
    assert verify([env], plan, constitution, PublicKeys([ring.public]), NOW) is None
    stranger = PublicKeys([bytes(SigningKey.generate().verify_key)])
    assert "no signature verifies" in (verify([env], plan, constitution, stranger, NOW) or "")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
async def test_openssl_verifies_the_signature(
    constitution: Constitution, ring: KeyRing, tmp_path: Path
) -> None:
    plan = await make_plan(constitution, "deploy auth to staging")
    env = decision(plan, constitution, ring, ALICE).envelope
    (tmp_path / "pub.pem").write_text(public_pem(ring.public))
    (tmp_path / "msg").write_bytes(pae(env["payloadType"], base64.b64decode(env["payload"])))
    (tmp_path / "sig").write_bytes(base64.b64decode(env["signatures"][0]["sig"]))
    cmd = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(tmp_path / "pub.pem"),
        "-rawin",
        "-in",
        str(tmp_path / "msg"),
        "-sigfile",
        str(tmp_path / "sig"),
    ]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "msg").write_bytes(b"tampered")
    assert subprocess.run(cmd, capture_output=True).returncode != 0


def test_generated_key_is_private_and_stable(tmp_path: Path) -> None:
    first = load_keyring(None, None, tmp_path)
    assert (tmp_path / "signing.key").stat().st_mode & 0o777 == 0o600
    assert load_keyring(None, None, tmp_path).keyid == first.keyid
    seed = base64.b64encode(bytes(first.signing)).decode()
    assert load_keyring(seed, None, tmp_path / "other").keyid == first.keyid


def _sslib_key(ring: KeyRing | bytes) -> Any:
    from securesystemslib.signer._key import SSlibKey

    public = ring if isinstance(ring, bytes) else ring.public
    keyid = keyid_for(public)
    return SSlibKey(keyid, "ed25519", "ed25519", {"public": public.hex()})


async def test_securesystemslib_verifies_the_envelope_and_refuses_tampering(
    constitution: Constitution, ring: KeyRing
) -> None:
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    plan = await make_plan(constitution, "deploy auth to staging")
    good = decision(plan, constitution, ring, ALICE).envelope
    verified = Envelope.from_dict(copy.deepcopy(good)).verify([_sslib_key(ring)], 1)
    assert list(verified) == [keyid_for(ring.public)]

    statement = json.loads(base64.b64decode(good["payload"]))
    statement["predicate"]["approver"]["userId"] = "U0MALLORY9"
    forged_payload = base64.b64encode(json.dumps(statement).encode()).decode()
    flipped = bytearray(base64.b64decode(good["signatures"][0]["sig"]))
    flipped[0] ^= 1
    tampered = [
        {**good, "payload": forged_payload},
        {**good, "payloadType": "application/json"},
        {
            **good,
            "signatures": [{**good["signatures"][0], "sig": base64.b64encode(flipped).decode()}],
        },
    ]
    for envelope in tampered:
        with pytest.raises(VerificationError):
            Envelope.from_dict(copy.deepcopy(envelope)).verify([_sslib_key(ring)], 1)
        with pytest.raises(EnvelopeError):
            open_envelope(envelope, ring)
    other = bytes(SigningKey.generate().verify_key)
    with pytest.raises(VerificationError):
        Envelope.from_dict(copy.deepcopy(good)).verify([_sslib_key(other)], 1)


async def test_envelopes_signed_by_securesystemslib_verify_in_sophie(
    constitution: Constitution, ring: KeyRing
) -> None:
    # The other direction: our PAE and encoding match the reference implementation.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer._crypto_signer import CryptoSigner

    plan = await make_plan(constitution, "deploy auth to staging")
    statement = decision_statement(
        plan, ALICE, "approve", NOW, timedelta(hours=24), constitution.digest_hex
    )
    private = Ed25519PrivateKey.from_private_bytes(bytes(ring.signing))
    signer = CryptoSigner(private, _sslib_key(ring))
    envelope = Envelope(json.dumps(statement).encode(), PAYLOAD_TYPE, {})
    envelope.sign(signer)
    opened = open_envelope(envelope.to_dict(), ring)
    assert opened.subject_digest == plan.digest
