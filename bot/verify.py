"""`sophie verify`: check a plan's signed decisions (and, with ``--change``, the signed
statement that Δ checked the commit) outside the bot: what a workflow runs."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from bot.signer import keyid_for
from roles import approvals
from roles.attestation import (
    EnvelopeError,
    change_binding_problem,
    open_change_envelope,
    open_envelope,
)
from roles.constitution import Constitution
from roles.plan import Plan
from roles.records import Actor, DecisionRecord


class PublicKeys:
    """A verifier over known public keys only (no signing key needed)."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = {keyid_for(k): VerifyKey(k) for k in keys}

    def verify(self, keyid: str, data: bytes, signature: bytes) -> bool:
        key = self.keys.get(keyid)
        if key is None:
            return False
        try:
            key.verify(data, signature)
        except (BadSignatureError, ValueError):
            return False
        return True


def read_json_or_base64(text: str) -> Any:
    """Workflows pass plans and envelopes as base64 inputs; people pass files of JSON/YAML."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        return json.loads(stripped)
    try:
        return json.loads(base64.b64decode(stripped, validate=True))
    except (binascii.Error, ValueError):
        return yaml.safe_load(stripped)


def load_keys(source: str) -> list[bytes]:
    """Keys from /.well-known/sophie/keys JSON (file) or one base64 public key."""
    path = Path(source)
    if path.exists():
        data = json.loads(path.read_text())
        return [base64.b64decode(k["public_key_base64"]) for k in data["keys"]]
    return [base64.b64decode(source)]


def count_decisions(
    envelopes: list[dict[str, Any]],
    plan: Plan,
    constitution: Constitution,
    verifier: PublicKeys,
    now: datetime | None = None,
) -> tuple[approvals.Tally, list[DecisionRecord]]:
    """What the envelopes add up to for this plan (``approvals.tally``), and the decisions
    they carry: what ``verify`` judges and ``sophie verify --chain`` also prints."""
    now = now or datetime.now(UTC)
    decisions = []
    for envelope in envelopes:
        try:
            pred = open_envelope(envelope, verifier).predicate
        except EnvelopeError as exc:
            return approvals.Tally(False, str(exc)), []
        try:
            who = pred["approver"]
            decisions.append(
                DecisionRecord(
                    actor=Actor(team_id=who["teamId"], user_id=who["userId"], name=who["name"]),
                    decision=pred["decision"],
                    at=datetime.fromisoformat(pred["decidedAt"]),
                    envelope=envelope,
                    groups=tuple(who.get("groups", ())),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return approvals.Tally(False, "a signed decision is malformed"), []
    if not decisions:
        return approvals.Tally(False, "no envelopes"), []
    return approvals.tally(plan, decisions, constitution, verifier, now), decisions


def verify(
    envelopes: list[dict[str, Any]],
    plan: Plan,
    constitution: Constitution,
    verifier: PublicKeys,
    now: datetime | None = None,
) -> str | None:
    """None when the envelopes authorise exactly this plan; otherwise the reason."""
    counted, _ = count_decisions(envelopes, plan, constitution, verifier, now)
    return None if counted.complete else counted.reason


def verify_change(
    envelope: dict[str, Any],
    plan: Plan,
    constitution: Constitution,
    verifier: PublicKeys,
    commit: str,
) -> str | None:
    """None when the signed change statement binds this plan to ``commit``; else why not.

    What the deploy job checks besides the decisions: Δ checked the diff that produced
    ``commit`` for exactly this plan under this constitution.
    """
    try:
        opened = open_change_envelope(envelope, verifier)
    except EnvelopeError as exc:
        return str(exc)
    return change_binding_problem(opened.statement, plan, constitution.digest_hex, commit) or None
