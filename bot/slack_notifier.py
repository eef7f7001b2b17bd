"""Posting to Slack on behalf of the roles (implements :class:`roles.ports.Notifier`)."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from handlers import blocks
from handlers.text import escape, user
from roles.ports import CardContext
from roles.records import PlanRecord, Thread

log = logging.getLogger("sophie.slack")


class SlackNotifier:
    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def open_thread(self, channel: str, requester: str, text: str) -> Thread:
        resp = await self.client.chat_postMessage(
            channel=channel,
            text=f"{user(requester)} asked: {escape(text, 2000)}",
            unfurl_links=False,
            unfurl_media=False,
        )
        return Thread(channel=channel, thread_ts=str(resp["ts"]))

    async def post_card(self, record: PlanRecord, context: CardContext) -> str:
        resp = await self.client.chat_postMessage(
            channel=record.thread.channel,
            thread_ts=record.thread.thread_ts,
            text=blocks.card_fallback(record),
            blocks=blocks.card(record, context.changes, context.window_ends),
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(resp["ts"])

    async def update_card(self, record: PlanRecord, context: CardContext) -> None:
        assert record.card_ts is not None
        await self.client.chat_update(
            channel=record.thread.channel,
            ts=record.card_ts,
            text=blocks.card_fallback(record),
            blocks=blocks.card(record, context.changes, context.window_ends),
        )

    async def post_run_status(self, record: PlanRecord) -> str | None:
        """Create the run's status message, or edit it in place once it exists."""
        assert record.run is not None
        text, body = blocks.run_status(record)
        if record.run.message_ts:
            try:
                await self.client.chat_update(
                    channel=record.thread.channel, ts=record.run.message_ts, text=text, blocks=body
                )
                return record.run.message_ts
            except SlackApiError as exc:
                log.warning("could not edit run status: %s", exc.response.get("error"))
                return record.run.message_ts
        resp = await self.client.chat_postMessage(
            channel=record.thread.channel,
            thread_ts=record.thread.thread_ts,
            text=text,
            blocks=body,
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(resp["ts"])

    async def post_result(self, record: PlanRecord) -> None:
        text, body = blocks.result(record)
        await self.client.chat_postMessage(
            channel=record.thread.channel,
            thread_ts=record.thread.thread_ts,
            text=text,
            blocks=body,
            unfurl_links=False,
            unfurl_media=False,
        )

    async def post_text(self, thread: Thread, text: str) -> None:
        await self.client.chat_postMessage(
            channel=thread.channel,
            thread_ts=thread.thread_ts or None,
            text=escape(text, 3000),
            unfurl_links=False,
            unfurl_media=False,
        )

    async def tell_user(self, thread: Thread, user_id: str, text: str) -> None:
        await self.client.chat_postEphemeral(
            channel=thread.channel,
            user=user_id,
            thread_ts=thread.thread_ts or None,
            text=escape(text, 3000),
        )
