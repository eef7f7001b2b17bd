"""Posting to Slack on behalf of the roles (implements :class:`roles.ports.Notifier`)."""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from bot import chart
from handlers import blocks, digest_blocks
from handlers.text import escape, user
from roles.digest import DigestReport
from roles.ports import CardContext
from roles.records import DecisionRecord, PlanRecord, Thread

log = logging.getLogger("sophie.slack")

CARD_EVENT = "sophie_plan_card"  # the message metadata event type of a plan card
DIGEST_EVENT = "sophie_digest"  # … of a digest (its payload names the schedule slot)
# Messages read when looking for a digest an interrupted try may have posted (from its slot on).
DIGEST_LOOKUP_LIMIT = 100

# Retries of one Slack call, inside the job (bounded: past them the job itself is retried).
RATE_LIMIT_RETRIES = 3
SERVER_ERROR_RETRIES = 2
CONNECTION_RETRIES = 2
# A Retry-After longer than this is not slept inside a job: the call fails, and the job is
# retried later (bot/jobs.py), so a worker slot is not held for minutes.
MAX_RETRY_AFTER_SECONDS = 20


class BoundedRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """429: wait the Retry-After Slack asks for (slack_sdk's handler), when it is short."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        for name, value in response.headers.items():
            if name.lower() == "retry-after":
                first = value[0] if isinstance(value, list) else value
                try:
                    return int(first) <= MAX_RETRY_AFTER_SECONDS
                except ValueError:
                    return True
        return True


class ServerErrorRetryHandler(AsyncServerErrorRetryHandler):
    """5xx: Slack documents 500 and 503; gateways in between answer 502 and 504 too."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code in (500, 502, 503, 504)


