"""Plans, decisions, runs, trust, memory and the audit log in Redis.

Every state change that can race (two approvers at once, a retried request,
two replicas) is one Lua script, so it is atomic on the server.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from bot.audit_log import AuditLog
from bot.metrics import EVENTS
from roles.outcomes import Outcome
from roles.plan import Plan
from roles.records import (
    Actor,
    DecideResult,
    DecisionRecord,
    DeployLock,
    Link,
    PlanRecord,
    PlanStatus,
    ProducedChange,
    RunInfo,
    SlotClaim,
    Thread,
)

log = logging.getLogger("sophie.store")

PREFIX = "sophie:"
RUN_INDEX_TTL_SECONDS = 30 * 86400
DELIVERY_TTL_SECONDS = 7 * 86400

_DECIDE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, '', 'I have no record of that plan.'} end
if status ~= 'pending' then return {0, status, 'This plan is already ' .. status .. '.'} end
if redis.call('HGET', KEYS[1], 'digest') ~= ARGV[1] then
  return {0, status, 'The plan changed since this card was posted.'}
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return {0, status, 'You have already decided on this plan.'}
end
-- Optimistic concurrency: the caller judged the quorum on ARGV[6] earlier decisions.
if redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[6]) then
  return {0, status, 'conflict'}
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
-- KEYS[4], KEYS[5]: the status indexes of pending and approved plans (for the reconciler)
local id = string.sub(KEYS[1], string.len('sophie:plan:') + 1)
if ARGV[4] == 'veto' then
  status = 'vetoed'
  redis.call('HSET', KEYS[1], 'status', status, 'updated', ARGV[5])
  redis.call('ZREM', KEYS[4], id)
elseif ARGV[7] == '1' then
  status = 'approved'
  redis.call('HSET', KEYS[1], 'status', status, 'updated', ARGV[5])
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZADD', KEYS[5], ARGV[5], id)
end
return {1, status, ''}
"""

_TRANSITION = """
-- KEYS[2]: the status index of ARGV[1]; KEYS[i] (i >= 3): the index of the status ARGV[i].
-- Only plans that may still need moving on are indexed (for the reconciler).
local ACTIVE = {pending = true, approved = true, dispatching = true, running = true}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
for i = 3, #ARGV do
  if ARGV[i] == status then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], 'note', ARGV[2], 'updated', ARGV[#ARGV])
    local id = string.sub(KEYS[1], string.len('sophie:plan:') + 1)
    redis.call('ZREM', KEYS[i], id)
    if ACTIVE[ARGV[1]] then redis.call('ZADD', KEYS[2], ARGV[#ARGV], id) end
    return 1
  end
end
return 0
"""


# Count a hit on every counter, or on none if any is at its limit (fixed windows).
_RATE = """
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[i]) then return 0 end
end
for i, key in ipairs(KEYS) do
  redis.call('INCR', key)
  redis.call('EXPIRE', key, ARGV[#ARGV])
end
return 1
"""

# One deploy per repo@environment: take the slot, or wait in its queue (FIFO). A slot
# held by a plan that has ended (a crash between its end and its release) is taken over;
# a lock makes everyone wait. Returns {taken, position, holder, newly queued}.
_TAKE_SLOT = """
local active = redis.call('GET', KEYS[1])
local plan = ARGV[1]
if active and active ~= plan then
  local status = redis.call('HGET', ARGV[2] .. active, 'status')
  local ended = (not status)
  for i = 3, #ARGV do if status == ARGV[i] then ended = true end end
  if ended then redis.call('DEL', KEYS[1]); active = false end
end
local locked = redis.call('EXISTS', KEYS[3]) == 1
if not locked and (not active or active == plan) then
  local head = redis.call('LINDEX', KEYS[2], 0)
  if (not active) and head and head ~= plan then
    -- others were queued first: join behind them
  else
    redis.call('SET', KEYS[1], plan)
    redis.call('LREM', KEYS[2], 0, plan)
    return {1, 0, plan, 0}
  end
end
local pos = redis.call('LPOS', KEYS[2], plan)
local new = 0
if not pos then
  redis.call('RPUSH', KEYS[2], plan)
  pos = redis.call('LLEN', KEYS[2]) - 1
  new = 1
end
return {0, pos + 1, active or '', new}
"""

