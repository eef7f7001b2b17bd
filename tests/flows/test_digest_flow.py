"""The digest's flow over in-memory ports: what it shows after real plans, and once per
slot across workers, retries and crashes (roles/flows/digesting.py). No sleeps: the
manual clock moves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from roles import digest, jobs
from roles.constitution import ConstitutionError
from roles.flows import digesting
from roles.flows.context import JOB_ID
from roles.records import Actor, Directive, PlanRecord, PlanStatus, Thread
from roles.sophie import Sophie
from roles.testing import ManualClock, RecordingNotifier
from tests.flows.test_flows import ALICE, DAVE, TEAM, Loop

CHANNEL = "C0DIGEST01"
EVERY_MINUTE = "* * * * *"


def _loop(
    schedule: str = EVERY_MINUTE, timezone: str = "UTC", channel: str | None = CHANNEL
) -> Loop:
    def edit(doc: dict[str, Any]) -> None:
        doc["digest"] = {"channel": channel, "schedule": schedule, "timezone": timezone}

    return Loop(edit)


def _worker(loop: Loop) -> Sophie:
    """Another worker: the same store, queue, Slack and clock, its own process."""
    return Sophie(
        constitution=loop.sophie.constitution,
        planner=loop.sophie.planner,
        store=loop.store,
        signer=loop.sophie.signer,
        ci=loop.ci,
        notifier=loop.notifier,
        scheduler=loop.scheduler,
        directory=loop.sophie.directory,
        clock=loop.clock,
    )


async def _say(loop: Loop, text: str) -> PlanRecord:
    """A directive whose thread ts is the clock's now (so lead times are real), planned."""
    loop.events += 1
    ts = f"{loop.clock().timestamp():.6f}"
    directive = Directive(
        text=text,
        requester=Actor(TEAM, DAVE, name="dave"),
        thread=Thread("C0DEPLOYS1", ts),
        source="mention",
        event_id=f"Ev{loop.events}",
    )
    await loop.sophie.receive(directive)
    await loop.run()
    return await loop.plan()


async def _deploy(loop: Loop, text: str, conclusion: str = "success") -> PlanRecord:
    record = await _say(loop, text)
    loop.clock.advance(90)  # someone reads the card
    await loop.click(record, ALICE)
    loop.ci.conclusion = conclusion
    await loop.run()
    loop.clock.advance(240)  # the run
    await loop.run()
    final = await loop.store.load(record.plan.id)
    assert final is not None and final.status.final
    return final


def _key(loop: Loop) -> str:
    slot = digest.latest_slot(EVERY_MINUTE, "UTC", loop.clock())
    assert slot is not None
    return digest.slot_key(CHANNEL, slot)


async def test_the_digest_shows_what_happened_and_what_waits() -> None:
    loop = _loop("0 * * * *")  # hourly: since the last digest is since 11:00
    done = await _deploy(loop, "Add caching to the auth service and deploy to staging")
    assert done.status == PlanStatus.SUCCEEDED
    waiting = await _say(loop, "deploy the web frontend to staging")
    loop.clock.advance(30 * 60)
    ts = await loop.sophie.digest_tick()
    assert ts is not None
    ((channel, posted_ts, key, report),) = loop.notifier.digests
    assert (channel, posted_ts, key) == (CHANNEL, ts, f"digest:{CHANNEL}:2026-11-24T12:00Z")
    assert [o.plan_id for o in report.ended] == [done.plan.id]
    assert report.dora.deploys == 1 and report.dora.reached == 1
    assert report.dora.lead_p50_seconds == 90 + 240  # directive → deployed, on the manual clock
    # (The recording notifier's card ts is not a time: card → decision is tested as a table.)
    assert report.health.decided == 1 and report.health.vetoed == 0
    assert [w.plan_id for w in report.waiting] == [waiting.plan.id]
    assert report.waiting[0].age_seconds == 30 * 60 and report.waiting[0].requester == "dave"
    assert report.slot == datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert report.since == datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    moved = {m.key for m in report.trust}
    assert "acme/auth-service@staging" in moved and f"approver:{TEAM}/{ALICE}" in moved


async def test_one_digest_per_slot_across_workers() -> None:
    loop = _loop()
    workers = [loop.sophie, _worker(loop), _worker(loop)]
    for minute in range(3):
        results = await asyncio.gather(*(w.digest_tick() for w in workers))
        assert sum(r is not None for r in results) == 1, minute
        assert [await w.digest_tick() for w in workers] == [None, None, None]
        loop.clock.advance(60)
    keys = [d[2] for d in loop.notifier.digests]
    assert len(keys) == 3 and len(set(keys)) == 3


