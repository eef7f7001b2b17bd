#!/usr/bin/env python3
"""Verify a SOPHIE plan's signed decisions inside a workflow, with nothing but Python 3.9+.

Copy this file to ``.github/sophie/verify.py`` in the repository SOPHIE deploys; the
pipeline template checks its sha256 before running it. It needs no network, no SOPHIE
and no packages: it is the offline twin of ``sophie verify`` and must agree with it
(SOPHIE's test suite runs both on the same good and tampered inputs).

    python3 verify.py ENVELOPES --plan PLAN --keys KEYS --constitution BUNDLE \\
        [--expect-digest SHA256] [--change STATEMENT --commit SHA] \\
        [--action ACTION --environment ENV --artifacts CSV --deploy-sha SHA --run-sha SHA
         [--plan-id ID] [--repo OWNER/NAME] [--ref REF]]

ENVELOPES, PLAN: files (or inline text) of JSON or base64 JSON, as the dispatch inputs
carry them. KEYS: SOPHIE's published keys (``/.well-known/sophie/keys`` JSON) or one
base64 Ed25519 public key. BUNDLE: the constitution bundle SOPHIE sends with the plan
(``yaml`` holds the rules as canonical JSON, ``policies`` the Rego files).

What is checked, as SOPHIE's ``roles/approvals.py`` does: DSSE envelopes over in-toto
Statement v1, Ed25519 signatures by a known key; each decision bound to this plan's
digest (sha256 of RFC 8785 JSON), target, what runs, the constitution's digest and an
expiry; the plan's constitution is the bundle's; the plan's approval time-to-live; each
approver authorised by the constitution, from the plan's workspace, not the requester
when separation of duties says so, counted once; the quorum and the distinct groups of
the plan's level. With ``--change`` (the deploy of a generated change), also the signed
change statement: SOPHIE checked the diff that produced ``--commit`` for this plan (its
digest and id), in this repository, under this constitution. With ``--action`` (the
pipeline always passes it), also that what the workflow was asked to run is what the plan
says (:func:`run_problem`): the dispatch inputs, the commit the run is on and its ref.
Exit status: 0 authorised, 1 rejected, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import math
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://sophie.dev/attestations/decision/v1"
CHANGE_PREDICATE_TYPE = "https://sophie.dev/attestations/change/v1"
BOT_TEAM = "sophie"
MIN_QUORUM = {"approval": 1, "supervision": 2}


class Unreadable(ValueError):
    """An input that cannot be read (exit 2)."""


# -- RFC 8785 JSON Canonicalization Scheme (the algorithm of the `rfc8785` package) ---------

_ESCAPE = re.compile(r'[\x00-\x1f\\"\b\f\n\r\t]')
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
for _i in range(0x20):
    _ESCAPES.setdefault(chr(_i), f"\\u{_i:04x}")


def _jcs_str(s: str) -> str:
    return '"' + _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], s) + '"'


def _jcs_float(f: float) -> str:
    """ECMA-262 Number::toString as RFC 8785 3.2.2.3 requires: the algorithm of the
    `rfc8785` package SOPHIE signs with (after Anders Rundgren's reference code)."""
    if math.isnan(f) or math.isinf(f):
        raise Unreadable(f"{f} is not representable in JSON")
    if f == 0:
        return "0"
    if f < 0:
        return "-" + _jcs_float(-f)
    text = str(f)
    exponent_str, exponent = "", 0
    q = text.find("e")
    if q > 0:
        exponent_str = text[q:]
        if exponent_str[2:3] == "0":
            exponent_str = exponent_str[:2] + exponent_str[3:]
        text = text[:q]
        exponent = int(exponent_str[1:])
    first, dot, last = text, "", ""
    q = text.find(".")
    if q > 0:
        first, dot, last = text[:q], ".", text[q + 1 :]
    if last == "0":
        dot, last = "", ""
    if 0 < exponent < 21:
        first, last, dot, exponent_str = first + last, "", "", ""
        q = exponent - len(first)
        while q >= 0:
            q -= 1
            first += "0"
    elif -7 < exponent < 0:
        last, first, dot, exponent_str = first + last, "0", ".", ""
        q = exponent
        while q < -1:
            q += 1
            last = "0" + last
    return f"{first}{dot}{last}{exponent_str}"


def canonical_json(doc: Any) -> bytes:
    return _jcs(doc).encode("utf-8")


def _jcs(doc: Any) -> str:
    if doc is None:
        return "null"
    if doc is True:
        return "true"
    if doc is False:
        return "false"
    if isinstance(doc, int):
        if abs(doc) > 2**53 - 1:
            raise Unreadable(f"{doc} exceeds the integers JSON numbers hold exactly")
        return str(doc)
    if isinstance(doc, float):
        return _jcs_float(doc)
    if isinstance(doc, str):
        return _jcs_str(doc)
    if isinstance(doc, (list, tuple)):
        return "[" + ",".join(_jcs(v) for v in doc) + "]"
    if isinstance(doc, dict):
        items = sorted(doc.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(_jcs_str(k) + ":" + _jcs(v) for k, v in items) + "}"
    raise Unreadable(f"unsupported type {type(doc).__name__}")


def digest_of(doc: Any) -> str:
    return hashlib.sha256(canonical_json(doc)).hexdigest()


# -- Ed25519 verification (RFC 8032 section 5.1.7, with libsodium's strictness) --------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _add(a: _Point, b: _Point) -> _Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * t1 * t2 * _D % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(scalar: int, point: _Point) -> _Point:
    result: _Point = (0, 1, 1, 0)
    while scalar > 0:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _same(a: _Point, b: _Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _decode(raw: bytes) -> _Point | None:
    """A point from its 32-byte encoding; None unless the encoding is canonical."""
    if len(raw) != 32:
        return None
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        if sign:
            return None
        return (0, y, 1, 0)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


_BY = 4 * pow(5, _P - 2, _P) % _P
_BASE = _decode(_BY.to_bytes(32, "little"))
assert _BASE is not None
_B: _Point = _BASE
_IDENTITY: _Point = (0, 1, 1, 0)


def _small_order(point: _Point) -> bool:
    return _same(_mul(8, point), _IDENTITY)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(public) != 32 or len(signature) != 64:
        return False
    a, r = _decode(public), _decode(signature[:32])
    if a is None or r is None or _small_order(a) or _small_order(r):
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _L
    return _same(_mul(s, _B), _add(r, _mul(k, a)))


def keyid_for(public: bytes) -> str:
    return "sophie-ed25519-" + hashlib.sha256(public).hexdigest()[:16]


# -- inputs ----------------------------------------------------------------------------------


def _text(value: str) -> str:
    if len(value) < 4096 and os.path.exists(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    return value


def read_json_or_base64(value: str) -> Any:
    stripped = _text(value).strip()
    try:
        if stripped[:1] in ("{", "["):
            return json.loads(stripped)
        return json.loads(base64.b64decode(stripped, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise Unreadable(f"not JSON or base64 JSON: {exc}") from exc


def load_keys(value: str) -> dict[str, bytes]:
    text = _text(value).strip()
    try:
        if text.startswith("{"):
            keys = [base64.b64decode(k["public_key_base64"]) for k in json.loads(text)["keys"]]
        else:
            keys = [base64.b64decode(text, validate=True)]
    except (KeyError, TypeError, binascii.Error, ValueError) as exc:
        raise Unreadable(f"keys: {exc}") from exc
    return {keyid_for(k): k for k in keys}


def constitution_of(bundle: Any) -> tuple[dict[str, Any], str]:
    """The rules and their digest, from the bundle SOPHIE sends with a plan."""
    if not isinstance(bundle, dict) or not isinstance(bundle.get("yaml"), str):
        raise Unreadable("not a constitution bundle (expected yaml, policies, digest)")
    policies = bundle.get("policies") or {}
    if not isinstance(policies, dict):
        raise Unreadable("bundle policies must be a mapping of file name to text")
    try:
        rules = json.loads(bundle["yaml"])
    except ValueError as exc:
        raise Unreadable(
            "the bundle's rules are not SOPHIE's JSON form (send the bundle SOPHIE dispatched)"
        ) from exc
    if not isinstance(rules, dict):
        raise Unreadable("the bundle's rules are not a mapping")
    policies = {str(k): str(v) for k, v in policies.items()}
    digest = digest_of({"constitution": rules, "policies": policies} if policies else rules)
    if bundle.get("digest") and bundle["digest"] != digest:
        raise Unreadable("bundle digest does not match its contents")
    return rules, digest


# -- the checks (roles/approvals.py: tally, may_decide, needed) -------------------------------


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


class EnvelopeError(ValueError):
    pass


def _open_statement(
    envelope: Any, keys: dict[str, bytes], predicate_type: str, what: str, label: str = ""
) -> tuple[dict[str, Any], str]:
    """A DSSE envelope's in-toto statement, signed by a known key, carrying
    ``predicate_type`` (roles/attestation.py open_statement, in the stdlib)."""
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
        key = keys.get(keyid)
        if key is not None and ed25519_verify(key, message, raw):
            try:
                statement = json.loads(payload)
            except ValueError as exc:
                raise EnvelopeError("payload is not JSON") from exc
            if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
                raise EnvelopeError("payload is not an in-toto Statement v1")
            if statement.get("predicateType") != predicate_type:
                raise EnvelopeError(f"payload is not {what}")
            return statement, keyid
    on = f" on the {label}" if label else ""
    raise EnvelopeError(f"no signature{on} verifies with a known key")


def open_envelope(envelope: Any, keys: dict[str, bytes]) -> tuple[dict[str, Any], str]:
    return _open_statement(envelope, keys, PREDICATE_TYPE, "a SOPHIE decision")


def open_change(envelope: Any, keys: dict[str, bytes]) -> dict[str, Any]:
    """The statement of a change envelope signed by a known key (roles/attestation.py)."""
    statement, _ = _open_statement(
        envelope, keys, CHANGE_PREDICATE_TYPE, "a SOPHIE change statement", "change statement"
    )
    if not isinstance(statement.get("predicate"), dict):
        raise EnvelopeError("change statement has no predicate")
    return statement


def _subject_digests(subjects: list[Any], algorithm: str) -> set[str]:
    return {
        str(s["digest"].get(algorithm))
        for s in subjects
        if isinstance(s, dict) and isinstance(s.get("digest"), dict)
    }


def verify_change(
    envelope: Any,
    plan: dict[str, Any],
    constitution_digest: str,
    keys: dict[str, bytes],
    commit: str,
) -> str:
    """ "" when the change statement binds this plan to ``commit``; otherwise the reason."""
    try:
        statement = open_change(envelope, keys)
    except EnvelopeError as exc:
        return str(exc)
    pred = statement["predicate"]
    subjects = statement.get("subject")
    if not isinstance(subjects, list):
        return "the change statement names no subject"
    plan_digest = digest_of(plan)
    if pred.get("planId") != plan["id"]:
        return "the change was checked for another plan"
    if (
        plan_digest not in _subject_digests(subjects, "sha256")
        or pred.get("planDigest") != plan_digest
    ):
        return "the plan changed after its change was checked"
    if pred.get("repo") != plan["target"]["repo"]:
        return "the change was checked in another repository"
    if pred.get("constitutionDigest") != constitution_digest:
        return "the change was checked under another constitution"
    if (
        not commit
        or pred.get("commitSha") != commit
        or commit not in _subject_digests(subjects, "gitCommit")
    ):
        return f"the change statement is for commit {str(pred.get('commitSha'))[:12]}, not this one"
    return ""


def _short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def run_problem(
    plan: dict[str, Any],
    action: str,
    environment: str,
    artifacts: str,
    deploy_sha: str,
    run_sha: str,
    change_checked_commit: str | None,
    plan_id: str | None = None,
    repo: str | None = None,
    ref: str | None = None,
) -> str:
    """ "" when the workflow was asked to run what the plan says; otherwise the reason.

    ``action`` .. ``deploy_sha`` are the dispatch inputs, ``run_sha`` the commit the run is
    on (``$GITHUB_SHA``), ``change_checked_commit`` the commit a verified change statement
    binds this plan to (None: no statement came). ``plan_id``, ``repo`` (``$GITHUB_REPOSITORY``)
    and ``ref`` (``$GITHUB_REF``) are checked when given. A plan whose ``target.implement`` is
    true runs twice: ``implement`` on the plan's ref (its head is the base), then its action
    on ``sophie/<plan id>``, the generated commit SOPHIE checked and signed.
    """
    target = plan["target"]
    planned = target.get("action", "deploy")
    implement = target.get("implement", False) is True
    if plan_id is not None and plan_id != plan["id"]:
        return f"the workflow was dispatched for plan {plan_id}, but the plan is {plan['id']}"
    if repo is not None and repo.lower() != str(target["repo"]).lower():
        return f"this workflow runs in {repo}, but the plan is for {target['repo']}"
    if environment != target["environment"]:
        return (
            f"the workflow was asked to run in {environment or '(none)'}, "
            f"but the plan targets {target['environment']}"
        )
    wanted = ",".join(plan["artifacts"])
    if artifacts != wanted:
        return (
            f"the workflow was asked to build artifacts {artifacts or '(none)'}, "
            f"but the plan has {wanted or '(none)'}"
        )
    expected_ref = target["ref"]
    if action == "implement":
        if not implement or planned == "rollback":
            return "the plan does not ask the pipeline to implement its change"
        if deploy_sha:
            return "an implement run builds on the plan's ref: deploy_sha must be empty"
        if change_checked_commit is not None:
            return "an implement run takes no change statement"
    elif action == "rollback":
        if planned != "rollback":
            return f"the plan's action is {planned}, not rollback"
        if not target.get("sha") or deploy_sha != target["sha"]:
            return (
                f"the workflow was asked to restore {deploy_sha[:12] or '(nothing)'}, "
                f"but the plan restores {str(target.get('sha'))[:12] or '(nothing)'}"
            )
        if change_checked_commit is not None:
            return "a rollback takes no change statement"
    elif action in ("deploy", "build"):
        if action != planned:
            return f"the plan's action is {planned}, not {action}"
        if implement:
            if change_checked_commit is None:
                return (
                    "the plan's change must be implemented and checked before it "
                    f"{'deploys' if action == 'deploy' else 'builds'}: no change statement came"
                )
            if deploy_sha != change_checked_commit:
                return (
                    f"deploy_sha {deploy_sha[:12] or '(empty)'} is not the checked commit "
                    f"{change_checked_commit[:12]}"
                )
            if run_sha != change_checked_commit:
                return (
                    f"this run is on commit {run_sha[:12] or '(unknown)'}, not the checked "
                    f"commit {change_checked_commit[:12]}"
                )
            expected_ref = f"sophie/{plan['id']}"
        else:
            if deploy_sha:
                return "deploy_sha is only for a rollback or a generated change"
            if change_checked_commit is not None:
                return "the plan has no change to implement, so no change statement belongs"
    else:
        return f"unknown action {action!r}"
    if ref is not None and _short_ref(ref) != _short_ref(expected_ref):
        return f"this run is on ref {_short_ref(ref)}, but the plan runs on {expected_ref}"
    return ""


def _binding_problem(pred: dict[str, Any], plan: dict[str, Any], digest: str, now: datetime) -> str:
    target = plan["target"]
    if pred.get("planId") != plan["id"]:
        return "an approval was given for another plan"
    keys = ("repo", "environment", "ref", "workflow")
    if tuple(pred.get(k, "") for k in keys) != tuple(target[k] for k in keys):
        return "the target changed after it was approved"
    signed_runs = (pred.get("action", ""), pred.get("sha", ""), pred.get("artifacts", []))
    if signed_runs != (target.get("action", "deploy"), target.get("sha", ""), plan["artifacts"]):
        return "what runs changed after it was approved"
    if pred.get("constitutionDigest") != digest:
        return "the approval was given under another constitution"
    expires = _instant(pred.get("expiresAt"))
    if expires is None:
        return "an approval has no valid expiry"
    if expires <= now:
        return "an approval has expired"
    return ""


def _may_approve(
    rules: dict[str, Any], plan: dict[str, Any], who: dict[str, str], groups: set[str]
) -> str:
    if who["userId"].startswith("sophie:"):
        return "decisions by the bot are signed only by its own rules"
    if not who["userId"]:
        return "the request names no Slack user"
    requester = plan["requester"]
    org = requester.get("enterprise_id", "")
    if (
        not who["teamId"]
        or who["teamId"] != requester["team_id"]
        or (org and who["enterpriseId"] != org)
    ):
        return "this plan belongs to another Slack workspace"
    approvers = rules.get("approvers") or {}
    if who["userId"] not in approvers.get("users", []) and not groups & set(
        approvers.get("groups", [])
    ):
        return "you are not an approver in the constitution"
    sod = rules.get("separation_of_duties") or {}
    if sod.get("no_self_approval", True) and who["userId"] == requester["user_id"]:
        return "separation of duties: you cannot approve your own request"
    return ""


def _missing_groups(approvers: list[tuple[str, ...]], groups: list[str]) -> list[str]:
    wanted = list(dict.fromkeys(groups))
    holder: dict[str, int] = {}

    def assign(person: int, seen: set[str]) -> bool:
        for group in wanted:
            if group in approvers[person] and group not in seen:
                seen.add(group)
                if group not in holder or assign(holder[group], seen):
                    holder[group] = person
                    return True
        return False

    for person in range(len(approvers)):
        assign(person, set())
    return [g for g in wanted if g not in holder]


def verify(
    envelopes: list[Any],
    plan: dict[str, Any],
    rules: dict[str, Any],
    constitution_digest: str,
    keys: dict[str, bytes],
    now: datetime,
) -> str:
    """ "" when the envelopes authorise exactly this plan; otherwise the reason."""
    plan_digest = digest_of(plan)
    opened = []
    for envelope in envelopes:
        try:
            opened.append(open_envelope(envelope, keys))
        except EnvelopeError as exc:
            return str(exc)
    if not opened:
        return "no envelopes"
    if plan["constitution"]["digest"] != constitution_digest:
        return "the constitution changed since this plan was checked"
    created = _instant(plan["created_at"])
    approval = plan["approval"]
    if created is None or now >= created + timedelta(seconds=approval["ttl_seconds"]):
        return "the plan's approval time-to-live has passed"
    approvers: dict[str, tuple[str, ...]] = {}
    by_bot = False
    for statement, keyid in opened:
        try:
            subject = str(statement["subject"][0]["digest"]["sha256"])
            pred = dict(statement["predicate"])
        except (KeyError, IndexError, TypeError, ValueError):
            return "a decision is malformed"
        if subject != plan_digest:
            return "the plan changed after it was approved"
        problem = _binding_problem(pred, plan, constitution_digest, now)
        if problem:
            return problem
        signed = pred.get("approver")
        if not isinstance(signed, dict) or not isinstance(signed.get("groups", []), list):
            return "a decision names no approver"
        who = {k: str(signed.get(k, "")) for k in ("teamId", "userId", "enterpriseId")}
        groups = tuple(str(g) for g in signed.get("groups", []))
        if pred.get("decision") == "veto":
            return "the plan was vetoed"
        if pred.get("decision") != "approve":
            return f"unknown decision {pred.get('decision')!r}"
        if who["userId"].startswith("sophie:"):
            if who["teamId"] != BOT_TEAM or who["userId"] != f"sophie:{keyid}":
                return "a decision claims to be the bot's but another key signed it"
            by_bot = True
            continue
        why = _may_approve(rules, plan, who, set(groups))
        if why:
            return f"the approval by {who['userId']} does not count: {why}"
        if who["userId"] in approvers:
            return f"{who['userId']} approved twice"
        approvers[who["userId"]] = groups
    level = approval["level"]
    if level in ("autonomous", "notification"):
        return "" if by_bot or approvers else "no signed decision"
    missing = []
    quorum = max(int(approval["quorum"]), MIN_QUORUM[level])
    if quorum > len(approvers):
        n = quorum - len(approvers)
        missing.append(f"{n} more approver{'s' if n > 1 else ''}")
    for group in _missing_groups(list(approvers.values()), approval.get("distinct_groups", [])):
        missing.append(f"an approver from group {group}")
    return ", ".join(missing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a SOPHIE plan's signed decisions.")
    parser.add_argument("envelopes")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--constitution", required=True)
    parser.add_argument("--expect-digest", default="")
    parser.add_argument("--change", default=None)
    parser.add_argument("--commit", default=None)
    run = parser.add_argument_group(
        "what the workflow was asked to run (checked against the plan when --action is given)"
    )
    run.add_argument("--action", default=None, help="the dispatch's action input")
    run.add_argument("--environment", default=None, help="the dispatch's environment input")
    run.add_argument("--artifacts", default=None, help="the dispatch's artifacts input (CSV)")
    run.add_argument("--deploy-sha", default=None, help="the dispatch's deploy_sha input")
    run.add_argument("--run-sha", default=None, help="the commit the run is on ($GITHUB_SHA)")
    run.add_argument("--plan-id", default=None, help="the dispatch's plan_id input")
    run.add_argument("--repo", default=None, help="the repository ($GITHUB_REPOSITORY)")
    run.add_argument("--ref", default=None, help="the run's ref ($GITHUB_REF)")
    args = parser.parse_args(argv)
    if (args.change is None) != (args.commit is None):
        print("error: --change and --commit go together", file=sys.stderr)
        return 2
    companions = (args.environment, args.artifacts, args.deploy_sha, args.run_sha)
    extras = (args.plan_id, args.repo, args.ref)
    if args.action is None and any(v is not None for v in companions + extras):
        print("error: the run flags go with --action", file=sys.stderr)
        return 2
    if args.action is not None and any(v is None for v in companions):
        print(
            "error: --action needs --environment, --artifacts, --deploy-sha and --run-sha",
            file=sys.stderr,
        )
        return 2
    try:
        envelopes = read_json_or_base64(args.envelopes)
        if isinstance(envelopes, dict):
            envelopes = [envelopes]
        plan = read_json_or_base64(args.plan)
        if not isinstance(plan, dict) or plan.get("kind") != "Plan":
            raise Unreadable("not a SOPHIE plan document")
        rules, constitution_digest = constitution_of(read_json_or_base64(args.constitution))
        change = read_json_or_base64(args.change) if args.change else None
        if change is not None and not isinstance(change, dict):
            raise Unreadable("--change must be one envelope (a JSON object)")
        keys = load_keys(args.keys)
        plan_digest = digest_of(plan)
    except (OSError, Unreadable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    expected = args.expect_digest.removeprefix("sha256:")
    if expected and expected != plan_digest:
        print(
            f"REJECTED: the plan's digest is sha256:{plan_digest}, not the expected {expected}",
            file=sys.stderr,
        )
        return 1
    try:
        reason = verify(
            envelopes,
            plan,
            rules,
            constitution_digest,
            keys,
            datetime.now(timezone.utc),  # noqa: UP017 (Python 3.9)
        )
        if not reason and change is not None:
            reason = verify_change(change, plan, constitution_digest, keys, args.commit)
        if not reason and args.action is not None:
            reason = run_problem(
                plan,
                args.action,
                args.environment,
                args.artifacts,
                args.deploy_sha,
                args.run_sha,
                args.commit if change is not None else None,
                args.plan_id,
                args.repo,
                args.ref,
            )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        reason = f"malformed input: {type(exc).__name__}: {exc}"
    if reason:
        print(f"REJECTED: {reason}", file=sys.stderr)
        return 1
    print(
        f"OK: {len(envelopes)} decision(s) authorise plan {plan['id']} "
        f"(sha256:{plan_digest}) at level {plan['approval']['level']}"
    )
    if change is not None:
        print(f"OK: the change of plan {plan['id']} to commit {args.commit} was checked")
    if args.action is not None:
        print(f"OK: {args.action} in {args.environment} is what plan {plan['id']} says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
