"""Interactivity on the plan card: Approve, Veto, Request changes, View plan, and their modals.

Approve decides inside the request (a Redis script and a signature: milliseconds),
so the click is never acknowledged without being recorded. Veto and Request
changes first check that the person may act, then open a modal for the reason.

A click carries the full binding of the plan it acts on: the button's value is
``"{plan_id}|{full digest}"`` and the message it was pressed on must be that plan's
card (or, for Rollback, a message in that plan's thread). Slack tells us the message
in every ``block_actions`` payload: ``container.channel_id`` / ``container.message_ts``
and ``channel.id`` / ``message.ts`` (with ``message.thread_ts`` for a reply in a
thread), and the workspace in ``team.id`` / ``enterprise.id``
(https://docs.slack.dev/reference/interaction-payloads/block_actions-payload). A click
whose binding does not hold is refused with an ephemeral message and audited; a
malformed payload gets an ephemeral error, never an exception. Checking the binding
reads Redis only: no Slack call before the answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from handlers import blocks
from handlers.background import spawn
from roles import approvals
from roles.flows.deciding import card_binding_problem
from roles.records import Actor, Decision, PlanRecord, Thread
from roles.sophie import Sophie

log = logging.getLogger("sophie.handlers")

_PLAN_ID = re.compile(r"^plan_[a-z0-9]{8,40}$")

NO_ACTION = "That click carried no action I understand; nothing was done."
NO_PLAN = "That button names no plan (it may be from an older version of SOPHIE); nothing was done."
NOT_A_MESSAGE = "That button is not on a message I posted; nothing was done."
NO_RECORD = "I have no record of that plan."
NOT_THIS_CARD = "This button does not belong to the plan on this card; nothing was done."
NOT_THIS_THREAD = "This button does not belong to the plan in this thread; nothing was done."
CARD_PENDING = "This card is still being posted; try again in a moment."
CARD_PENDING_LOOKS, CARD_PENDING_PAUSE = 20, 0.05  # a second at most
OTHER_WORKSPACE = "This plan belongs to another Slack workspace; nothing was done."


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def actor_from(body: dict[str, Any]) -> Actor:
    """Who clicked, and from which workspace (``team.id``, ``enterprise.id``).

    A person from another organisation in a shared channel (Slack Connect) clicks
    with their own ``user.team_id``: they act as their own workspace, so a plan from
    this one refuses them.
    """
    who = _obj(body.get("user"))
    team = _obj(body.get("team"))
    enterprise = _obj(body.get("enterprise"))
    workspace = _text(team.get("id")) or _text(body.get("team_id"))
    home = _text(who.get("team_id"))
    if not workspace or (home and home != workspace):
        workspace = home
    return Actor(
        team_id=workspace,
        user_id=_text(who.get("id")),
        name=_text(who.get("username")) or _text(who.get("name")),
        enterprise_id=_text(enterprise.get("id"))
        or _text(body.get("enterprise_id"))
        or _text(team.get("enterprise_id")),
    )


@dataclass(frozen=True)
class Click:
    """What a button press says it acts on, and where it was pressed."""

    plan_id: str
    digest: str
    channel: str
    message_ts: str
    thread_ts: str  # "" when the message is not a reply in a thread


def click_from(body: dict[str, Any]) -> Click | str:
    """The click's binding, or why the payload cannot be one (safe to show)."""
    actions = body.get("actions")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        return NO_ACTION
    value = _text(actions[0].get("value"))
    if "|" not in value:
        return NO_PLAN
    plan_id, digest = blocks.parse_button_value(value)
    if not _PLAN_ID.match(plan_id):
        return NO_PLAN
    container, message = _obj(body.get("container")), _obj(body.get("message"))
    channels = {_text(container.get("channel_id")), _text(_obj(body.get("channel")).get("id"))}
    stamps = {_text(container.get("message_ts")), _text(message.get("ts"))}
    channels.discard("")
    stamps.discard("")
    if len(channels) != 1 or len(stamps) != 1:
        return NOT_A_MESSAGE  # none given, or the payload disagrees with itself
    thread = _text(message.get("thread_ts")) or _text(container.get("thread_ts"))
    return Click(plan_id, digest, channels.pop(), stamps.pop(), thread)


def binding_problem(record: PlanRecord, click: Click, on_card: bool = True) -> str | None:
    """Why this click may not act on ``record`` (None when its binding holds).

    ``on_card``: the button must be on the plan's card; otherwise (Rollback, on the
    result message) it must be in the plan's thread.
    """
    if click.channel != record.thread.channel:
        return NOT_THIS_CARD if on_card else NOT_THIS_THREAD
    if on_card:
        if record.card_ts is None:
            return CARD_PENDING
        if click.message_ts != record.card_ts:
            return NOT_THIS_CARD
    elif not record.thread.thread_ts or click.thread_ts != record.thread.thread_ts:
        return NOT_THIS_THREAD
    return card_binding_problem(record, click.digest)


def _tell(respond: AsyncRespond, text: str) -> None:
    spawn(respond(text=text, response_type="ephemeral", replace_original=False))


