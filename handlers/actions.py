"""Interactivity on the plan card: Approve, Veto, View plan."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from handlers import blocks
from handlers.background import spawn
from roles.executor import Sophie
from roles.records import Actor, Decision


def actor_from(body: dict[str, Any]) -> Actor:
    who = body.get("user") or {}
    team = (body.get("team") or {}).get("id") or who.get("team_id", "")
    return Actor(
        team_id=team, user_id=who.get("id", ""), name=who.get("username") or who.get("name", "")
    )


async def _decide(
    sophie: Sophie, body: dict[str, Any], respond: AsyncRespond, decision: Decision
) -> None:
    action = body["actions"][0]
    plan_id, digest = blocks.parse_button_value(action.get("value", ""))
    reply = await sophie.decide(plan_id, digest, actor_from(body), decision)
    spawn(respond(text=reply.text, response_type="ephemeral", replace_original=False))


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.action(blocks.APPROVE)
    async def on_approve(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await _decide(sophie, body, respond, "approve")

    @app.action(blocks.VETO)
    async def on_veto(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await _decide(sophie, body, respond, "veto")

    @app.action(blocks.VIEW_PLAN)
    async def on_view(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        await ack()
        plan_id, _ = blocks.parse_button_value(body["actions"][0].get("value", ""))
        record = await sophie.store.load(plan_id)
        if record is None:
            spawn(
                respond(
                    text="I have no record of that plan.",
                    response_type="ephemeral",
                    replace_original=False,
                )
            )
            return
        spawn(client.views_open(trigger_id=body["trigger_id"], view=blocks.plan_modal(record.plan)))
