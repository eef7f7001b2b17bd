"""The rules of the tamper-evident audit log (pure: no Redis, no files, no clock).

Each entry is one line of canonical JSON (its ``body``, which carries its own
sequence number) and three values computed from it:

- ``hash = sha256(prev_hash + body)``: an unkeyed chain anyone can replay;
- ``mac = HMAC-SHA256(audit_key, hash)``: a keyed chain only the bot can extend,
  with a key derived from its Ed25519 seed and never stored in Redis;
- ``k``: the keyid of the signing key the MAC key came from (keys rotate).

The head (count, newest hash) carries its own MAC, so resetting it to an
earlier entry needs the key. Signed checkpoints (DSSE over an in-toto
Statement, Ed25519) fix (count, newest entry, head hash) at a moment and chain
to the previous checkpoint, so an export can be checked offline with public
keys only, and a log that shrank or vanished is found against them.

:class:`Replay` walks entries in order, one batch at a time; :func:`finish`
judges the head, the checkpoints and the stored plans against what it saw.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from roles.attestation import (
    STATEMENT_TYPE,
    EnvelopeError,
    Verifier,
    open_statement,
)
from roles.canonical import canonical_json, sha256_digest
from roles.records import PlanStatus

CHECKPOINT_PREDICATE_TYPE = "https://sophie.dev/attestations/audit-checkpoint/v1"
LOG_SUBJECT = "sophie-audit-log"
EXPORT_FORMAT = "sophie-audit-export/v1"
GENESIS = ""  # the ``prev`` of entry #1
MAX_SAME_PROBLEM = 1  # problems of one kind reported in full; the rest are counted

_STATUSES = {s.value for s in PlanStatus}


# -- keys and entries ----------------------------------------------------------


def audit_key(seed: bytes) -> bytes:
    """The MAC key: derived from the Ed25519 seed, so it is never stored anywhere."""
    return hashlib.sha256(b"sophie-audit-chain:" + seed).digest()


def entry_body(
    seq: int, kind: str, plan_id: str, actor: str, detail: dict[str, Any], at: float
) -> str:
    # Through json first: tuples become lists, and what is hashed is what a reader parses.
    plain = json.loads(json.dumps(detail))
    doc = {"seq": seq, "kind": kind, "plan": plan_id, "actor": actor, "detail": plain, "at": at}
    return canonical_json(doc).decode()


def chain_hash(prev: str, body: str) -> str:
    return hashlib.sha256((prev + body).encode()).hexdigest()


def entry_mac(key: bytes, entry_hash: str) -> str:
    return hmac.new(key, b"sophie-audit-entry\n" + entry_hash.encode(), hashlib.sha256).hexdigest()


def head_mac(key: bytes, seq: int, entry_hash: str) -> str:
    message = f"sophie-audit-head\n{seq}\n{entry_hash}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Sealed:
    """A new entry ready to append after (``seq`` - 1, ``prev``)."""

    seq: int
    body: str
    prev: str
    hash: str
    mac: str
    head_mac: str


def seal(
    prev_seq: int,
    prev_hash: str,
    kind: str,
    plan_id: str,
    actor: str,
    detail: dict[str, Any],
    at: float,
    key: bytes,
) -> Sealed:
    seq = prev_seq + 1
    body = entry_body(seq, kind, plan_id, actor, detail, at)
    digest = chain_hash(prev_hash, body)
    return Sealed(seq, body, prev_hash, digest, entry_mac(key, digest), head_mac(key, seq, digest))


@dataclass(frozen=True)
class Entry:
    """An entry as stored (stream fields) or exported."""

    id: str
    body: str
    prev: str
    hash: str
    mac: str = ""
    key_id: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "body": self.body,
            "prev": self.prev,
            "hash": self.hash,
            "mac": self.mac,
            "k": self.key_id,
        }

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str]) -> Entry:
        return cls(
            id=entry_id,
            body=fields.get("body", ""),
            prev=fields.get("prev", ""),
            hash=fields.get("hash", ""),
            mac=fields.get("mac", ""),
            key_id=fields.get("k", ""),
        )


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    mac: str = ""
    key_id: str = ""
    id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "mac": self.mac,
            "k": self.key_id,
            "id": self.id,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Head:
        try:
            seq = int(fields.get("seq", "0"))
        except ValueError:
            seq = -1
        return cls(
            seq=seq,
            hash=fields.get("hash", ""),
            mac=fields.get("mac", ""),
            key_id=fields.get("k", ""),
            id=fields.get("id", ""),
        )


# -- checkpoints -----------------------------------------------------------------


def checkpoint_statement(
    *,
    index: int,
    count: int,
    last_entry_id: str,
    head_hash: str,
    taken_at: datetime,
    previous: str,
) -> dict[str, Any]:
    """In-toto Statement v1 for checkpoint number ``index`` (1-based)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": LOG_SUBJECT, "digest": {"sha256": head_hash or "0" * 64}}],
        "predicateType": CHECKPOINT_PREDICATE_TYPE,
        "predicate": {
            "index": index,
            "count": count,
            "lastEntryId": last_entry_id,
            "headHash": head_hash,
            "takenAt": taken_at.isoformat(),
            "previousCheckpoint": previous,
        },
    }


