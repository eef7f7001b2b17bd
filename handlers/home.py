"""The App Home tab: recent plans and how to start one."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from handlers import blocks
from handlers.background import spawn
from roles.executor import Sophie


def register(app: AsyncApp, sophie: Sophie) -> None:
    @app.event("app_home_opened")
    async def on_home(event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("tab") not in (None, "home"):
            return

        async def publish() -> None:
            records = await sophie.store.recent(20)
            await client.views_publish(user_id=event["user"], view=blocks.home(records))

        spawn(publish())