async def test_the_cron_job_runs_the_check() -> None:
    loop = _loop()
    assert await loop.sophie.run(jobs.Digest()) is not None
    assert await loop.sophie.run(jobs.Digest()) is None
    assert len(loop.notifier.digests) == 1


async def test_a_crash_after_claiming_does_not_lose_the_slot() -> None:
    loop = _loop("0 12 * * *")  # the clock starts at 12:00 UTC
    slot = digest.latest_slot("0 12 * * *", "UTC", loop.clock())
    assert slot is not None
    key = digest.slot_key(CHANNEL, slot)
    claim = digesting.claim_seconds(loop.sophie)
    # A worker claimed the slot and died before posting anything.
    assert await loop.store.claim_lease(key, "job-that-died", claim)
    assert await loop.sophie.digest_tick() is None  # its claim still holds
    loop.clock.advance(claim - 1)
    assert await loop.sophie.digest_tick() is None
    loop.clock.advance(2)
    assert await loop.sophie.digest_tick() is not None  # claimed again, posted late
    assert len(loop.notifier.digests) == 1
    loop.clock.advance(60)
    assert await loop.sophie.digest_tick() is None  # done: never twice


class FlakyMemo:
    """The store loses its connection right after Slack accepted the digest."""

    def __init__(self, loop: Loop, fail_on: str) -> None:
        self.loop = loop
        self.fail_on = fail_on
        self.original = loop.store.set_memo

    async def set_memo(self, key: str, name: str, value: str, ttl_seconds: int) -> None:
        if name == self.fail_on and key.startswith("digest:"):
            raise ConnectionError("Redis went away")
        await self.original(key, name, value, ttl_seconds)


async def test_a_retried_job_finds_the_digest_it_posted() -> None:
    loop = _loop()
    flaky = FlakyMemo(loop, "done")
    loop.store.set_memo = flaky.set_memo  # type: ignore[method-assign]
    token = JOB_ID.set("cron:digest:1700000000000")  # the same job, tried again
    try:
        try:
            await loop.sophie.digest_tick()
            raise AssertionError("the memo write should have failed")
        except ConnectionError:
            pass
        assert len(loop.notifier.digests) == 1  # Slack has it
        loop.store.set_memo = flaky.original  # type: ignore[method-assign]
        ts = await loop.sophie.digest_tick()  # the retry (its claim is re-entrant)
    finally:
        JOB_ID.reset(token)
    assert ts == loop.notifier.digests[0][1]
    assert len(loop.notifier.digests) == 1  # found by its key, not posted again
    assert (await loop.store.memo(_key(loop)))["done"] == ts
    assert await _worker(loop).digest_tick() is None


async def test_another_worker_finishes_a_slot_whose_worker_died_after_posting() -> None:
    loop = _loop("0 12 * * *")  # the clock starts at 12:00 UTC
    flaky = FlakyMemo(loop, "done")
    loop.store.set_memo = flaky.set_memo  # type: ignore[method-assign]
    original_release = loop.store.release_lease

    async def dies(key: str, owner: str) -> None:
        raise ConnectionError("killed")

    # The worker posts, loses Redis before saying so, and dies holding the claim.
    loop.store.release_lease = dies  # type: ignore[method-assign]
    try:
        await loop.sophie.digest_tick()
        raise AssertionError("the memo write should have failed")
    except ConnectionError:
        pass
    loop.store.set_memo = flaky.original  # type: ignore[method-assign]
    loop.store.release_lease = original_release  # type: ignore[method-assign]
    ((_, posted, key, _),) = loop.notifier.digests
    memo = await loop.store.memo(key)
    assert memo.get("attempt") and not memo.get("done")
    other = _worker(loop)
    assert await other.digest_tick() is None  # the dead worker's claim still holds
    loop.clock.advance(digesting.claim_seconds(loop.sophie) + 1)
    # The claim lapsed: another worker claims the slot, finds the message, posts nothing.
    assert await other.digest_tick() == posted
    assert len(loop.notifier.digests) == 1
    assert (await loop.store.memo(key))["done"] == posted