# The run ended: free the slot and hand it to the head of the queue (reserved for it).
_RELEASE_SLOT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return '' end
local head = redis.call('LPOP', KEYS[2])
if not head then return '' end
redis.call('SET', KEYS[1], head)
return head
"""

# Delete a lease only if we still hold it (it may have expired and been taken).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# Take a lease that is free or already ours (re-entrant for the same owner).
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


# The states a plan can be left in by a failure between two writes; the reconciler
# finds them through one sorted set per state (plan id → when it entered the state).
ACTIVE = (PlanStatus.PENDING, PlanStatus.APPROVED, PlanStatus.DISPATCHING, PlanStatus.RUNNING)


def _status_index(status: PlanStatus) -> str:
    return _key("status", status.value)


def _decision_json(d: DecisionRecord) -> str:
    return json.dumps(
        {
            "actor": asdict(d.actor),
            "decision": d.decision,
            "at": d.at.isoformat(),
            "envelope": d.envelope,
            "groups": list(d.groups),
            "reason": d.reason,
        }
    )


def _decision_from(raw: str) -> DecisionRecord:
    data = json.loads(raw)
    return DecisionRecord(
        actor=Actor(**data["actor"]),
        decision=data["decision"],
        at=datetime.fromisoformat(data["at"]),
        envelope=data["envelope"],
        groups=tuple(data.get("groups", ())),
        reason=data.get("reason", ""),
    )


def run_to_json(run: RunInfo) -> str:
    return json.dumps(asdict(run))


def run_from_json(raw: str) -> RunInfo:
    data: dict[str, Any] = json.loads(raw)
    data["artifacts"] = [Link(**a) for a in data.get("artifacts", [])]
    data["release_assets"] = [Link(**a) for a in data.get("release_assets", [])]
    if data.get("change") is not None:
        data["change"] = ProducedChange.from_json(data["change"])
    return RunInfo(**data)


class RedisStore:
    """Implements :class:`roles.ports.PlanStore`."""

    def __init__(self, client: aioredis.Redis, audit_log: AuditLog | None = None) -> None:
        self.r = client
        # The runtime passes the keyed log; without one, appends use a throw-away key
        # (tests, tools) and `sophie audit verify` with the real key reports them.
        self.audit_log = audit_log if audit_log is not None else AuditLog.ephemeral(client)
        self._decide = client.register_script(_DECIDE)
        self._release = client.register_script(_RELEASE)
        self._transition = client.register_script(_TRANSITION)
        self._rate = client.register_script(_RATE)
        self._lease = client.register_script(_LEASE)
        self._take_slot = client.register_script(_TAKE_SLOT)
        self._release_slot = client.register_script(_RELEASE_SLOT)

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def claim_event(self, key: str, ttl_seconds: int) -> bool:
        return bool(await self.r.set(_key("seen", key), "pending", nx=True, ex=ttl_seconds))

    async def event_state(self, key: str) -> str | None:
        value = await self.r.get(_key("seen", key))
        return value.decode() if value else None

    async def confirm_event(self, key: str, ttl_seconds: int) -> None:
        await self.r.set(_key("seen", key), "done", ex=ttl_seconds)

    async def release_event(self, key: str) -> None:
        await self.r.delete(_key("seen", key))

    async def within_rate(self, counters: list[tuple[str, int]], window_seconds: int) -> bool:
        window = int(time.time() // window_seconds)
        keys = [_key("rate", name, str(window)) for name, _ in counters]
        args = [str(limit) for _, limit in counters] + [str(window_seconds)]
        return bool(await self._rate(keys=keys, args=args))

    # -- deploy slots, queues and locks (one deploy per repo@environment) -------

    def _slot_keys(self, slot: str) -> list[str]:
        return [_key("slot", slot), _key("slot", slot, "queue"), _key("lock", slot)]

    async def take_slot(self, slot: str, plan_id: str) -> SlotClaim:
        final = [s.value for s in PlanStatus if s.final]
        taken, position, holder, new = await self._take_slot(
            keys=self._slot_keys(slot), args=[plan_id, _key("plan", ""), *final]
        )
        holder_text = holder.decode() if isinstance(holder, bytes) else str(holder)
        return SlotClaim(bool(taken), int(position), holder_text, bool(new))

    async def release_slot(self, slot: str, plan_id: str) -> str | None:
        head = await self._release_slot(keys=self._slot_keys(slot), args=[plan_id])
        text = head.decode() if isinstance(head, bytes) else str(head or "")
        return text or None

    async def lock(self, slot: str, lock: DeployLock) -> bool:
        return bool(await self.r.set(_key("lock", slot), json.dumps(asdict(lock)), nx=True))

    async def unlock(self, slot: str) -> str | None:
        """Remove the lock; the plan at the head of the queue (if any) may start."""
        if not await self.r.delete(_key("lock", slot)):
            return None
        return await self.release_slot(slot, "")

    async def locks(self) -> dict[str, DeployLock]:
        found: dict[str, DeployLock] = {}
        async for key in self.r.scan_iter(match=_key("lock", "*"), count=200):
            raw = await self.r.get(key)
            if raw:
                found[key.decode().removeprefix(_key("lock", ""))] = DeployLock(**json.loads(raw))
        return found

    async def slot(self, slot: str) -> tuple[str | None, list[str]]:
        """Who holds the slot, and who waits (in order)."""
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(_key("slot", slot))
            pipe.lrange(_key("slot", slot, "queue"), 0, -1)
            holder, queue = await pipe.execute()
        return (holder.decode() if holder else None), [q.decode() for q in queue]

    async def save_new(self, record: PlanRecord) -> None:
        plan = record.plan
        now = str(time.time())
        mapping = {
            "doc": json.dumps(plan.document()),
            "digest": plan.digest,
            "status": record.status.value,
            "channel": record.thread.channel,
            "thread_ts": record.thread.thread_ts,
            "card_ts": record.card_ts or "",
            "note": record.note,
            "created": now,
            "updated": now,
        }
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(_key("plan", plan.id), mapping=mapping)
            pipe.zadd(_key("plans"), {plan.id: plan.created_at.timestamp()})
            if record.status in ACTIVE:
                pipe.zadd(_status_index(record.status), {plan.id: float(now)})
            await pipe.execute()
        await self.audit(
            "plan.created",
            plan.id,
            plan.requester.user_id,
            {"digest": plan.digest, "status": record.status.value},
        )

    async def load(self, plan_id: str) -> PlanRecord | None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hgetall(_key("plan", plan_id))
            pipe.hgetall(_key("plan", plan_id, "decisions"))
            pipe.lrange(_key("plan", plan_id, "order"), 0, -1)
            raw, decisions, order = await pipe.execute()
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if "doc" not in fields or "status" not in fields:
            # Only a late write's fields (a card ts, a run) on a plan that is gone: a
            # fragment is no plan (the card then says its plan no longer exists).
            log.warning("plan %s has no document: treated as gone", plan_id)
            return None
        by_user = {k.decode(): v.decode() for k, v in decisions.items()}
        run_raw = fields.get("run")
        return PlanRecord(
            plan=Plan.from_document(json.loads(fields["doc"])),
            status=PlanStatus(fields["status"]),
            thread=Thread(channel=fields["channel"], thread_ts=fields["thread_ts"]),
            card_ts=fields.get("card_ts") or None,
            decisions=[_decision_from(by_user[u.decode()]) for u in order if u.decode() in by_user],
            run=run_from_json(run_raw) if run_raw else None,
            note=fields.get("note", ""),
        )

    async def set_card(self, plan_id: str, card_ts: str) -> None:
        await self.r.hset(_key("plan", plan_id), "card_ts", card_ts)

    async def decide(
        self, plan_id: str, digest: str, record: DecisionRecord, seen: int, completes: bool
    ) -> DecideResult:
        """Record a decision if the plan is still pending, unchanged, and has exactly
        ``seen`` decisions (else ``reason == "conflict"``: reload and judge again).
        ``completes`` moves the plan to approved in the same atomic step."""
        accepted, status, reason = await self._decide(
            keys=[
                _key("plan", plan_id),
                _key("plan", plan_id, "decisions"),
                _key("plan", plan_id, "order"),
                _status_index(PlanStatus.PENDING),
                _status_index(PlanStatus.APPROVED),
            ],
            args=[
                digest,
                record.actor.user_id,
                _decision_json(record),
                record.decision,
                str(time.time()),
                str(seen),
                "1" if completes else "0",
            ],
        )
        status_text = status.decode() if isinstance(status, bytes) else str(status)
        reason_text = reason.decode() if isinstance(reason, bytes) else str(reason)
        if accepted:
            await self.audit(
                f"decision.{record.decision}",
                plan_id,
                record.actor.user_id,
                {"digest": digest, "reason": record.reason},
            )
            if completes:
                await self.audit("plan.approved", plan_id, "sophie", {"note": "quorum met"})
        return DecideResult(
            accepted=bool(accepted),
            status=PlanStatus(status_text) if status_text else PlanStatus.ERROR,
            reason=reason_text,
        )

    async def transition(
        self, plan_id: str, from_: set[PlanStatus], to: PlanStatus, note: str = ""
    ) -> bool:
        froms = list(from_)
        done = await self._transition(
            keys=[_key("plan", plan_id), _status_index(to), *(_status_index(s) for s in froms)],
            args=[to.value, note, *(s.value for s in froms), str(time.time())],
        )
        if done:
            await self.audit(f"plan.{to.value}", plan_id, "sophie", {"note": note})
        return bool(done)

    async def add_change_decision(
        self, plan_id: str, change_digest: str, record: DecisionRecord
    ) -> bool:
        # HSETNX: one decision per person on a change, however many clicks race.
        key = _key("plan", plan_id, "change", change_digest)
        return bool(await self.r.hsetnx(key, record.actor.user_id, _decision_json(record)))

    async def change_decisions(self, plan_id: str, change_digest: str) -> list[DecisionRecord]:
        raw = await self.r.hgetall(_key("plan", plan_id, "change", change_digest))
        decisions = [_decision_from(v.decode()) for v in raw.values()]
        return sorted(decisions, key=lambda d: d.at)

    async def save_run(self, plan_id: str, run: RunInfo) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(
                _key("plan", plan_id),
                mapping={"run": run_to_json(run), "updated": str(time.time())},
            )
            if run.run_id is not None:  # webhooks name runs; find their plan
                pipe.set(_key("run", str(run.run_id)), plan_id, ex=RUN_INDEX_TTL_SECONDS)
            await pipe.execute()

    async def plan_for_run(self, run_id: int) -> str | None:
        value = await self.r.get(_key("run", str(run_id)))
        return value.decode() if value else None

    async def prepared_rollback(self, key: str) -> tuple[str, str, str] | None:
        """(deployed sha, rollback sha, ref) prepared when the last deployment finished."""
        raw = await self.r.get(_key("rollback", key))
        if not raw:
            return None
        data = json.loads(raw)
        return data["current"], data["sha"], data["ref"]

    async def set_prepared_rollback(self, key: str, current: str, sha: str, ref: str) -> None:
        doc = json.dumps({"current": current, "sha": sha, "ref": ref, "at": time.time()})
        await self.r.set(_key("rollback", key), doc)

    async def claim_delivery(self, delivery_id: str) -> bool:
        """True the first time a webhook delivery id is seen (GitHub redelivers)."""
        return bool(
            await self.r.set(_key("delivery", delivery_id), "1", nx=True, ex=DELIVERY_TTL_SECONDS)
        )

    async def recent(self, limit: int) -> list[PlanRecord]:
        ids = await self.r.zrevrange(_key("plans"), 0, limit - 1)
        records = [await self.load(i.decode()) for i in ids]
        return [r for r in records if r is not None]

    # -- Ψ: outcomes -------------------------------------------------------------

    async def record_outcome(self, outcome: Outcome) -> bool:
        raw = json.dumps(outcome.to_json())
        if not await self.r.hsetnx(_key("outcome"), outcome.plan_id, raw):
            return False
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zadd(_key("outcomes"), {outcome.plan_id: outcome.ended_at})
            where = _key("outcomes", f"{outcome.repo}@{outcome.environment}")
            pipe.zadd(where, {outcome.plan_id: outcome.ended_at})
            await pipe.execute()
        return True

    async def update_outcome(self, outcome: Outcome) -> None:
        await self.r.hset(_key("outcome"), outcome.plan_id, json.dumps(outcome.to_json()))

    async def _outcomes(self, ids: list[bytes]) -> list[Outcome]:
        if not ids:
            return []
        raw = await self.r.hmget(_key("outcome"), [i.decode() for i in ids])
        return [Outcome.from_json(json.loads(r)) for r in raw if r is not None]

    async def outcomes_in(self, repo: str, environment: str, limit: int) -> list[Outcome]:
        ids = await self.r.zrevrange(_key("outcomes", f"{repo}@{environment}"), 0, limit - 1)
        return await self._outcomes(ids)

    async def outcomes_between(self, start: float, end: float, limit: int) -> list[Outcome]:
        ids = await self.r.zrangebyscore(_key("outcomes"), start, f"({end}", start=0, num=limit)
        return await self._outcomes(ids)

    async def trusts(self) -> dict[str, float]:
        raw = await self.r.hgetall(_key("trust"))
        return {k.decode(): float(v) for k, v in raw.items()}

    async def trust(self, key: str, initial: float) -> float:
        value = await self.r.hget(_key("trust"), key)
        return float(value) if value is not None else initial

    async def set_trust(self, key: str, value: float) -> None:
        await self.r.hset(_key("trust"), key, str(value))

    # -- audit log: keyed hash chain with signed checkpoints (bot/audit_log.py) ----

    async def audit(self, kind: str, plan_id: str, actor: str, detail: dict[str, Any]) -> str:
        """Append an entry whose hash covers the previous entry's hash (and a keyed MAC)."""
        EVENTS.labels(kind=kind).inc()
        return await self.audit_log.append(kind, plan_id, actor, detail)

    async def verify_audit(self) -> tuple[int, str | None]:
        """Replay the chain, head, checkpoints and plans; (entries checked, problems or None)."""
        report = await self.audit_log.verify()
        return report.count, "; ".join(p.message for p in report.problems) or None

    # -- durability: leases, job memos, the status index (the reconciler) -----------------

    async def claim_lease(self, key: str, owner: str, seconds: float) -> bool:
        """Free, or already ``owner``'s (the same job run again): take it for ``seconds``."""
        return bool(await self._lease(keys=[_key("lease", key)], args=[owner, int(seconds * 1000)]))

    async def release_lease(self, key: str, owner: str) -> None:
        await self._release(keys=[_key("lease", key)], args=[owner])

    async def memo(self, key: str) -> dict[str, str]:
        raw = await self.r.hgetall(_key("memo", key))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def set_memo(self, key: str, name: str, value: str, ttl_seconds: int) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(_key("memo", key), name, value)
            pipe.expire(_key("memo", key), ttl_seconds)
            await pipe.execute()

    async def idle_plans(
        self, status: PlanStatus, idle_seconds: float, without_card: bool = False, limit: int = 100
    ) -> list[str]:
        """Plans that entered ``status`` over ``idle_seconds`` ago (the index's score) and whose
        record has not changed since (its ``updated`` field). Index entries of plans that
        are gone or have moved on are dropped (statuses never go back)."""
        index = _status_index(status)
        cutoff = time.time() - idle_seconds
        ids = [i.decode() for i in await self.r.zrangebyscore(index, "-inf", cutoff)]
        if not ids:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for plan_id in ids:
                pipe.hmget(_key("plan", plan_id), ["status", "updated", "card_ts"])
            rows = await pipe.execute()
        found: list[str] = []
        stale: list[str] = []
        for plan_id, (now_status, updated, card_ts) in zip(ids, rows, strict=True):
            if now_status is None or now_status.decode() != status.value:
                stale.append(plan_id)
            elif float(updated or 0) <= cutoff and not (without_card and card_ts):
                found.append(plan_id)
        if stale:
            await self.r.zrem(index, *stale)
        return found[:limit]
