"""Plans, decisions, runs, trust, memory and the audit log in Redis.

Every state change that can race (two approvers at once, a retried request,
two replicas) is one Lua script, so it is atomic on the server.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from bot.metrics import EVENTS
from roles.plan import Plan
from roles.records import (
    Actor,
    DecideResult,
    DecisionRecord,
    Link,
    PlanRecord,
    PlanStatus,
    RunInfo,
    Thread,
)

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
if ARGV[4] == 'veto' then
  status = 'vetoed'
  redis.call('HSET', KEYS[1], 'status', status, 'updated', ARGV[5])
elseif ARGV[7] == '1' then
  status = 'approved'
  redis.call('HSET', KEYS[1], 'status', status, 'updated', ARGV[5])
end
return {1, status, ''}
"""

_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
for i = 3, #ARGV do
  if ARGV[i] == status then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], 'note', ARGV[2], 'updated', ARGV[#ARGV])
    return 1
  end
end
return 0
"""


# Delete a lease only if we still hold it (it may have expired and been taken).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


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
    return RunInfo(**data)


class RedisStore:
    """Implements :class:`roles.ports.PlanStore`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client
        self._decide = client.register_script(_DECIDE)
        self._release = client.register_script(_RELEASE)
        self._transition = client.register_script(_TRANSITION)

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def claim_event(self, key: str, ttl_seconds: int) -> bool:
        return bool(await self.r.set(_key("seen", key), "1", nx=True, ex=ttl_seconds))

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
        done = await self._transition(
            keys=[_key("plan", plan_id)],
            args=[to.value, note, *(s.value for s in from_), str(time.time())],
        )
        if done:
            await self.audit(f"plan.{to.value}", plan_id, "sophie", {"note": note})
        return bool(done)

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

    async def claim_dispatch(self, plan_id: str, owner: str, lease_seconds: float) -> bool:
        """A lease on talking to GitHub for this plan (one dispatch call in flight at most)."""
        key = _key("plan", plan_id, "dispatching")
        return bool(await self.r.set(key, owner, nx=True, px=int(lease_seconds * 1000)))

    async def release_dispatch(self, plan_id: str, owner: str) -> None:
        await self._release(keys=[_key("plan", plan_id, "dispatching")], args=[owner])

    async def claim_delivery(self, delivery_id: str) -> bool:
        """True the first time a webhook delivery id is seen (GitHub redelivers)."""
        return bool(
            await self.r.set(_key("delivery", delivery_id), "1", nx=True, ex=DELIVERY_TTL_SECONDS)
        )

    async def recent(self, limit: int) -> list[PlanRecord]:
        ids = await self.r.zrevrange(_key("plans"), 0, limit - 1)
        records = [await self.load(i.decode()) for i in ids]
        return [r for r in records if r is not None]

    async def trust(self, key: str, initial: float) -> float:
        value = await self.r.hget(_key("trust"), key)
        return float(value) if value is not None else initial

    async def set_trust(self, key: str, value: float) -> None:
        await self.r.hset(_key("trust"), key, str(value))

    async def remember(self, plan: Plan, status: PlanStatus) -> None:
        key = _key("memory", plan.target.repo, plan.interpretation.intent.value)
        entry = json.dumps(
            {
                "plan_id": plan.id,
                "status": status.value,
                "summary": plan.interpretation.summary,
                "environment": plan.target.environment,
            }
        )
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, 49)
            await pipe.execute()

    async def precedent(self, repo: str, intent: str, limit: int) -> list[str]:
        raw = await self.r.lrange(_key("memory", repo, intent), 0, limit - 1)
        out = []
        for item in raw:
            data = json.loads(item)
            out.append(
                f"{data['plan_id']} ({data['environment']}, {data['status']}): {data['summary']}"
            )
        return out

    # -- audit log: an append-only, hash-chained stream ---------------------

    async def audit(self, kind: str, plan_id: str, actor: str, detail: dict[str, Any]) -> str:
        """Append an entry whose hash covers the previous entry's hash."""
        EVENTS.labels(kind=kind).inc()
        stream, head = _key("audit"), _key("audit", "head")
        body = json.dumps(
            {"kind": kind, "plan": plan_id, "actor": actor, "detail": detail, "at": time.time()},
            sort_keys=True,
        )
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(head)
                    prev = (await pipe.get(head) or b"").decode()
                    digest = hashlib.sha256((prev + body).encode()).hexdigest()
                    pipe.multi()
                    pipe.xadd(stream, {"body": body, "prev": prev, "hash": digest})
                    pipe.set(head, digest)
                    await pipe.execute()
                    return digest
                except WatchError:
                    continue

    async def verify_audit(self) -> tuple[int, str | None]:
        """Replay the chain; returns (entries checked, first problem or None)."""
        prev, count, last_id = "", 0, "-"
        while True:
            batch = await self.r.xrange(_key("audit"), min=last_id, count=500)
            if last_id != "-":
                batch = batch[1:]
            if not batch:
                break
            for entry_id, fields in batch:
                f = {k.decode(): v.decode() for k, v in fields.items()}
                if f["prev"] != prev:
                    return count, f"entry {entry_id.decode()} does not follow the previous one"
                if hashlib.sha256((prev + f["body"]).encode()).hexdigest() != f["hash"]:
                    return count, f"entry {entry_id.decode()} was altered"
                prev = f["hash"]
                count += 1
                last_id = entry_id.decode()
        head = (await self.r.get(_key("audit", "head")) or b"").decode()
        if head != prev:
            return count, "the chain head does not match the last entry"
        return count, None