async def _bound(
    sophie: Sophie,
    body: dict[str, Any],
    respond: AsyncRespond,
    what: str,
    on_card: bool = True,
) -> tuple[Click, PlanRecord, Actor] | None:
    """The click, its plan and who clicked, once the binding holds; else refuse (and audit)."""
    actor = actor_from(body)
    click = click_from(body)
    if isinstance(click, str):
        log.warning("refused %s by %s: %s", what, actor.user_id, click)
        _tell(respond, click)
        return None
    record = await sophie.store.load(click.plan_id)
    if record is None:
        if on_card:  # the card itself says its plan is gone, and loses its buttons
            spawn(sophie.card_gone(click.plan_id, click.channel, click.message_ts))
        else:
            _tell(respond, NO_RECORD)
        return None
    why = binding_problem(record, click, on_card)
    for _ in range(CARD_PENDING_LOOKS):
        # The card was posted a moment ago and its message ts is being recorded: a
        # quick click (after the ack, so Slack is not kept waiting) looks again.
        if why != CARD_PENDING:
            break
        await asyncio.sleep(CARD_PENDING_PAUSE)
        record = await sophie.store.load(click.plan_id) or record
        why = binding_problem(record, click, on_card)
    if why is None and not approvals.same_workspace(record.plan, actor):
        why = OTHER_WORKSPACE
    if why is not None:
        log.warning("refused %s on %s by %s: %s", what, click.plan_id, actor.user_id, why)
        detail = {
            "decision": what,
            "reason": why,
            "team": actor.team_id,
            "channel": click.channel,
            "message_ts": click.message_ts,
        }
        await sophie.store.audit("decision.refused", click.plan_id, actor.user_id, detail)
        _tell(respond, why)
        return None
    return click, record, actor


async def _decide(
    sophie: Sophie, body: dict[str, Any], respond: AsyncRespond, decision: Decision
) -> None:
    bound = await _bound(sophie, body, respond, decision)
    if bound is None:
        return
    click, _, actor = bound
    reply = await sophie.decide(click.plan_id, click.digest, actor, decision)
    _tell(respond, reply.text)


def _reason(view: dict[str, Any]) -> str:
    block_id, action_id = blocks.REASON_INPUT
    values = _obj(_obj(view.get("state")).get("values"))
    return _text(_obj(_obj(values.get(block_id)).get(action_id)).get("value")).strip()


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.action(blocks.APPROVE)
    async def on_approve(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await _decide(sophie, body, respond, "approve")

    async def open_reason_modal(
        body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond, veto: bool
    ) -> None:
        bound = await _bound(sophie, body, respond, "veto" if veto else "request_changes")
        if bound is None:
            return
        click, record, actor = bound
        # Refuse before the modal: nobody should write a reason only to be told no.
        if veto or actor.user_id != record.plan.requester.user_id:
            check = await sophie.decide(click.plan_id, click.digest, actor, "veto", check_only=True)
            if not check.ok:
                _tell(respond, check.text.replace("veto this plan", "act on this plan"))
                return
        view = blocks.veto_modal(record.plan) if veto else blocks.changes_modal(record.plan)
        spawn(client.views_open(trigger_id=_text(body.get("trigger_id")), view=view))

    @app.action(blocks.VETO)
    async def on_veto(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        await ack()
        await open_reason_modal(body, client, respond, veto=True)

    @app.action(blocks.REQUEST_CHANGES)
    async def on_request_changes(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        await ack()
        await open_reason_modal(body, client, respond, veto=False)

    async def submitted(ack: AsyncAck, body: dict[str, Any], veto: bool) -> None:
        view = _obj(body.get("view"))
        reason = _reason(view)
        if len(reason) < 3:
            block_id, _ = blocks.REASON_INPUT
            await ack(response_action="errors", errors={block_id: "Please give a reason."})
            return
        await ack()  # closes the modal; the outcome is told in the channel
        # The modal was opened from a click whose binding held; its metadata (ours,
        # returned by Slack) names the plan and digest, re-checked by the flow.
        plan_id, digest = blocks.parse_button_value(_text(view.get("private_metadata")))
        actor = actor_from(body)
        if veto:
            reply = await sophie.decide(plan_id, digest, actor, "veto", reason=reason)
        else:
            reply = await sophie.request_changes(plan_id, digest, actor, reason)
        record = await sophie.store.load(plan_id) if _PLAN_ID.match(plan_id) else None
        if record is not None:
            thread = Thread(record.thread.channel, record.thread.thread_ts)
            spawn(sophie.notifier.tell_user(thread, actor.user_id, reply.text))

    @app.view(blocks.VETO_MODAL)
    async def on_veto_submitted(ack: AsyncAck, body: dict[str, Any]) -> None:
        await submitted(ack, body, veto=True)

    @app.view(blocks.CHANGES_MODAL)
    async def on_changes_submitted(ack: AsyncAck, body: dict[str, Any]) -> None:
        await submitted(ack, body, veto=False)

    @app.action(blocks.ROLLBACK)
    async def on_rollback(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        # The Rollback button is on the result message, in the plan's thread.
        bound = await _bound(sophie, body, respond, "rollback", on_card=False)
        if bound is None:
            return
        click, _, actor = bound
        reply = await sophie.start_rollback(click.plan_id, actor)
        _tell(respond, reply.text)

    @app.action(blocks.APPROVE_CHANGE)
    async def on_approve_change(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        # The second card's button carries "{plan_id}|{change digest}"; the flow checks
        # that it is that plan's second card, that change, and who may approve it.
        actor = actor_from(body)
        click = click_from(body)
        if isinstance(click, str):
            _tell(respond, click)
            return
        reply = await sophie.decide_change(
            click.plan_id, click.digest, actor, click.channel, click.message_ts
        )
        _tell(respond, reply.text)

    @app.action(blocks.VIEW_PLAN)
    async def on_view(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        await ack()
        bound = await _bound(sophie, body, respond, "view")
        if bound is None:
            return
        _, record, _ = bound
        trigger = _text(body.get("trigger_id"))
        spawn(client.views_open(trigger_id=trigger, view=blocks.plan_modal(record.plan)))
