"""The digest on its schedule, exactly once per slot, and on demand.

Every worker runs :func:`tick` from a cron job (every minute; bot/jobs.py). A tick finds
the newest slot of the constitution's ``digest.schedule`` (in ``digest.timezone``) and
posts that slot's digest to ``digest.channel`` unless it has been posted. Exactly once,
whatever the number of workers, retries and crashes:

1. **Claim.** The slot is ``digest:<channel>:<slot, UTC>``. A tick takes the slot's lease
   (``claim_lease``, Redis ``SET … PX`` through a Lua script, re-entrant for the same job)
   for :func:`claim_seconds` (the job timeout: no job runs longer). Another worker that
   ticks meanwhile does nothing.
2. **Done?** The slot's memo says ``done`` once the message is in Slack and the digest
   remembered it: a later tick, or a retried job, does nothing.
3. **Attempt.** Before posting, the memo records an attempt. A tick that finds an attempt
   without ``done`` (its worker died, or Redis lost the write) asks Slack first: the
   digest message carries the slot's key in its metadata, so the notifier looks for it
   in the channel since the slot (``look_first``) and posts only if it is not there.
4. **Crash after claiming.** The lease expires after :func:`claim_seconds`; the next tick
   (a minute later, on any worker) claims the slot again and finishes it: the slot is
   not lost. A slot is posted late for at most :data:`CATCH_UP_SECONDS` after it began
   (every worker down, Slack failing): after that it is skipped, and the next slot's
   digest covers everything since the last one that was posted.

"Since the last digest" and "trust that moved" are relative to what the digest
remembers under ``digest:<channel>:last`` (when it was posted, the trust scores then).
A digest asked for with ``sophie digest --now`` is posted and remembered the same way;
``/sophie digest`` only shows one (ephemerally) and moves nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from roles import digest
from roles.digest import DigestReport, ScheduleError
from roles.flows.context import Context, lease_owner
from roles.records import PlanRecord, PlanStatus

log = logging.getLogger("sophie.digest")

# A slot is still posted this long after it began (a late digest beats none).
CATCH_UP_SECONDS = 3600.0
# How long a slot's memo is kept (longer than the catch-up window, so a done slot stays done).
SLOT_MEMO_SECONDS = 3 * 86_400
# How long the digest remembers its last post (an older one is as good as none).
LAST_MEMO_SECONDS = 90 * 86_400
# "Since the last digest" reaches back at most this far (bounded reads).
MAX_SINCE_DAYS = 31
# The most outcomes and pending plans one digest reads.
OUTCOME_LIMIT = 20_000
PENDING_LIMIT = 500


def claim_seconds(ctx: Context) -> float:
    """A slot's claim lasts as long as a job may run (``dispatch_lease_seconds`` is the job
    timeout): past it, whoever claimed the slot has finished or died."""
    return max(10.0, ctx.tuning.dispatch_lease_seconds)


async def pending_plans(ctx: Context) -> list[PlanRecord]:
    """Plans waiting for a decision (the store's status index; bounded)."""
    ids = await ctx.store.idle_plans(PlanStatus.PENDING, 0.0, limit=PENDING_LIMIT)
    records = [await ctx.store.load(plan_id) for plan_id in ids]
    return [r for r in records if r is not None and r.status == PlanStatus.PENDING]


def _default_since(ctx: Context, now: datetime, slot: datetime | None) -> datetime:
    """No digest remembered: one schedule period back (else a day)."""
    rules = ctx.constitution().digest
    try:
        anchor = slot or digest.latest_slot(rules.schedule, rules.timezone, now)
        before = digest.previous_slot(rules.schedule, rules.timezone, anchor) if anchor else None
    except ScheduleError:
        before = None
    return before or now - timedelta(days=1)


async def build(ctx: Context, slot: datetime | None = None) -> DigestReport:
    """The digest as of now: since the last one posted to the digest channel."""
    constitution = ctx.constitution()
    channel = constitution.digest.channel
    now = ctx.clock()
    last = await ctx.store.memo(digest.last_key(channel)) if channel else {}
    try:
        since = datetime.fromtimestamp(float(last["at"]), now.tzinfo)
    except (KeyError, ValueError):
        since = _default_since(ctx, now, slot)
    since = max(since, now - timedelta(days=MAX_SINCE_DAYS))
    before: dict[str, float] | None = None
    if "trusts" in last:
        try:
            before = {str(k): float(v) for k, v in json.loads(last["trusts"]).items()}
        except (ValueError, AttributeError):
            before = None
    start = min(since, now - timedelta(days=digest.WINDOW_DAYS))
    outcomes = await ctx.store.outcomes_between(
        start.timestamp(), now.timestamp() + 1.0, OUTCOME_LIMIT
    )
    return digest.report(
        outcomes,
        await pending_plans(ctx),
        await ctx.store.trusts(),
        before,
        now,
        since,
        constitution,
        slot=slot,
        truncated=len(outcomes) >= OUTCOME_LIMIT,
    )


async def _remember(ctx: Context, channel: str, at: float) -> None:
    """The digest posted to ``channel`` at ``at``: the next one starts there."""
    key = digest.last_key(channel)
    await ctx.store.set_memo(key, "at", repr(at), LAST_MEMO_SECONDS)
    trusts = json.dumps(await ctx.store.trusts(), sort_keys=True)
    await ctx.store.set_memo(key, "trusts", trusts, LAST_MEMO_SECONDS)


def due(ctx: Context) -> tuple[str, datetime] | None:
    """(channel, slot) when a scheduled digest may be due now, else None."""
    rules = ctx.constitution().digest
    if not rules.channel:
        return None
    now = ctx.clock()
    try:
        slot = digest.latest_slot(rules.schedule, rules.timezone, now)
    except ScheduleError as exc:
        log.error("no scheduled digest: %s", exc)
        return None
    if slot is None or (now - slot).total_seconds() > CATCH_UP_SECONDS:
        return None
    return rules.channel, slot


async def tick(ctx: Context) -> str | None:
    """Post the current slot's digest if it is due and nobody has (the cron job, on every
    worker). Returns the ts of the digest this call posted or found, else None."""
    found = due(ctx)
    if found is None:
        return None
    channel, slot = found
    key = digest.slot_key(channel, slot)
    if (await ctx.store.memo(key)).get("done"):
        return None
    owner = lease_owner()
    if not await ctx.store.claim_lease(key, owner, claim_seconds(ctx)):
        return None  # another worker is posting it
    try:
        memo = await ctx.store.memo(key)  # read again, under the claim
        if memo.get("done"):
            return None
        report = await build(ctx, slot)
        at = memo.get("at") or repr(report.now.timestamp())
        # An earlier attempt may have posted it (and died before saying so): look first.
        look_first = bool(memo.get("attempt"))
        await ctx.store.set_memo(key, "at", at, SLOT_MEMO_SECONDS)
        await ctx.store.set_memo(key, "attempt", owner, SLOT_MEMO_SECONDS)
        ts = await ctx.notifier.post_digest(channel, report, key=key, look_first=look_first)
        await _remember(ctx, channel, float(at))
        await ctx.store.set_memo(key, "done", ts, SLOT_MEMO_SECONDS)
        log.info("digest for %s posted to %s (%s)", key, channel, ts)
        return ts
    finally:
        await ctx.store.release_lease(key, owner)


async def now(ctx: Context, post: bool) -> tuple[DigestReport, str | None]:
    """The digest now; with ``post``, posted to ``digest.channel`` (when there is one) and
    remembered as the last digest. (report, ts of the message or None)."""
    report = await build(ctx)
    channel = ctx.constitution().digest.channel
    if not post or not channel:
        return report, None
    ts = await ctx.notifier.post_digest(channel, report)
    await _remember(ctx, channel, report.now.timestamp())
    return report, ts
