"""Socket Mode (`sophie serve --socket`): the same app over Slack's WebSocket, no public URL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from bot.app import connect_socket_mode
from handlers import blocks as kit
from tests import slack_requests as sr
from tests.fakes.server import ThreadedServer
from tests.fakes.slack_socket import FakeSlackSocket
from tests.harness import BOT_TOKEN, eventually, settings_for, start_app
from tests.integration.conftest import ALICE, CHANNEL, DAVE, SRE_GROUP, USERS

APP_TOKEN = "xapp-1-A0SOPHIEAPP-test"


async def test_directive_and_approval_over_socket_mode(redis_url: str, tmp_path: Path) -> None:
    slack = FakeSlackSocket(
        token=BOT_TOKEN, users=USERS, usergroups={SRE_GROUP: []}, app_token=APP_TOKEN
    )
    server = ThreadedServer(slack.app).start()
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=server.url,
        github_url=None,
        llm_url=None,
        SLACK_APP_TOKEN=APP_TOKEN,
        SLACK_SIGNING_SECRET="",  # Socket Mode needs no signing secret
    )
    app = await start_app(settings)
    handler = await connect_socket_mode(app.rt)
    try:
        await eventually(lambda: slack.connections == 1, what="the WebSocket connection")
        event = sr.mention_event("deploy auth to staging", DAVE, CHANNEL)
        ack = await asyncio.to_thread(slack.push, "events_api", event)
        assert ack["envelope_id"].startswith("env-")
        thread_ts = event["event"]["ts"]

        def card() -> Any:
            return next(
                (
                    m
                    for m in slack.thread(CHANNEL, thread_ts)
                    if (m.metadata or {}).get("event_type") == "sophie_plan_card"
                ),
                None,
            )

        posted = await eventually(card, what="the card")
        value = next(
            e["value"]
            for b in posted.blocks
            if b["type"] == "actions"
            for e in b["elements"]
            if e["action_id"] == kit.APPROVE
        )
        payload = sr.block_action(
            kit.APPROVE, value, ALICE, CHANNEL, posted.ts, f"{server.url}/respond/s1"
        )
        await asyncio.to_thread(slack.push, "interactive", payload)
        reply = await eventually(
            lambda: next((r for r in slack.responses if r.id == "s1"), None), what="reply"
        )
        assert "Approved and signed" in (reply.text or "")
        await eventually(
            lambda: any(
                "Dry run complete" in (m.text or "") for m in slack.thread(CHANNEL, thread_ts)
            ),
            what="the dry-run result",
        )
        command = dict(parse_qsl(sr.command_body("help", DAVE, CHANNEL, f"{server.url}/respond/h")))
        help_ack = await asyncio.to_thread(slack.push, "slash_commands", command)
        assert "/sophie" in json.dumps(help_ack.get("payload", {}))
        assert slack.rejections == []
    finally:
        await handler.close_async()  # type: ignore[no-untyped-call]  # Bolt leaves it unannotated
        await app.close()
        server.stop()