def checkpoint_digest(statement: dict[str, Any]) -> str:
    """What the next checkpoint names as its previous one (sha256 of the signed payload)."""
    return sha256_digest(statement)


@dataclass(frozen=True)
class Checkpoint:
    index: int
    count: int
    last_entry_id: str
    head_hash: str
    taken_at: str
    previous: str
    digest: str
    keyid: str

    def describe(self) -> str:
        return f"checkpoint {self.index} (taken {self.taken_at})"


def open_checkpoint(envelope: Any, verifier: Verifier) -> Checkpoint:
    """Verify a checkpoint envelope's signature and read it (raises EnvelopeError)."""
    verified = open_statement(
        envelope, verifier, CHECKPOINT_PREDICATE_TYPE, "a SOPHIE audit checkpoint"
    )
    try:
        pred = verified.statement["predicate"]
        return Checkpoint(
            index=int(pred["index"]),
            count=int(pred["count"]),
            last_entry_id=str(pred["lastEntryId"]),
            head_hash=str(pred["headHash"]),
            taken_at=str(pred["takenAt"]),
            previous=str(pred["previousCheckpoint"]),
            digest=hashlib.sha256(base64.b64decode(envelope["payload"])).hexdigest(),
            keyid=verified.keyid,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError(f"malformed checkpoint: {exc}") from exc


# -- problems ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """``code`` is stable (tests and tools match on it); ``message`` is for people."""

    code: str
    message: str


@dataclass
class _Problems:
    first: dict[str, list[str]] = field(default_factory=dict)
    more: dict[str, int] = field(default_factory=dict)

    def add(self, code: str, message: str) -> None:
        listed = self.first.setdefault(code, [])
        if len(listed) < MAX_SAME_PROBLEM:
            listed.append(message)
        else:
            self.more[code] = self.more.get(code, 0) + 1

    def listed(self) -> list[Problem]:
        out: list[Problem] = []
        for code, messages in self.first.items():
            for message in messages:
                out.append(Problem(code, message))
            extra = self.more.get(code, 0)
            if extra:
                out[-1] = Problem(code, f"{out[-1].message} (and {extra} more like it)")
        return out


# -- replay -------------------------------------------------------------------------


class Replay:
    """Walks entries in log order; remembers what :func:`finish` needs.

    ``mac_key``/``key_id``: check keyed MACs (online). ``watch``: counts at which
    to remember (hash, id), the counts of the checkpoints. ``start_*``: resume
    after entry ``start_count`` whose hash is ``start_hash`` (incremental check).
    """

    def __init__(
        self,
        *,
        mac_key: bytes | None = None,
        key_id: str = "",
        watch: Iterable[int] = (),
        start_count: int = 0,
        start_hash: str = GENESIS,
    ) -> None:
        self.mac_key = mac_key
        self.key_id = key_id
        self.watch = set(watch)
        self.count = start_count
        self.last_hash = start_hash
        self.last_id = ""
        self.at_count: dict[int, tuple[str, str]] = {}
        self.unverified: list[tuple[int, str, str]] = []  # (seq, id, keyid) MACed by another key
        self.status: dict[str, str] = {}  # plan id → last status the log records
        self.created: dict[str, str] = {}  # plan id → digest recorded at plan.created
        self.problems = _Problems()

    def feed(self, entry: Entry) -> None:
        seq = self.count + 1
        where = f"entry {entry.id} (#{seq})"
        if chain_hash(entry.prev, entry.body) != entry.hash:
            self.problems.add(
                "altered", f"{where} was altered: its hash does not match its content"
            )
        if entry.prev != self.last_hash:
            self.problems.add(
                "broken-link",
                f"{where} does not follow the entry before it: "
                "an entry was deleted, inserted or moved",
            )
        body = self._parse(entry, where)
        if body is not None and body.get("seq") != seq:
            self.problems.add(
                "sequence",
                f"{where} says it is #{body.get('seq')}: "
                "entries before it were deleted or inserted",
            )
        if self.mac_key is not None:
            if entry.key_id == self.key_id:
                if not hmac.compare_digest(entry_mac(self.mac_key, entry.hash), entry.mac):
                    self.problems.add(
                        "mac",
                        f"{where} fails its keyed MAC: it was written, altered or re-chained "
                        "by someone without the bot's key",
                    )
            else:
                self.unverified.append((seq, entry.id, entry.key_id))
        self.count = seq
        self.last_hash = entry.hash
        self.last_id = entry.id
        if seq in self.watch:
            self.at_count[seq] = (entry.hash, entry.id)
        if body is not None:
            self._plan_state(body, where)

    def _parse(self, entry: Entry, where: str) -> dict[str, Any] | None:
        try:
            body = json.loads(entry.body)
        except ValueError:
            self.problems.add("altered", f"{where} is not JSON")
            return None
        if not isinstance(body, dict):
            self.problems.add("altered", f"{where} is not a JSON object")
            return None
        return body

    def _plan_state(self, body: dict[str, Any], where: str) -> None:
        kind, plan_id = str(body.get("kind", "")), str(body.get("plan", ""))
        detail = body.get("detail")
        detail = detail if isinstance(detail, dict) else {}
        if kind == "plan.created":
            self.created[plan_id] = str(detail.get("digest", ""))
            self.status[plan_id] = str(detail.get("status", ""))
        elif kind.startswith("plan.") and kind[5:] in _STATUSES:
            self.status[plan_id] = kind[5:]
        elif kind == "decision.veto":
            self.status[plan_id] = PlanStatus.VETOED.value
        if (
            kind.startswith("decision.")
            and "digest" in detail
            and plan_id in self.created
            and detail["digest"] != self.created[plan_id]
        ):
            self.problems.add(
                "plan-decision",
                f"{where}: a decision on plan {plan_id} names digest {detail['digest']}, "
                "not the plan's",
            )


# -- judging the whole ----------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointSet:
    """Checkpoints as read (Redis list, then witnesses such as the data-dir file)."""

    verified: list[Checkpoint]
    problems: list[Problem]

    @property
    def counts(self) -> set[int]:
        return {c.count for c in self.verified}


def open_checkpoints(
    stored: list[Any], witnesses: list[Any], verifier: Verifier, witness_source: str = "the file"
) -> CheckpointSet:
    """Signatures, numbering and chaining of the stored checkpoints; witnesses must be
    among them (a checkpoint in the file but not in Redis means Redis lost some)."""
    problems: list[Problem] = []
    verified: list[Checkpoint] = []
    prev: Checkpoint | None = None
    prev_ok = True
    for pos, envelope in enumerate(stored, start=1):
        try:
            cp = open_checkpoint(envelope, verifier)
        except EnvelopeError as exc:
            problems.append(
                Problem(
                    "checkpoint-signature",
                    f"checkpoint {pos} does not verify ({exc}): forged, edited, "
                    "or signed by a key that was not given",
                )
            )
            prev, prev_ok = None, False
            continue
        if cp.index != pos:
            problems.append(
                Problem(
                    "checkpoint-order",
                    f"the checkpoint at position {pos} says it is number {cp.index}: "
                    "checkpoints were deleted or reordered",
                )
            )
        expected = prev.digest if prev is not None else ""
        if prev_ok and cp.previous != expected:
            problems.append(
                Problem(
                    "checkpoint-chain",
                    f"{cp.describe()} does not follow the checkpoint before it: "
                    "a checkpoint was deleted, replaced or inserted",
                )
            )
        if prev is not None and cp.count < prev.count:
            problems.append(
                Problem(
                    "checkpoint-count",
                    f"{cp.describe()} says the log had {cp.count} entries, fewer than "
                    f"{prev.describe()} said ({prev.count}): the count went backwards",
                )
            )
        verified.append(cp)
        prev, prev_ok = cp, True
    known = {c.digest for c in verified}
    for envelope in witnesses:
        try:
            cp = open_checkpoint(envelope, verifier)
        except EnvelopeError as exc:
            problems.append(
                Problem("checkpoint-signature", f"a checkpoint in {witness_source}: {exc}")
            )
            continue
        if cp.digest in known:
            continue
        known.add(cp.digest)
        problems.append(
            Problem(
                "checkpoint-missing",
                f"{cp.describe()} in {witness_source} is missing from the stored checkpoints: "
                "checkpoints were deleted",
            )
        )
        verified.append(cp)
    return CheckpointSet(verified, problems)


@dataclass(frozen=True)
class StoredPlan:
    """A plan record as found in the store (fields may be missing: None)."""

    id: str
    doc: str | None
    digest: str | None
    status: str | None


@dataclass(frozen=True)
class Report:
    count: int
    problems: list[Problem]
    checkpoints: list[Checkpoint]
    plans_checked: int
    macs_checked: bool

    @property
    def ok(self) -> bool:
        return not self.problems

    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def summary(self) -> str:
        parts = [f"{self.count} entries", "hash chain intact"]
        parts.append("keyed MACs valid" if self.macs_checked else "keyed MACs not checked")
        if self.checkpoints:
            newest = max(self.checkpoints, key=lambda c: (c.count, c.index))
            parts.append(
                f"{len(self.checkpoints)} signed checkpoint(s), newest at entry {newest.count} "
                f"(taken {newest.taken_at})"
            )
        else:
            parts.append("no checkpoints")
        if self.plans_checked:
            parts.append(f"{self.plans_checked} plan(s) match the log")
        return ", ".join(parts)


def finish(
    replay: Replay,
    *,
    head: Head | None,
    checkpoints: CheckpointSet,
    stream_length: int | None = None,
    plans: list[StoredPlan] | None = None,
) -> Report:
    """Judge what ``replay`` saw against the head, the checkpoints and the plans."""
    problems = replay.problems
    covered = _check_checkpoints(replay, checkpoints, problems)
    _check_head(replay, head, stream_length, covered, problems)
    for seq, entry_id, keyid in replay.unverified:
        if seq > covered:
            problems.add(
                "mac-unverifiable",
                f"entry {entry_id} (#{seq}) carries a MAC under key {keyid or '(none)'}, not "
                "the current key, and no signed checkpoint covers it: it cannot be "
                "authenticated (take a checkpoint before rotating the signing key)",
            )
    if plans is not None:
        _check_plans(replay, plans, problems)
    listed = checkpoints.problems + problems.listed()
    return Report(
        count=replay.count,
        problems=listed,
        checkpoints=checkpoints.verified,
        plans_checked=len(plans or ()),
        macs_checked=replay.mac_key is not None,
    )


def _check_checkpoints(replay: Replay, checkpoints: CheckpointSet, problems: _Problems) -> int:
    """Each checkpoint against the log; returns the highest count a matching one covers."""
    covered = 0
    for cp in sorted(checkpoints.verified, key=lambda c: -c.count):
        if cp.count > replay.count:
            if replay.count == 0:
                problems.add(
                    "vanished",
                    f"the audit log is empty, but {cp.describe()} says it had {cp.count} "
                    "entries: the log was deleted",
                )
            else:
                problems.add(
                    "truncated",
                    f"the log ends at entry {replay.count}, but {cp.describe()} says it had "
                    f"{cp.count}: the newest {cp.count - replay.count} entries were deleted",
                )
            continue
        if cp.count == 0:
            continue
        seen = replay.at_count.get(cp.count)
        if seen is None:  # resumed past it (incremental): nothing to compare
            continue
        entry_hash, entry_id = seen
        if entry_hash != cp.head_hash or (cp.last_entry_id and entry_id != cp.last_entry_id):
            problems.add(
                "rewritten",
                f"entry #{cp.count} no longer matches {cp.describe()}: the log up to it was "
                "rewritten or re-chained after the checkpoint was signed",
            )
            continue
        covered = max(covered, cp.count)
    return covered


def _check_head(
    replay: Replay,
    head: Head | None,
    stream_length: int | None,
    covered: int,
    problems: _Problems,
) -> None:
    if head is None:
        if replay.count > 0 or stream_length:
            problems.add(
                "head-missing", "the chain head is missing: it was deleted (with the log?)"
            )
        return
    if stream_length is not None and stream_length != head.seq:
        if stream_length < head.seq:
            problems.add(
                "truncated",
                f"the head says the log has {head.seq} entries, but it has {stream_length}: "
                "entries were deleted",
            )
        else:
            problems.add(
                "head",
                f"the log has {stream_length} entries but the head says {head.seq}: "
                "entries were added behind the bot's back, or the head was reset",
            )
    if replay.count < head.seq:
        problems.add(
            "truncated",
            f"the log ends at entry {replay.count}, but the head says it has {head.seq}: "
            "the newest entries were deleted",
        )
    elif replay.count > head.seq:
        problems.add(
            "head",
            f"the log has {replay.count} entries but the head says {head.seq}: entries were "
            "added behind the bot's back, or the head was reset",
        )
    elif head.hash != replay.last_hash:
        problems.add("head", f"the chain head does not match entry #{head.seq}: the head was reset")
    if replay.mac_key is None:
        return
    if head.key_id == replay.key_id:
        if not hmac.compare_digest(head_mac(replay.mac_key, head.seq, head.hash), head.mac):
            problems.add(
                "head",
                "the chain head fails its keyed MAC: it was reset by someone without the "
                "bot's key (the newest entries were probably deleted)",
            )
    elif head.seq > covered:
        problems.add(
            "mac-unverifiable",
            f"the chain head carries a MAC under key {head.key_id or '(none)'}, not the "
            "current key, and no signed checkpoint covers it",
        )


def _check_plans(replay: Replay, plans: list[StoredPlan], problems: _Problems) -> None:
    stored = {p.id for p in plans}
    for plan in sorted(plans, key=lambda p: p.id):
        name = f"plan {plan.id}"
        if plan.doc is None or plan.digest is None or plan.status is None:
            problems.add("plan-fields", f"{name}'s record lacks its doc, digest or status")
            continue
        try:
            doc_digest = sha256_digest(json.loads(plan.doc))
        except (ValueError, TypeError):
            doc_digest = ""
        if doc_digest != plan.digest:
            problems.add(
                "plan-doc",
                f"{name}'s document was edited in the store: its digest is not the "
                f"recorded sha256:{plan.digest}",
            )
        if plan.id not in replay.created:
            problems.add(
                "plan-unlogged",
                f"{name} has no plan.created entry in the audit log: it was written "
                "behind the bot's back, or its entries were deleted",
            )
            continue
        if replay.created[plan.id] != plan.digest:
            problems.add(
                "plan-digest",
                f"{name}'s stored digest is not the one recorded when it was created: "
                "the plan was replaced in the store",
            )
        logged = replay.status.get(plan.id, "")
        if logged != plan.status:
            problems.add(
                "plan-status",
                f"{name} is '{plan.status}' in the store, but the audit log's last status "
                f"for it is '{logged}': edited in the store, or a change was not audited",
            )
    for plan_id in sorted(set(replay.created) - stored):
        problems.add(
            "plan-missing",
            f"plan {plan_id} is in the audit log but its record is gone from the store",
        )


def verify_export(export: dict[str, Any], verifier: Verifier) -> Report:
    """Check an export offline: the unkeyed chain, the checkpoints' signatures, that
    every checkpoint matches the chain and that the export reaches the newest one."""
    if export.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a SOPHIE audit export (format {export.get('format')!r})")
    entries = [Entry.from_fields(str(e.get("id", "")), e) for e in export.get("entries", [])]
    head_raw = export.get("head")
    head = Head.from_fields({k: str(v) for k, v in head_raw.items()}) if head_raw else None
    checkpoints = open_checkpoints(
        list(export.get("checkpoints", [])),
        list(export.get("fileCheckpoints", [])),
        verifier,
        "the checkpoint file",
    )
    replay = Replay(watch=checkpoints.counts)
    for entry in entries:
        replay.feed(entry)
    return finish(replay, head=head, checkpoints=checkpoints)
