"""Interactivity on the plan card: Approve, Veto, Request changes, View plan, and their modals.

Approve decides inside the request (a Redis script and a signature: milliseconds),
so the click is never acknowledged without being recorded. Veto and Request
changes first check that the person may act, then open a modal for the reason.
"""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from handlers import blocks
from handlers.background import spawn
from roles.executor import Sophie
from roles.records import Actor, Decision, Thread


def actor_from(body: dict[str, Any]) -> Actor:
    who = body.get("user") or {}
    team = (body.get("team") or {}).get("id") or who.get("team_id", "")
    return Actor(
        team_id=team, user_id=who.get("id", ""), name=who.get("username") or who.get("name", "")
    )


def _tell(respond: AsyncRespond, text: str) -> None:
    spawn(respond(text=text, response_type="ephemeral", replace_original=False))


async def _decide(
    sophie: Sophie, body: dict[str, Any], respond: AsyncRespond, decision: Decision
) -> None:
    plan_id, digest = blocks.parse_button_value(body["actions"][0].get("value", ""))
    reply = await sophie.decide(plan_id, digest, actor_from(body), decision)
    _tell(respond, reply.text)


def _reason(view: dict[str, Any]) -> str:
    block_id, action_id = blocks.REASON_INPUT
    values = (view.get("state") or {}).get("values") or {}
    return str(((values.get(block_id) or {}).get(action_id) or {}).get("value") or "").strip()


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.action(blocks.APPROVE)
    async def on_approve(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await _decide(sophie, body, respond, "approve")

    async def open_reason_modal(
        body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond, veto: bool
    ) -> None:
        plan_id, digest = blocks.parse_button_value(body["actions"][0].get("value", ""))
        actor = actor_from(body)
        record = await sophie.store.load(plan_id)
        if record is None:
            _tell(respond, "I have no record of that plan.")
            return
        # Refuse before the modal: nobody should write a reason only to be told no.
        if veto or actor.user_id != record.plan.requester.user_id:
            check = await sophie.decide(plan_id, digest, actor, "veto", check_only=True)
            if not check.ok:
                _tell(respond, check.text.replace("veto this plan", "act on this plan"))
                return
        view = blocks.veto_modal(record.plan) if veto else blocks.changes_modal(record.plan)
        spawn(client.views_open(trigger_id=body["trigger_id"], view=view))

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
        view = body.get("view") or {}
        reason = _reason(view)
        if len(reason) < 3:
            block_id, _ = blocks.REASON_INPUT
            await ack(response_action="errors", errors={block_id: "Please give a reason."})
            return
        await ack()  # closes the modal; the outcome is told in the channel
        plan_id, digest = blocks.parse_button_value(view.get("private_metadata", ""))
        actor = actor_from(body)
        if veto:
            reply = await sophie.decide(plan_id, digest, actor, "veto", reason=reason)
        else:
            reply = await sophie.request_changes(plan_id, digest, actor, reason)
        record = await sophie.store.load(plan_id)
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
        plan_id = body["actions"][0].get("value", "")
        reply = await sophie.start_rollback(plan_id, actor_from(body))
        _tell(respond, reply.text)

    @app.action(blocks.VIEW_PLAN)
    async def on_view(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        await ack()
        plan_id, _ = blocks.parse_button_value(body["actions"][0].get("value", ""))
        record = await sophie.store.load(plan_id)
        if record is None:
            _tell(respond, "I have no record of that plan.")
            return
        spawn(client.views_open(trigger_id=body["trigger_id"], view=blocks.plan_modal(record.plan)))
