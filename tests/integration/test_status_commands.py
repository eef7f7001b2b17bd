"""`/sophie status`, `/sophie pending` and `/sophie trust` through signed slash commands
to the running app: what each person may see, ephemerally, within Block Kit's limits."""

from __future__ import annotations

from typing import Any

from handlers import blocks as kit
from tests import slack_requests as sr
from tests.fakes import blockkit
from tests.harness import App, eventually
from tests.integration.conftest import ALICE, BOB, CHANNEL, DAVE, MALLORY, Fakes
from tests.integration.test_end_to_end import _buttons, cards


async def _ask(app: App, fakes: Fakes, text: str, who: str, channel: str = CHANNEL) -> Any:
    body = sr.command_body(text, who, channel, f"{fakes.slack_server.url}/respond/q")
    resp = await app.command(body)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["response_type"] == "ephemeral"
    assert blockkit.message_problems(answer.get("text"), answer.get("blocks")) == []
    return answer


async def test_status_pending_and_trust_show_each_person_what_they_may_see(
    app: App, fakes: Fakes
) -> None:
    event = sr.mention_event("deploy auth to staging", DAVE, CHANNEL)
    await app.event(event)
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    plan_id = _buttons(card.blocks)[kit.APPROVE]["value"].split("|")[0]

    here = await _ask(app, fakes, "status", BOB)
    assert plan_id in str(here["blocks"]) and "pending" in str(here["blocks"])
    one = await _ask(app, fakes, f"status {plan_id}", BOB)
    assert "waiting for: 1 more approver" in str(one["blocks"])
    # Elsewhere, someone who neither asked nor decided sees nothing of it.
    hidden = await _ask(app, fakes, f"status {plan_id}", MALLORY, channel="C0ELSEWHERE")
    assert plan_id in hidden["text"] and "that you can see here" in hidden["text"]
    assert "staging" not in str(hidden["blocks"]).replace(plan_id, "")
    assert (
        "No plans here yet." in (await _ask(app, fakes, "status", MALLORY, "C0ELSEWHERE"))["text"]
    )

    waiting = await _ask(app, fakes, "pending", ALICE)
    assert "Waiting on you" in waiting["text"] and plan_id in str(waiting["blocks"])
    # The requester may not approve their own plan: nothing waits on them.
    assert (await _ask(app, fakes, "pending", DAVE))["text"] == "Nothing is waiting on you."

    trust = await _ask(app, fakes, "trust", ALICE)
    shown = str(trust["blocks"])
    assert "autonomy needs 0.80" in shown and "`acme/auth-service` → staging: 0.50" in shown
    assert "below the autonomy floor" in shown
    # "trust …" with more words is a directive, not the query.
    body = sr.command_body("trust the new cache and deploy", DAVE, CHANNEL, "x")
    assert "Planning" in (await (await app.command(body)).json())["text"]
