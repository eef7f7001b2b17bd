"""Decisions and checked changes as DSSE envelopes over in-toto Statement v1.

The crypto itself (Ed25519) is behind the :class:`roles.ports.Signer` port;
this module fixes the bytes that get signed, so anyone with the public key
can check a decision outside SOPHIE.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from roles.canonical import canonical_json
from roles.change_check import Change
from roles.plan import Plan
from roles.records import Actor, Decision

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://sophie.dev/attestations/decision/v1"


class _Signs(Protocol):
    @property
    def keyid(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, keyid: str, data: bytes, signature: bytes) -> bool: ...


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def decision_statement(
    plan: Plan,
    actor: Actor,
    decision: Decision,
    at: datetime,
    ttl: timedelta,
    constitution_digest: str,
    rule: str = "",
    groups: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"sophie-plan:{plan.id}", "digest": {"sha256": plan.digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "planId": plan.id,
            "repo": plan.target.repo,
            "workflow": plan.target.workflow,
            "environment": plan.target.environment,
            "ref": plan.target.ref,
            "action": plan.target.action,
            "sha": plan.target.sha,
            "artifacts": list(plan.artifacts),
            "approvalLevel": plan.approval.level.value,
            "approver": {
                "teamId": actor.team_id,
                "enterpriseId": actor.enterprise_id,
                "userId": actor.user_id,
                "name": actor.name,
                "groups": list(groups),
            },
            "decision": decision,
            "decidedAt": at.isoformat(),
            "expiresAt": (at + ttl).isoformat(),
            "constitutionDigest": constitution_digest,
            "rule": rule,
        },
    }


def sign_statement(statement: dict[str, Any], signer: _Signs) -> dict[str, Any]:
    payload = canonical_json(statement)
    sig = signer.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": signer.keyid, "sig": base64.b64encode(sig).decode()}],
    }


class EnvelopeError(ValueError):
    """The envelope is malformed or its signature does not verify."""


@dataclass(frozen=True)
class VerifiedDecision:
    statement: dict[str, Any]
    keyid: str

    @property
    def predicate(self) -> dict[str, Any]:
        return dict(self.statement["predicate"])

    @property
    def subject_digest(self) -> str:
        return str(self.statement["subject"][0]["digest"]["sha256"])


def open_statement(
    envelope: Any, verifier: Verifier, predicate_type: str, what: str, label: str = ""
) -> VerifiedDecision:
    """Verify a DSSE envelope's signature and return its in-toto statement, which must
    carry ``predicate_type`` (``what`` names it in the error; ``label``, when given,
    names the envelope in the others, as the pipeline's verifier words them)."""
    noun = label or "envelope"
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = envelope["signatures"]
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError(f"malformed {noun}: {exc}") from exc
    if payload_type != PAYLOAD_TYPE:
        raise EnvelopeError(f"unexpected payloadType {payload_type!r}")
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeError(f"{noun} has no signatures")
    message = pae(payload_type, payload)
    for sig in sigs:
        try:
            raw = base64.b64decode(sig["sig"], validate=True)
            keyid = str(sig["keyid"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvelopeError(f"malformed signature: {exc}") from exc
        if verifier.verify(keyid, message, raw):
            try:
                statement = json.loads(payload)
            except ValueError as exc:
                raise EnvelopeError("payload is not JSON") from exc
            if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
                raise EnvelopeError("payload is not an in-toto Statement v1")
            if statement.get("predicateType") != predicate_type:
                raise EnvelopeError(f"payload is not {what}")
            return VerifiedDecision(statement=statement, keyid=keyid)
    on = f" on the {label}" if label else ""
    raise EnvelopeError(f"no signature{on} verifies with a known key")


def open_envelope(envelope: dict[str, Any], verifier: Verifier) -> VerifiedDecision:
    """Verify a decision envelope's signature and return its statement."""
    return open_statement(envelope, verifier, PREDICATE_TYPE, "a SOPHIE decision")


# -- a decision on a produced change (the second card) --------------------------------

# Its own type: an approval of a diff can never be counted as an approval of a plan.
CHANGE_DECISION_PREDICATE_TYPE = "https://sophie.dev/attestations/change-decision/v1"


def change_decision_statement(
    plan: Plan,
    change_digest: str,
    commit: str,
    actor: Actor,
    decision: Decision,
    at: datetime,
    ttl: timedelta,
    constitution_digest: str,
    rule: str = "",
    groups: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A decision on the change Δ checked for ``plan``: the plan's decision predicate,
    plus the change's digest and commit (also a subject)."""
    statement = decision_statement(
        plan, actor, decision, at, ttl, constitution_digest, rule, groups
    )
    statement["predicateType"] = CHANGE_DECISION_PREDICATE_TYPE
    commit_subject = {"name": f"git:{plan.target.repo}", "digest": {"gitCommit": commit}}
    statement["subject"].append(commit_subject)
    statement["predicate"].update({"changeDigest": change_digest, "commitSha": commit})
    return statement


def open_change_decision(envelope: dict[str, Any], verifier: Verifier) -> VerifiedDecision:
    """Verify a change decision's signature and return its statement."""
    return open_statement(
        envelope, verifier, CHANGE_DECISION_PREDICATE_TYPE, "a SOPHIE change decision"
    )


# -- the change statement: plan digest → the commit Δ checked -----------------------

CHANGE_PREDICATE_TYPE = "https://sophie.dev/attestations/change/v1"


def change_statement(
    plan: Plan, change: Change, constitution_digest: str, at: datetime
) -> dict[str, Any]:
    """In-toto Statement v1 that Δ checked ``change`` for ``plan`` and it passed.

    Subjects: the plan (sha256 of its document) and the commit (``gitCommit``, a digest
    name the in-toto DigestSet spec defines for git objects). The predicate binds plan
    id and digest to repo, base and commit shas, the diff stat, the digest of the
    change as checked (what a second card approves) and the constitution's digest.
    """
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": f"sophie-plan:{plan.id}", "digest": {"sha256": plan.digest}},
            {"name": f"git:{change.repo}", "digest": {"gitCommit": change.head_sha}},
        ],
        "predicateType": CHANGE_PREDICATE_TYPE,
        "predicate": {
            "planId": plan.id,
            "planDigest": plan.digest,
            "repo": change.repo,
            "baseSha": change.base_sha,
            "commitSha": change.head_sha,
            "diffStat": change.stat(),
            "files": [
                {
                    "path": f.path,
                    "status": f.status,
                    "additions": f.additions,
                    "deletions": f.deletions,
                }
                for f in change.files
            ],
            "changeDigest": change.digest(),
            "constitutionDigest": constitution_digest,
            "checkedAt": at.isoformat(),
        },
    }


@dataclass(frozen=True)
class VerifiedChange:
    statement: dict[str, Any]
    keyid: str

    @property
    def predicate(self) -> dict[str, Any]:
        return dict(self.statement["predicate"])


def open_change_envelope(envelope: Any, verifier: Verifier) -> VerifiedChange:
    """Verify a change statement's signature and return it (raises EnvelopeError)."""
    verified = open_statement(
        envelope, verifier, CHANGE_PREDICATE_TYPE, "a SOPHIE change statement", "change statement"
    )
    if not isinstance(verified.statement.get("predicate"), dict):
        raise EnvelopeError("change statement has no predicate")
    return VerifiedChange(statement=verified.statement, keyid=verified.keyid)


def change_binding_problem(
    statement: dict[str, Any], plan: Plan, constitution_digest: str, commit: str
) -> str:
    """ "" when a verified change statement binds this plan to ``commit``; else why not."""
    pred = statement["predicate"]
    subjects = statement.get("subject")
    if not isinstance(subjects, list):
        return "the change statement names no subject"
    digests = {
        str(s["digest"].get("sha256"))
        for s in subjects
        if isinstance(s, dict) and isinstance(s.get("digest"), dict)
    }
    if pred.get("planId") != plan.id:
        return "the change was checked for another plan"
    if plan.digest not in digests or pred.get("planDigest") != plan.digest:
        return "the plan changed after its change was checked"
    if pred.get("repo") != plan.target.repo:
        return "the change was checked in another repository"
    if pred.get("constitutionDigest") != constitution_digest:
        return "the change was checked under another constitution"
    commits = {
        str(s["digest"].get("gitCommit"))
        for s in subjects
        if isinstance(s, dict) and isinstance(s.get("digest"), dict)
    }
    if not commit or pred.get("commitSha") != commit or commit not in commits:
        return f"the change statement is for commit {str(pred.get('commitSha'))[:12]}, not this one"
    return ""
