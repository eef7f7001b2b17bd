"""One deploy per repo@environment at a time, owned by SOPHIE (not GitHub's concurrency).

An approved plan takes its environment's slot before it is dispatched, or waits in
the slot's queue (behind a running deploy, a lock, or a freeze that says "wait")
and is told where it stands; when a run ends (or its dispatch fails) the slot goes
to the next plan in line, whose dispatch starts at once.
"""

from __future__ import annotations

from roles import freezes, jobs
from roles.flows.context import Context
from roles.flows.locking import slot_of
from roles.plan import Plan
from roles.records import PlanRecord

MEMO_SECONDS = 30 * 86400


async def take_slot(ctx: Context, record: PlanRecord) -> bool:
    """True when this plan may be dispatched now; otherwise it waits and the thread is told."""
    target = record.plan.target
    slot = slot_of(target.repo, target.environment)
    now = ctx.clock()
    freeze = freezes.holding(ctx.constitution(), target.environment, now)
    if freeze is not None:
        until = freezes.ends(freeze, now)
        assert until is not None
        await _tell_once(
            ctx,
            record,
            f"freeze:{freeze.id}:{until.isoformat()}",
            f"Deploys to {target.environment} are frozen ({freeze.reason}) until "
            f"{until.strftime('%Y-%m-%d %H:%M %Z')}: this plan waits and starts then.",
        )
        await ctx.again(
            "dispatch",
            record.plan.id,
            f"freeze-{int(until.timestamp())}",
            max(0.0, (until - now).total_seconds()) + 1,
        )
        return False
    claim = await ctx.store.take_slot(slot, record.plan.id)
    if claim.taken:
        return True
    held = (await ctx.store.locks()).get(slot)
    if held is not None:
        why = f"{target.repo} → {target.environment} is locked by <@{_plain(held.by)}>"
        why += f" ({held.reason})" if held.reason else ""
        text = f"Waiting: {why}. It starts when someone unlocks it."
        state = f"locked:{held.at}"
    else:
        # Ahead of it: the deploy running now, and those queued before it.
        ahead = claim.position - 1 + (1 if claim.holder else 0)
        behind = f"behind {claim.holder}" if claim.holder else "in line"
        text = (
            f"Queued {behind} — {ahead} ahead. One deploy to {target.environment} runs at "
            "a time; this one starts when those before it end."
        )
        state = f"queued:{claim.holder}:{claim.position}"
    await _tell_once(ctx, record, state, text)
    return False


async def release(ctx: Context, plan: Plan) -> None:
    """The plan's run ended (or never started): the next plan in line may deploy."""
    following = await ctx.store.release_slot(
        slot_of(plan.target.repo, plan.target.environment), plan.id
    )
    if following:
        await ctx.enqueue(
            jobs.OnPlan("dispatch", following),
            f"dispatch:{following}:after:{plan.id}",
        )


async def _tell_once(ctx: Context, record: PlanRecord, state: str, text: str) -> None:
    memo = f"queue:{record.plan.id}"
    if (await ctx.store.memo(memo)).get("told") == state:
        return
    await ctx.store.set_memo(memo, "told", state, MEMO_SECONDS)
    await ctx.store.set_memo(memo, "text", text, MEMO_SECONDS)
    await ctx.notifier.post_text(record.thread, text)
    await ctx.refresh_card_later(record.plan.id)  # the card shows where it waits


def _plain(user_id: str) -> str:
    return "".join(ch for ch in user_id if ch.isalnum())