async def test_a_slot_interrupted_before_slack_answered_is_posted_once_later() -> None:
    loop = _loop("0 12 * * *")
    posts = 0
    original = loop.notifier.post_digest

    async def slack_down(*args: Any, **kw: Any) -> str:
        nonlocal posts
        posts += 1
        if posts == 1:
            raise ConnectionError("Slack unreachable")
        return await original(*args, **kw)

    loop.notifier.post_digest = slack_down  # type: ignore[method-assign]
    try:
        await loop.sophie.digest_tick()
    except ConnectionError:
        pass
    assert loop.notifier.digests == []
    loop.clock.advance(60)  # the next tick, on any worker
    assert await _worker(loop).digest_tick() is not None
    assert len(loop.notifier.digests) == 1


async def test_no_channel_no_digest() -> None:
    loop = _loop(channel=None)
    assert await loop.sophie.digest_tick() is None
    assert loop.notifier.digests == [] and loop.store.memos == {}
    report, ts = await loop.sophie.digest(post=True)
    assert ts is None and loop.notifier.digests == []
    assert report.next_at is None


async def test_a_slot_past_the_catch_up_window_is_skipped() -> None:
    loop = _loop("0 9 * * *")  # 09:00 UTC; the clock says 12:00
    assert await loop.sophie.digest_tick() is None
    loop.clock.now = datetime(2026, 11, 25, 9, 59, tzinfo=UTC)  # 59 min late: still posted
    assert await loop.sophie.digest_tick() is not None
    assert loop.notifier.digests[0][2] == f"digest:{CHANNEL}:2026-11-25T09:00Z"


async def test_the_schedule_is_read_in_the_constitutions_time_zone() -> None:
    loop = _loop("0 9 * * *", timezone="Asia/Tokyo")  # 09:00 JST = 00:00 UTC
    assert await loop.sophie.digest_tick() is None  # 21:00 in Tokyo
    loop.clock.now = datetime(2026, 11, 25, 0, 5, tzinfo=UTC)
    assert await loop.sophie.digest_tick() is not None
    (digested,) = loop.notifier.digests
    assert digested[2] == f"digest:{CHANNEL}:2026-11-25T00:00Z"
    assert digested[3].now.utcoffset() == timedelta(hours=9)


def test_an_invalid_schedule_is_refused_when_the_constitution_loads() -> None:
    # Fail closed: a digest that would never post is refused at start, not found later.
    for schedule in ("61 * * * *", "not cron", "0 9 * *"):
        with pytest.raises(ConstitutionError, match="digest schedule"):
            _loop(schedule)


async def test_since_and_trust_moved_start_at_the_last_digest() -> None:
    loop = _loop()
    first = await _deploy(loop, "Add caching to the auth service and deploy to staging")
    assert await loop.sophie.digest_tick() is not None
    loop.clock.advance(60)
    second = await _deploy(loop, "deploy the auth service to staging again", "failure")
    loop.clock.advance(60)
    assert await loop.sophie.digest_tick() is not None
    report = loop.notifier.digests[-1][3]
    assert [o.plan_id for o in report.ended] == [second.plan.id]  # not the first again
    assert first.plan.id not in {o.plan_id for o in report.ended}
    staging = next(m for m in report.trust if m.key == "acme/auth-service@staging")
    assert staging.delta < 0  # the failure, relative to the first digest's snapshot
    # Figures over the window still count both.
    assert report.dora.deploys == 2 and report.dora.change_failure_rate == 0.5


async def test_on_demand_shows_without_moving_the_last_digest() -> None:
    loop = _loop("0 9 * * *")
    await _deploy(loop, "Add caching to the auth service and deploy to staging")
    report, ts = await loop.sophie.digest()
    assert ts is None and loop.notifier.digests == []
    assert await loop.store.memo(digest.last_key(CHANNEL)) == {}
    assert len(report.ended) == 1
    # `sophie digest --now`: posted and remembered; the next digest starts there.
    report, ts = await loop.sophie.digest(post=True)
    assert ts is not None and loop.notifier.digests[0][2] == ""
    last = await loop.store.memo(digest.last_key(CHANNEL))
    assert float(last["at"]) == loop.clock().timestamp()
    loop.clock.advance(60)
    again, _ = await loop.sophie.digest()
    assert again.ended == []


async def test_without_a_last_digest_since_is_one_period_back() -> None:
    loop = _loop("0 9 * * 1-5")  # Tuesday 12:00: the last slot Tuesday 09:00, before it Monday's
    report, _ = await loop.sophie.digest()
    assert report.since == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_the_manual_clock_starts_where_the_tests_expect() -> None:
    assert ManualClock()().isoformat() == "2026-11-24T12:00:00+00:00"
    assert RecordingNotifier().digests == []
