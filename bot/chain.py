"""`sophie verify --chain`: the whole chain of a run, offline, from its `sophie-chain` bundle.

directive → plan → approvals → change statement → commit → artifact digests. The pipeline's
last job uploads ``chain.json``::

    {"kind": "SophieChain", "version": 1,
     "plan": <plan document>, "envelopes": [<decision DSSE envelopes>],
     "constitution": <constitution bundle>, "change": <change DSSE envelope or null>,
     "commit": "<sha the run built>", "run": "<run url>",
     "artifacts": [{"name": "...", "digest": "sha256:<64 hex>"}]}

Every link is judged by the code that judges it elsewhere: the plan's digest by
:class:`roles.plan.Plan`, the approvals by :func:`bot.verify.count_decisions` (what
``sophie verify ENVELOPES --plan`` runs, i.e. ``roles.approvals.tally``), the change by
:func:`bot.verify.verify_change` (``roles.attestation.change_binding_problem``). This module
adds only what is new in a chain: its shape, which commit the plan binds, and the artifact
digests. Exit status: 0 verified, 1 rejected (one line saying why), 2 an input that cannot
be read (the chain or an ``--artifact`` file is missing or not JSON, the keys are unusable).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nacl.exceptions import CryptoError
from pydantic import ValidationError

from bot.verify import PublicKeys, count_decisions, load_keys, verify_change
from roles.approvals import Tally
from roles.attestation import open_change_envelope
from roles.canonical import sha256_digest
from roles.constitution import Constitution, ConstitutionError, from_bundle
from roles.plan import Plan
from roles.records import DecisionRecord
from roles.untrusted import clean_text

KIND = "SophieChain"
VERSION = 1
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class Unreadable(ValueError):
    """An input that cannot be read at all (exit 2)."""


class Rejected(Exception):
    """A link of the chain does not hold (exit 1); the message says which."""


@dataclass
class Report:
    """What was verified (``lines``, in order) and, when a link broke, why (``reason``)."""

    lines: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def artifact_kind(name: str, plan_artifacts: Sequence[str]) -> str | None:
    """The plan artifact a chain entry is a build of, or None.

    An entry for plan artifact ``a`` is named ``a``, ``<anything>.a`` (a file of that
    kind: ``auth-service.deb`` for ``deb``) or ``a:<anything>`` (``docker:ghcr.io/o/r``).
    """
    for kind in plan_artifacts:
        if name == kind or name.endswith(f".{kind}") or name.startswith(f"{kind}:"):
            return kind
    return None


def verify_chain(
    doc: Any,
    verifier: PublicKeys,
    files: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Report:
    """Verify a ``sophie-chain`` document; ``files`` maps a file's name to its sha256 (hex).

    ``now`` is the instant the approvals' expiry and the plan's time-to-live are judged at
    (as ``sophie verify`` does: now, by default).
    """
    report = Report()
    try:
        _verify(doc, verifier, dict(files or {}), now, report.lines)
    except Rejected as exc:
        report.reason = str(exc)
    return report


def _verify(
    doc: Any, verifier: PublicKeys, files: dict[str, str], now: datetime | None, out: list[str]
) -> None:
    # 1. What the document is, and the plan it carries (the directive and who asked).
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise Rejected(f"not a SOPHIE chain (kind {_show(kind)}, expected {KIND})")
    version = doc.get("version")
    if type(version) is not int or version != VERSION:
        raise Rejected(f"unsupported chain version {_show(version)} (this verifier reads 1)")
    plan = _plan(doc.get("plan"))
    out.append(f"plan {plan.id} sha256:{plan.digest} (revision {plan.revision})")
    out.append(f"  directive: {_text(plan.directive)}")
    who = plan.requester
    name = f"{_text(who.name, 80)} " if who.name else ""
    out.append(f"  requested by {name}({who.user_id}, workspace {who.team_id})")
    t = plan.target
    out.append(f"  runs: {t.action} {t.repo}@{t.ref} to {t.environment} ({t.workflow})")
    if isinstance(doc.get("run"), str) and doc["run"]:
        out.append(f"  run: {_text(doc['run'], 300)}")

    # 2. The approvals: exactly what `sophie verify ENVELOPES --plan ...` judges.
    constitution = _constitution(doc.get("constitution"))
    out.append(f"constitution v{constitution.version} sha256:{constitution.digest_hex}")
    envelopes = doc.get("envelopes")
    if not isinstance(envelopes, list) or not all(isinstance(e, dict) for e in envelopes):
        raise Rejected("malformed chain: 'envelopes' must be a list of DSSE envelopes")
    counted, decisions = count_decisions(envelopes, plan, constitution, verifier, now)
    if not counted.complete:
        raise Rejected(counted.reason or "the decisions do not authorise the plan")
    out.append(f"approvals: level {plan.approval.level.value}, {_approvers(decisions, counted)}")

    # 3. The commit: bound by the change statement, by the plan, or by nothing.
    commit = doc.get("commit")
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise Rejected(f"the chain's commit {_show(commit)} is not a full git sha")
    change = doc.get("change")
    if change is not None and not isinstance(change, dict):
        raise Rejected("malformed chain: 'change' must be a DSSE envelope or null")
    out.extend(_commit_lines(plan, constitution, verifier, commit, change))

    # 4. The artifact digests, and the files given to check against them.
    digests = _artifacts(doc.get("artifacts"), plan)
    if digests:
        out.extend(f"artifact {name} {digest}" for name, digest in digests)
    else:
        out.append("artifacts: the chain lists no artifact digests")
    for path, hexdigest in files.items():
        named = [n for n, d in digests if d == f"sha256:{hexdigest}"]
        if not named:
            raise Rejected(
                f"{path}: its sha256:{hexdigest} is not one of the chain's artifact digests"
            )
        out.append(f"file {path} is artifact {named[0]} (sha256:{hexdigest})")
    if digests:
        out.append(
            "note: GitHub attests the artifacts' provenance (`gh attestation verify FILE "
            f"--repo {t.repo}`); this check binds the files to the chain"
        )
    out.append("OK: chain verified")


def _plan(raw: Any) -> Plan:
    if not isinstance(raw, dict):
        raise Rejected("malformed chain: 'plan' must be a plan document")
    try:
        plan = Plan.from_document(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Rejected(f"the plan is not a SOPHIE plan: {where}: {first['msg']}") from exc
    # The digest the pipeline computes (of the document as sent) is the one approvals bind.
    sent = sha256_digest(raw)
    if sent != plan.digest:
        raise Rejected(
            f"the plan document (sha256:{sent}) is not the plan it parses to "
            f"(sha256:{plan.digest}): a field is missing or not in SOPHIE's form"
        )
    return plan


def _constitution(raw: Any) -> Constitution:
    try:
        return from_bundle(raw)
    except ConstitutionError as exc:
        raise Rejected(f"the constitution bundle: {exc}") from exc


def _approvers(decisions: Sequence[DecisionRecord], counted: Tally) -> str:
    names = {d.actor.user_id: d.actor.name for d in decisions}
    people = [f"{_text(names.get(u, ''), 80) or u} ({u})" for u in counted.approvers]
    if people:
        return "approved by " + ", ".join(people)
    bots = sorted({d.actor.user_id for d in decisions if d.actor.is_bot})
    return "approved by SOPHIE under the constitution's rules (" + ", ".join(bots) + ")"


def _commit_lines(
    plan: Plan,
    constitution: Constitution,
    verifier: PublicKeys,
    commit: str,
    change: dict[str, Any] | None,
) -> list[str]:
    t = plan.target
    if t.implement:
        if change is None:
            raise Rejected("the plan implements its change, but the chain has no change statement")
        problem = verify_change(change, plan, constitution, verifier, commit)
        if problem:
            raise Rejected(problem)
        pred = open_change_envelope(change, verifier).predicate
        stat = pred.get("diffStat") or {}
        lines = [
            f"change: commit {commit} on base {str(pred.get('baseSha', ''))[:12]}, "
            f"checked by SOPHIE for this plan: {stat.get('files', 0)} file(s) "
            f"+{stat.get('additions', 0)} -{stat.get('deletions', 0)}"
        ]
        for f in pred.get("files") or []:
            if isinstance(f, dict):
                lines.append(
                    f"  {_text(str(f.get('status', '')), 20)} {_text(str(f.get('path', '')), 300)}"
                    f" +{f.get('additions', 0)} -{f.get('deletions', 0)}"
                )
        return lines
    if change is not None:
        raise Rejected(
            "the plan does not implement a change, but the chain carries a change statement"
        )
    if t.sha:
        if commit != t.sha:
            raise Rejected(
                f"the run built commit {commit[:12]}, but the approved plan runs {t.sha[:12]}"
            )
        return [f"commit {commit}: the approved plan runs exactly this commit"]
    verb = {"deploy": "deploys", "build": "builds"}.get(t.action, "runs")
    return [f"commit {commit} not bound by a change statement: the plan {verb} {t.ref} as it is"]


def _artifacts(raw: Any, plan: Plan) -> list[tuple[str, str]]:
    """The chain's (name, digest) pairs, each a build of one of the plan's artifacts.

    When the chain lists any, every plan artifact has at least one; a chain may list none.
    """
    if not isinstance(raw, list):
        raise Rejected("malformed chain: 'artifacts' must be a list")
    out: list[tuple[str, str]] = []
    for i, entry in enumerate(raw, 1):
        name = entry.get("name") if isinstance(entry, dict) else None
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise Rejected(f"artifact entry {i} has no name")
        shown = _text(name, 120)
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise Rejected(
                f"artifact {shown} has a malformed digest {_show(digest)} "
                "(expected sha256:<64 hex>)"
            )
        if artifact_kind(name, plan.artifacts) is None:
            listed = ", ".join(plan.artifacts) or "none"
            raise Rejected(f"artifact {shown} is not one of the plan's artifacts ({listed})")
        out.append((shown, digest))
    if out:
        built = {artifact_kind(n, plan.artifacts) for n, _ in out}
        for kind in plan.artifacts:
            if kind not in built:
                raise Rejected(f"the chain lists no digest for the plan's artifact {kind}")
    return out


def _text(value: str, limit: int = 200) -> str:
    """Untrusted text on one line, without control or invisible characters."""
    one = " ".join(clean_text(value, 10_000).split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _show(value: Any) -> str:
    return repr(_text(value, 80)) if isinstance(value, str) else _text(repr(value), 80)


# -- the command ----------------------------------------------------------------------------


def read_chain(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Unreadable(f"{path}: {exc}") from exc


def file_sha256(path: str | Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise Unreadable(f"{path}: {exc}") from exc


def command(chain: str, keys: str, artifacts: Sequence[str] = ()) -> int:
    """``sophie verify --chain CHAIN --keys KEYS [--artifact FILE ...]``."""
    try:
        doc = read_chain(chain)
        verifier = PublicKeys(load_keys(keys))
        files = {str(path): file_sha256(path) for path in artifacts}
    except Unreadable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, TypeError, CryptoError) as exc:
        print(f"error: --keys {keys}: {exc}", file=sys.stderr)
        return 2
    report = verify_chain(doc, verifier, files)
    for line in report.lines:
        print(line)
    if not report.ok:
        print(f"REJECTED: {report.reason}", file=sys.stderr)
        return 1
    return 0
