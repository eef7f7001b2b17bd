"""A directive arrives: once per Slack event, within the rate limits, as a durable job."""

from __future__ import annotations

import enum
import logging

from roles import jobs
from roles.flows.context import Context
from roles.records import Directive

log = logging.getLogger("sophie.intake")

EVENT_TTL_SECONDS = 24 * 3600
# While the planning job is being queued: a crash in between lets Slack's retry through.
CLAIM_PENDING_SECONDS = 10


class EventInFlight(ConnectionError):
    """Another delivery of this event is still being queued (or died doing it): answer
    "try again" (HTTP 503), so Slack redelivers it instead of it being dropped."""


class Intake(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"


async def receive(ctx: Context, directive: Directive) -> Intake:
    """Accept a directive once per event; the planning runs as a job.

    The event's claim is marked done only after its planning job is queued, so a
    failure in between leaves Slack's redelivery free to try again.
    """
    key = f"event:{directive.event_id}"
    if not await ctx.store.claim_event(key, CLAIM_PENDING_SECONDS):
        if await ctx.store.event_state(key) == "pending":
            raise EventInFlight(f"event {directive.event_id} is still being queued")
        log.info("duplicate event %s ignored", directive.event_id)
        return Intake.DUPLICATE
    try:
        limit = ctx.constitution().rate_limits
        if directive.kind == "directive" and not await ctx.store.within_rate(
            [
                (
                    f"user:{directive.requester.team_id}:{directive.requester.user_id}",
                    limit.per_user,
                ),
                (f"channel:{directive.thread.channel}", limit.per_channel),
            ],
            limit.window_seconds,
        ):
            await ctx.store.confirm_event(key, EVENT_TTL_SECONDS)
            log.info(
                "rate limit: directive %s from %s refused",
                directive.event_id,
                directive.requester.user_id,
            )
            return Intake.RATE_LIMITED
        await ctx.enqueue(jobs.PlanDirective(directive), f"plan:{directive.event_id}")
    except BaseException:
        await ctx.store.release_event(key)
        raise
    await ctx.store.confirm_event(key, EVENT_TTL_SECONDS)
    return Intake.ACCEPTED
