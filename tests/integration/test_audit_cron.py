"""The worker's cron signs audit checkpoints: once per slot, only when something was appended."""

from __future__ import annotations

from typing import Any

from bot.audit_log import CHECKPOINTS
from bot.jobs import AUDIT_CHECKPOINT_MINUTES, audit_checkpoint, cron_jobs
from tests import slack_requests as sr
from tests.harness import App, eventually
from tests.integration.conftest import CHANNEL, DAVE, Fakes
from tests.integration.test_end_to_end import cards


async def test_the_cron_checkpoints_what_was_appended(app: App, fakes: Fakes) -> None:
    (job,) = cron_jobs()
    assert job.unique and job.minute == AUDIT_CHECKPOINT_MINUTES
    event = sr.mention_event("deploy auth to staging", DAVE, CHANNEL)
    await app.event(event)
    await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    ctx = {"sophie": app.rt.sophie}
    redis: Any = app.rt.redis  # redis-py types its commands as "Awaitable[T] | T"
    await audit_checkpoint(ctx)
    assert await redis.llen(CHECKPOINTS) == 1
    await audit_checkpoint(ctx)  # nothing new: no second checkpoint
    assert await redis.llen(CHECKPOINTS) == 1
    count, problem = await app.rt.store.verify_audit()
    assert problem is None and count > 0