def retry_handlers() -> list[AsyncRetryHandler]:
    """For every Slack Web API call: 429 honouring Retry-After, 5xx and connection errors
    with backoff and jitter (slack_sdk's handlers), each a bounded number of times."""
    return [
        BoundedRateLimitRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
        ServerErrorRetryHandler(max_retry_count=SERVER_ERROR_RETRIES),
        AsyncConnectionErrorRetryHandler(max_retry_count=CONNECTION_RETRIES),
    ]


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
            blocks=blocks.card(
                record, context.changes, context.window_ends, context.waiting, context.precedent
            ),
            unfurl_links=False,
            unfurl_media=False,
            # Message metadata names the plan, so a card whose reply was lost is found
            # (https://docs.slack.dev/messaging/message-metadata).
            metadata={"event_type": CARD_EVENT, "event_payload": {"plan_id": record.plan.id}},
        )
        return str(resp["ts"])

    async def find_card(self, record: PlanRecord) -> str | None:
        thread = record.thread
        if not thread.thread_ts:
            return None
        try:
            resp = await self.client.conversations_replies(
                channel=thread.channel, ts=thread.thread_ts, include_all_metadata=True, limit=200
            )
        except SlackApiError as exc:
            log.warning("could not read thread %s: %s", thread.thread_ts, exc.response.get("error"))
            return None
        for message in resp.get("messages") or []:
            meta = message.get("metadata") or {}
            payload = meta.get("event_payload") or {}
            if meta.get("event_type") == CARD_EVENT and payload.get("plan_id") == record.plan.id:
                return str(message["ts"])
        return None

    async def update_card(self, record: PlanRecord, context: CardContext) -> None:
        assert record.card_ts is not None
        await self.client.chat_update(
            channel=record.thread.channel,
            ts=record.card_ts,
            text=blocks.card_fallback(record),
            blocks=blocks.card(
                record, context.changes, context.window_ends, context.waiting, context.precedent
            ),
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
        await self._reply(record, *blocks.result(record))

    async def post_change(self, record: PlanRecord) -> None:
        await self._reply(record, *blocks.change(record))

    async def post_change_card(
        self, record: PlanRecord, decisions: list[DecisionRecord]
    ) -> str | None:
        return await self._reply(record, *blocks.change_card(record, decisions))

    async def _reply(self, record: PlanRecord, text: str, body: list[dict[str, Any]]) -> str | None:
        """A message in the plan's thread (links not unfurled); its ts."""
        reply = await self.client.chat_postMessage(
            channel=record.thread.channel,
            thread_ts=record.thread.thread_ts,
            text=text,
            blocks=body,
            unfurl_links=False,
            unfurl_media=False,
        )
        ts = reply.get("ts")
        return str(ts) if ts else None

    async def update_change_card(self, record: PlanRecord, decisions: list[DecisionRecord]) -> None:
        change = record.run.change if record.run is not None else None
        if change is None or not change.review_ts:
            return
        text, body = blocks.change_card(record, decisions)
        await self.client.chat_update(
            channel=record.thread.channel, ts=change.review_ts, text=text, blocks=body
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

    async def card_gone(self, channel: str, card_ts: str, plan_id: str) -> None:
        text, body = blocks.plan_gone(plan_id)
        await self.client.chat_update(channel=channel, ts=card_ts, text=text, blocks=body)

    # -- the digest (roles/flows/digesting.py) ----------------------------------------------

    async def post_digest(
        self, channel: str, report: DigestReport, key: str = "", look_first: bool = False
    ) -> str:
        """The digest message, then its chart in the message's thread.

        The message carries ``key`` (the schedule slot) in its metadata, so after an
        interrupted try it is found instead of posted twice (``look_first``). The chart is
        uploaded with files_upload_v2, Slack's upload flow: files.getUploadURLExternal for
        an upload URL and a file id, the PNG POSTed to that URL, then
        files.completeUploadExternal with ``channel_id`` and ``thread_ts`` to share it as a
        reply (https://docs.slack.dev/reference/methods/files.getUploadURLExternal,
        https://docs.slack.dev/reference/methods/files.completeUploadExternal: "Provide
        another message's ts value to upload this file as a reply"). The chart is cosmetic:
        a failed upload is logged and the digest stands (a retry would not re-upload it, as
        it finds the message)."""
        if look_first and key:
            found = await self._find_digest(channel, key, report)
            if found is not None:
                log.info("digest %s is already in %s (%s): not posted again", key, channel, found)
                return found
        text, body = digest_blocks.digest(report)
        resp = await self.client.chat_postMessage(
            channel=channel,
            text=text,
            blocks=body,
            unfurl_links=False,
            unfurl_media=False,
            metadata={"event_type": DIGEST_EVENT, "event_payload": {"key": key or "on-demand"}},
        )
        ts = str(resp["ts"])
        try:
            await self.client.files_upload_v2(
                channel=channel,
                thread_ts=ts,
                content=chart.render(report.days),
                filename=chart.filename(report.days),
                title="Deploys and lead time per day",
                alt_txt=digest_blocks.chart_alt_text(report),
            )
        except (SlackClientError, OSError, ValueError) as exc:
            log.warning("the digest's chart could not be uploaded: %r", exc)
        return ts

    async def _find_digest(self, channel: str, key: str, report: DigestReport) -> str | None:
        """The ts of the digest for ``key`` in ``channel`` (posted since its slot), else None.

        conversations.history with include_all_metadata returns each message's metadata;
        ``oldest`` bounds the read to what was posted since the slot began
        (https://docs.slack.dev/reference/methods/conversations.history; needs
        channels:history, groups:history for private channels). A failed read raises: the
        job is tried again on the next tick rather than risk posting the digest twice."""
        oldest = (report.slot or report.now).timestamp() - 1
        resp = await self.client.conversations_history(
            channel=channel,
            oldest=f"{oldest:.6f}",
            include_all_metadata=True,
            limit=DIGEST_LOOKUP_LIMIT,
        )
        for message in resp.get("messages") or []:
            meta = message.get("metadata") or {}
            payload = meta.get("event_payload") or {}
            if meta.get("event_type") == DIGEST_EVENT and payload.get("key") == key:
                return str(message["ts"])
        return None
