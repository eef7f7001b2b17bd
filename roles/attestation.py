"""Decisions as DSSE envelopes over in-toto Statement v1.

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
            "approvalLevel": plan.approval.level.value,
            "approver": {
                "teamId": actor.team_id,
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


def open_envelope(envelope: dict[str, Any], verifier: Verifier) -> VerifiedDecision:
    """Verify the envelope's signature and return its statement."""
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = envelope["signatures"]
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError(f"malformed envelope: {exc}") from exc
    if payload_type != PAYLOAD_TYPE:
        raise EnvelopeError(f"unexpected payloadType {payload_type!r}")
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeError("envelope has no signatures")
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
            if statement.get("_type") != STATEMENT_TYPE:
                raise EnvelopeError("payload is not an in-toto Statement v1")
            if statement.get("predicateType") != PREDICATE_TYPE:
                raise EnvelopeError("payload is not a SOPHIE decision")
            return VerifiedDecision(statement=statement, keyid=keyid)
    raise EnvelopeError("no signature verifies with a known key")
