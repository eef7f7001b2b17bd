"""The audit chain's rules as tables: each row tampers with a log the way someone with
write access to Redis (or to an export) could, and names what online verification
(with the bot's key) and offline verification (public keys only) report.

An empty set is a promise that nothing is reported: the rows marked LIMIT are the
attacks the README says are not detected, kept here so the claim stays honest."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from nacl.signing import SigningKey

from bot.signer import KeyRing
from roles.attestation import EnvelopeError, open_envelope, sign_statement
from roles.audit_chain import (
    EXPORT_FORMAT,
    CheckpointSet,
    Entry,
    Head,
    Replay,
    StoredPlan,
    audit_key,
    chain_hash,
    checkpoint_digest,
    checkpoint_statement,
    entry_body,
    finish,
    head_mac,
    open_checkpoint,
    open_checkpoints,
    seal,
    verify_export,
)
from roles.canonical import sha256_digest

RING = KeyRing(SigningKey(b"\x02" * 32), {})
KEY = audit_key(bytes(RING.signing))
OTHER = KeyRing(SigningKey(b"\x03" * 32), {})
T0 = datetime(2026, 1, 1, tzinfo=UTC)

DOC1 = {"id": "plan_1", "steps": ["deploy"]}
DOC2 = {"id": "plan_2", "steps": ["build"]}
D1, D2 = sha256_digest(DOC1), sha256_digest(DOC2)

# Ten entries about two plans; checkpoints after entries 4 and 8; 9 and 10 after the last.
EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("plan.created", "plan_1", {"digest": D1, "status": "pending"}),
    ("decision.approve", "plan_1", {"digest": D1, "reason": ""}),
    ("plan.approved", "plan_1", {"note": "quorum met"}),
    ("plan.dispatching", "plan_1", {"note": ""}),
    ("plan.created", "plan_2", {"digest": D2, "status": "pending"}),
    ("plan.dispatched", "plan_1", {"run_id": 7}),
    ("plan.running", "plan_1", {"note": ""}),
    ("decision.veto", "plan_2", {"digest": D2, "reason": "no"}),
    ("plan.succeeded", "plan_1", {"note": ""}),
    ("decision.refused", "plan_2", {"decision": "approve", "reason": "already vetoed"}),
]
PLANS = [
    StoredPlan("plan_1", json.dumps(DOC1), D1, "succeeded"),
    StoredPlan("plan_2", json.dumps(DOC2), D2, "vetoed"),
]


@dataclass
class Log:
    entries: list[Entry]
    head: Head | None
    checkpoints: list[dict[str, Any]]
    witnesses: list[dict[str, Any]] = field(default_factory=list)  # the data-dir file


def _checkpoint(
    index: int, entries: list[Entry], previous: str, signer: KeyRing = RING
) -> dict[str, Any]:
    last = entries[-1] if entries else None
    statement = checkpoint_statement(
        index=index,
        count=len(entries),
        last_entry_id=last.id if last else "",
        head_hash=last.hash if last else "",
        taken_at=T0,
        previous=previous,
    )
    return sign_statement(statement, signer)


def build(
    checkpoint_at: tuple[int, ...] = (4, 8),
    keys: Callable[[int], tuple[bytes, str]] = lambda seq: (KEY, RING.keyid),
) -> Log:
    entries: list[Entry] = []
    cps: list[dict[str, Any]] = []
    seq, prev, previous = 0, "", ""
    for i, (kind, plan, detail) in enumerate(EVENTS, start=1):
        key, key_id = keys(i)
        s = seal(seq, prev, kind, plan, "U1", detail, 1000.0 + i, key)
        entries.append(Entry(f"{1000 + i}-0", s.body, s.prev, s.hash, s.mac, key_id))
        seq, prev = s.seq, s.hash
        if i in checkpoint_at:
            cps.append(_checkpoint(len(cps) + 1, entries, previous))
            previous = checkpoint_digest(json.loads(base64.b64decode(cps[-1]["payload"])))
    key, key_id = keys(seq)
    head = Head(seq, prev, head_mac(key, seq, prev), key_id, entries[-1].id)
    return Log(entries, head, cps, list(cps))


def judge(log: Log, online: bool, plans: list[StoredPlan] | None = None) -> set[str]:
    """Online: as bot/audit_log.py reads Redis (up to the head, with XLEN and the key);
    offline: as `sophie audit verify --file` reads an export."""
    source = "the file" if online else "the export"
    cps = open_checkpoints(log.checkpoints, log.witnesses, RING, source)
    replay = Replay(mac_key=KEY if online else None, key_id=RING.keyid, watch=cps.counts)
    fed = log.entries
    if online and log.head is not None:
        fed = fed[: log.head.seq]
    for entry in fed:
        replay.feed(entry)
    report = finish(
        replay,
        head=log.head,
        checkpoints=cps,
        stream_length=len(log.entries) if online else None,
        plans=plans,
    )
    assert report.ok == (not report.codes())
    return report.codes()


# -- what an attacker without the key can do to entries ------------------------------


def _edit(entry: Entry, **changes: Any) -> Entry:
    body = json.loads(entry.body)
    body.update(changes)
    return replace(entry, body=json.dumps(body))


def _rechain(entries: list[Entry], start: int, renumber: bool = False) -> list[Entry]:
    """Recompute prev/hash from index ``start`` on (the MACs need the key: left as they were)."""
    out = entries[:start]
    prev = out[-1].hash if out else ""
    for i, entry in enumerate(entries[start:], start=start + 1):
        body = entry.body
        if renumber:
            doc = json.loads(body)
            doc["seq"] = i
            body = json.dumps(doc)
        out.append(replace(entry, body=body, prev=prev, hash=chain_hash(prev, body)))
        prev = out[-1].hash
    return out


def _reset_head(log: Log, upto: int | None = None) -> None:
    """Point the head at the last (kept) entry, as an attacker would; no key for its MAC."""
    if upto is not None:
        log.entries = log.entries[:upto]
    last = log.entries[-1]
    log.head = Head(len(log.entries), last.hash, last.mac, RING.keyid, last.id)


def untouched(log: Log) -> None:
    pass


def edit_body(log: Log) -> None:
    log.entries[5] = _edit(log.entries[5], actor="U0MALLORY")


def edit_body_rehash_it(log: Log) -> None:
    e = _edit(log.entries[5], actor="U0MALLORY")
    log.entries[5] = replace(e, hash=chain_hash(e.prev, e.body))


def edit_and_rechain(log: Log) -> None:
    log.entries[5] = _edit(log.entries[5], actor="U0MALLORY")
    log.entries = _rechain(log.entries, 5)
    _reset_head(log)


def edit_after_last_checkpoint_and_rechain(log: Log) -> None:
    log.entries[8] = _edit(log.entries[8], kind="plan.failed")
    log.entries = _rechain(log.entries, 8)
    _reset_head(log)


def delete_middle(log: Log) -> None:
    del log.entries[5]


def delete_middle_rechain_renumber(log: Log) -> None:
    del log.entries[5]
    log.entries = _rechain(log.entries, 5, renumber=True)
    _reset_head(log)


def truncate_after_last_checkpoint(log: Log) -> None:
    _reset_head(log, upto=8)


def truncate_past_a_later_checkpoint(log: Log) -> None:
    _reset_head(log, upto=6)


def truncate_and_replay_a_captured_head(log: Log) -> None:
    # The attacker read the head when it was at entry 8 and kept it.
    old = build().entries[:8]
    log.entries = old
    log.head = Head(8, old[-1].hash, head_mac(KEY, 8, old[-1].hash), RING.keyid, old[-1].id)


def vanish(log: Log) -> None:
    log.entries, log.head = [], None


def vanish_with_redis_checkpoints(log: Log) -> None:
    log.entries, log.head, log.checkpoints = [], None, []


def vanish_everything(log: Log) -> None:
    log.entries, log.head, log.checkpoints, log.witnesses = [], None, [], []


def delete_newest_checkpoint_from_redis(log: Log) -> None:
    log.checkpoints = log.checkpoints[:1]


def delete_middle_checkpoint(log: Log) -> None:
    log.checkpoints = log.checkpoints[1:]
    log.witnesses = []


def edit_checkpoint_payload(log: Log) -> None:
    cp = copy.deepcopy(log.checkpoints[1])
    statement = json.loads(base64.b64decode(cp["payload"]))
    statement["predicate"]["count"] = 5
    cp["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    log.checkpoints[1] = cp
    log.witnesses = []


def checkpoint_signed_by_another_key(log: Log) -> None:
    log.checkpoints[1] = _checkpoint(2, log.entries[:8], "", signer=OTHER)
    log.witnesses = []


def delete_head(log: Log) -> None:
    log.head = None


def append_behind_the_head(log: Log) -> None:
    last = log.entries[-1]
    body = entry_body(11, "plan.approved", "plan_2", "U0MALLORY", {}, 2000.0)
    forged = Entry("2000-0", body, last.hash, chain_hash(last.hash, body), "0" * 64, RING.keyid)
    log.entries.append(forged)


def append_and_move_the_head(log: Log) -> None:
    append_behind_the_head(log)
    _reset_head(log)


CASES: list[tuple[Callable[[Log], None], set[str], set[str]]] = [
    # mutation, found online (keyed), found offline (export + public keys)
    (untouched, set(), set()),
    (edit_body, {"altered"}, {"altered"}),
    (edit_body_rehash_it, {"broken-link", "mac"}, {"broken-link"}),
    (edit_and_rechain, {"mac", "rewritten", "head"}, {"rewritten"}),
    # LIMIT offline: after the newest checkpoint only the keyed MACs (online) see it.
    (edit_after_last_checkpoint_and_rechain, {"mac", "head"}, set()),
    (
        delete_middle,
        {"broken-link", "sequence", "rewritten", "truncated"},
        {
            "broken-link",
            "sequence",
            "rewritten",
            "truncated",
        },
    ),
    (delete_middle_rechain_renumber, {"mac", "rewritten", "head"}, {"rewritten"}),
    # LIMIT offline: newest entries after the newest checkpoint.
    (truncate_after_last_checkpoint, {"head"}, set()),
    (truncate_past_a_later_checkpoint, {"truncated", "head"}, {"truncated"}),
    # LIMIT: a head captured earlier and put back, with no checkpoint after it.
    (truncate_and_replay_a_captured_head, set(), set()),
    (vanish, {"vanished"}, {"vanished"}),
    (
        vanish_with_redis_checkpoints,
        {"vanished", "checkpoint-missing"},
        {
            "vanished",
            "checkpoint-missing",
        },
    ),
    # LIMIT: log, head, checkpoints and the file all deleted (plans left behind are found).
    (vanish_everything, set(), set()),
    (delete_newest_checkpoint_from_redis, {"checkpoint-missing"}, {"checkpoint-missing"}),
    (
        delete_middle_checkpoint,
        {"checkpoint-order", "checkpoint-chain"},
        {
            "checkpoint-order",
            "checkpoint-chain",
        },
    ),
    (edit_checkpoint_payload, {"checkpoint-signature"}, {"checkpoint-signature"}),
    (checkpoint_signed_by_another_key, {"checkpoint-signature"}, {"checkpoint-signature"}),
    (delete_head, {"head-missing"}, {"head-missing"}),
    (append_behind_the_head, {"head"}, {"head"}),
    # LIMIT offline: a forged entry after the newest checkpoint (online: no MAC).
    (append_and_move_the_head, {"mac", "head"}, set()),
]


@pytest.mark.parametrize(("mutate", "online", "offline"), CASES, ids=[c[0].__name__ for c in CASES])
def test_tampering_is_found(
    mutate: Callable[[Log], None], online: set[str], offline: set[str]
) -> None:
    log = build()
    mutate(log)
    assert judge(log, online=True) == online
    assert judge(log, online=False) == offline


def test_problems_of_one_kind_are_counted_not_repeated() -> None:
    log = build()
    log.entries = [_edit(e, actor="U0MALLORY") for e in log.entries]
    cps = open_checkpoints(log.checkpoints, [], RING)
    replay = Replay(watch=cps.counts)
    for entry in log.entries:
        replay.feed(entry)
    problems = finish(replay, head=log.head, checkpoints=cps).problems
    assert [p.code for p in problems] == ["altered"]
    assert "(and 9 more like it)" in problems[0].message


# -- key rotation: MACs under an older key need a checkpoint over them ---------------

OLD_KEY = audit_key(b"\x09" * 32)


@pytest.mark.parametrize(
    ("checkpoint_at", "found"),
    [((4, 8), set()), ((2,), {"mac-unverifiable"}), ((), {"mac-unverifiable"})],
)
def test_entries_under_a_rotated_key_count_only_when_a_checkpoint_covers_them(
    checkpoint_at: tuple[int, ...], found: set[str]
) -> None:
    log = build(checkpoint_at, keys=lambda seq: (OLD_KEY, "old") if seq <= 4 else (KEY, RING.keyid))
    assert judge(log, online=True) == found
    assert judge(log, online=False) == set()


def test_an_entry_with_an_old_key_id_but_forged_is_still_caught_by_its_checkpoint() -> None:
    log = build((4, 8), keys=lambda seq: (OLD_KEY, "old") if seq <= 4 else (KEY, RING.keyid))
    log.entries[1] = _edit(log.entries[1], actor="U0MALLORY")
    log.entries = _rechain(log.entries, 1)
    _reset_head(log)
    assert "rewritten" in judge(log, online=True)


# -- plans against the log ------------------------------------------------------------


def _plans(**changes: Any) -> list[StoredPlan]:
    return [replace(PLANS[0], **changes), PLANS[1]]


PLAN_CASES: list[tuple[str, list[StoredPlan], set[str]]] = [
    ("as the log says", PLANS, set()),
    ("status edited", _plans(status="approved"), {"plan-status"}),
    ("doc edited", _plans(doc=json.dumps({**DOC1, "steps": ["rollback"]})), {"plan-doc"}),
    (
        "doc and digest replaced together",
        _plans(doc=json.dumps(DOC2), digest=D2),
        {"plan-digest"},
    ),
    ("doc is not JSON", _plans(doc="{"), {"plan-doc"}),
    ("fields deleted", _plans(doc=None), {"plan-fields"}),
    ("record deleted", PLANS[1:], {"plan-missing"}),
    (
        "record written behind the bot's back",
        [*PLANS, StoredPlan("plan_3", json.dumps(DOC1), D1, "approved")],
        {"plan-unlogged"},
    ),
]


@pytest.mark.parametrize(("name", "plans", "found"), PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_plans_are_checked_against_the_log(
    name: str, plans: list[StoredPlan], found: set[str]
) -> None:
    assert judge(build(), online=True, plans=plans) == found


def test_a_decision_on_another_digest_is_reported() -> None:
    log = build(())
    entry = log.entries[1]
    body = json.loads(entry.body)
    body["detail"]["digest"] = D2
    sealed = seal(
        1, log.entries[0].hash, "decision.approve", "plan_1", "U1", body["detail"], 1.0, KEY
    )
    log.entries = [
        log.entries[0],
        Entry("x-1", sealed.body, sealed.prev, sealed.hash, sealed.mac, RING.keyid),
    ]
    log.head = Head(2, sealed.hash, sealed.head_mac, RING.keyid, "x-1")
    plans = [StoredPlan("plan_1", json.dumps(DOC1), D1, "pending")]
    assert judge(log, online=True, plans=plans) == {"plan-decision"}


# -- checkpoints as envelopes -----------------------------------------------------------


def test_a_checkpoint_is_not_a_decision_and_a_decision_is_not_a_checkpoint() -> None:
    cp = build().checkpoints[0]
    with pytest.raises(EnvelopeError, match="not a SOPHIE decision"):
        open_envelope(cp, RING)
    decision = sign_statement(
        {"_type": "https://in-toto.io/Statement/v1", "predicateType": "x", "predicate": {}}, RING
    )
    with pytest.raises(EnvelopeError, match="not a SOPHIE audit checkpoint"):
        open_checkpoint(decision, RING)
    with pytest.raises(EnvelopeError, match="malformed"):
        open_checkpoint("not an envelope", RING)


def test_checkpoints_chain_by_the_digest_of_what_was_signed() -> None:
    first, second = build().checkpoints
    a, b = open_checkpoint(first, RING), open_checkpoint(second, RING)
    assert (a.index, a.count, a.previous) == (1, 4, "")
    assert (b.index, b.count, b.previous) == (2, 8, a.digest)
    assert a.keyid == RING.keyid


def test_an_empty_log_with_a_checkpoint_at_zero_verifies() -> None:
    cp = _checkpoint(1, [], "")
    cps = open_checkpoints([cp], [cp], RING)
    assert finish(Replay(mac_key=KEY, key_id=RING.keyid), head=None, checkpoints=cps).ok


def test_a_head_under_another_key_needs_a_checkpoint() -> None:
    log = build((4,))
    assert log.head is not None
    log.head = replace(log.head, mac=head_mac(OLD_KEY, 10, log.head.hash), key_id="old")
    assert judge(log, online=True) == {"mac-unverifiable"}


def test_an_export_round_trips_and_other_formats_are_refused() -> None:
    log = build()
    assert log.head is not None
    export = {
        "format": EXPORT_FORMAT,
        "entries": [e.to_json() for e in log.entries],
        "head": log.head.to_json(),
        "checkpoints": log.checkpoints,
        "fileCheckpoints": log.witnesses,
    }
    report = verify_export(json.loads(json.dumps(export)), RING)
    assert report.ok and report.count == 10 and not report.macs_checked
    assert "2 signed checkpoint(s), newest at entry 8" in report.summary()
    with pytest.raises(ValueError, match="not a SOPHIE audit export"):
        verify_export({**export, "format": "other"}, RING)
    assert not verify_export(export, OTHER).ok  # the checkpoints need the right keys


def test_the_incremental_replay_resumes_after_a_checkpoint() -> None:
    log = build()
    start = log.entries[7]
    replay = Replay(mac_key=KEY, key_id=RING.keyid, start_count=8, start_hash=start.hash)
    for entry in log.entries[8:]:
        replay.feed(entry)
    assert finish(replay, head=log.head, checkpoints=CheckpointSet([], []), stream_length=10).ok
