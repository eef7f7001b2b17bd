"""The Redis store against a real redis-server: atomic transitions, audit chain, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.redis_store import RedisStore
from roles import diff_engine, integrator, navigator
from roles.constitution import load_constitution
from roles.offline_planner import OfflinePlanner
from roles.records import Actor, DecisionRecord, PlanRecord, PlanStatus, Thread
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    client = aioredis.Redis.from_url(redis_url)
    yield RedisStore(client)
    await client.aclose()


async def new_record(text: str = "deploy auth to staging") -> PlanRecord:
    constitution = load_constitution(ROOT / "constitution.yml")
    reading = navigator.interpret(text, constitution)
    proposal = await OfflinePlanner().propose(reading, constitution, [])
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, proposal.confidence)
    plan = integrator.assemble(
        integrator.plan_id_for(text),
        datetime.now(UTC),
        reading,
        Actor("T1", "U0REQUEST1"),
        proposal,
        verdict,
        constitution,
    )
    return PlanRecord(plan=plan, status=PlanStatus.PENDING, thread=Thread("C1", "1.0"))


def decision(user: str, kind: str = "approve") -> DecisionRecord:
    return DecisionRecord(
        actor=Actor("T1", user),
        decision=kind,  # type: ignore[arg-type]
        at=datetime.now(UTC),
        envelope={"sig": user},
    )


async def test_save_and_load_round_trip(store: RedisStore) -> None:
    record = await new_record()
    await store.save_new(record)
    loaded = await store.load(record.plan.id)
    assert loaded is not None
    assert loaded.plan == record.plan and loaded.plan.digest == record.plan.digest
    assert loaded.status == PlanStatus.PENDING and loaded.thread == record.thread
    assert await store.load("plan_doesnotexist") is None


async def test_one_decision_per_person_under_concurrency(store: RedisStore) -> None:
    record = await new_record()
    await store.save_new(record)
    digest = record.plan.digest
    results = await asyncio.gather(
        *[store.decide(record.plan.id, digest, decision("U0ALICE001"), 0, False) for _ in range(20)]
    )
    assert sum(r.accepted for r in results) == 1
    loaded = await store.load(record.plan.id)
    assert loaded is not None and len(loaded.decisions) == 1


async def test_a_decision_judged_on_stale_state_is_a_conflict(store: RedisStore) -> None:
    record = await new_record()
    await store.save_new(record)
    digest = record.plan.digest
    first = await store.decide(record.plan.id, digest, decision("U0ALICE001"), 0, False)
    stale = await store.decide(record.plan.id, digest, decision("U0BOBBY002"), 0, True)
    assert first.accepted and not stale.accepted and stale.reason == "conflict"
    done = await store.decide(record.plan.id, digest, decision("U0BOBBY002"), 1, True)
    assert done.accepted and done.status == PlanStatus.APPROVED
    loaded = await store.load(record.plan.id)
    assert loaded is not None and loaded.status == PlanStatus.APPROVED
    late = await store.decide(record.plan.id, digest, decision("U0CAROL003"), 2, True)
    assert not late.accepted and "approved" in late.reason


async def test_decision_refused_for_wrong_digest_or_state(store: RedisStore) -> None:
    record = await new_record()
    await store.save_new(record)
    wrong = await store.decide(record.plan.id, "0" * 64, decision("U0ALICE001"), 0, True)
    assert not wrong.accepted and "changed" in wrong.reason
    veto = await store.decide(
        record.plan.id, record.plan.digest, decision("U0BOBBY002", "veto"), 0, False
    )
    assert veto.accepted and veto.status == PlanStatus.VETOED
    late = await store.decide(record.plan.id, record.plan.digest, decision("U0ALICE001"), 1, True)
    assert not late.accepted and "vetoed" in late.reason


async def test_transition_is_won_once(store: RedisStore) -> None:
    record = await new_record()
    await store.save_new(record)
    wins = await asyncio.gather(
        *[
            store.transition(record.plan.id, {PlanStatus.PENDING}, PlanStatus.APPROVED)
            for _ in range(10)
        ]
    )
    assert wins.count(True) == 1


async def test_audit_chain_verifies_and_detects_tampering(store: RedisStore) -> None:
    record = await new_record()
    await store.save_new(record)
    await store.transition(record.plan.id, {PlanStatus.PENDING}, PlanStatus.APPROVED)
    count, problem = await store.verify_audit()
    assert count == 2 and problem is None
    entries = await store.r.xrange("sophie:audit")
    first_id, fields = entries[0]
    await store.r.xdel("sophie:audit", first_id)
    await store.r.xadd("sophie:audit", {k: v for k, v in fields.items()})
    _, problem = await store.verify_audit()
    assert problem is not None


async def test_state_survives_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "persistent", persistent=True).start()
    try:
        client = aioredis.Redis.from_url(server.url)
        record = await new_record()
        await RedisStore(client).save_new(record)
        await client.aclose()
        server.kill()  # no graceful save: the append-only file must carry the state
        server.start()
        client = aioredis.Redis.from_url(server.url)
        loaded = await RedisStore(client).load(record.plan.id)
        await client.aclose()
        assert loaded is not None and loaded.plan.digest == record.plan.digest
    finally:
        server.stop()


async def test_a_late_write_on_a_deleted_plan_is_no_plan(store: RedisStore) -> None:
    """A card ts recorded just after the plan was deleted leaves a fragment of a hash:
    it loads as gone (the card then says so), never as a KeyError."""
    await store.set_card("plan_0123456789abcdef", "1700000000.000100")
    assert await store.load("plan_0123456789abcdef") is None
