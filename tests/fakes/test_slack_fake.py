"""The fake Slack refuses what Slack refuses, through the real slack_sdk client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.block_kit import problems, view_problems
from tests.fakes.server import ThreadedServer
from tests.fakes.slack_web import FakeSlack

TOKEN = "xoxb-test"


@pytest.fixture()
def served() -> Iterator[tuple[FakeSlack, AsyncWebClient, str]]:
    fake = FakeSlack(token=TOKEN, users={"U0ALICE001": "alice"}, usergroups={"S0SRE": ["U1"]})
    server = ThreadedServer(fake.app).start()
    client = AsyncWebClient(token=TOKEN, base_url=f"{server.url}/api/")
    yield fake, client, server.url
    server.stop()


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def button(action_id: str, label: str = "Go") -> dict[str, Any]:
    return {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": label}}


async def test_threads_and_edits_are_recorded(
    served: tuple[FakeSlack, AsyncWebClient, str],
) -> None:
    fake, client, _ = served
    parent = await client.chat_postMessage(channel="C1AAA", text="parent")
    reply = await client.chat_postMessage(
        channel="C1AAA", thread_ts=parent["ts"], text="reply", blocks=[section("hi")]
    )
    assert [m.text for m in fake.thread("C1AAA", parent["ts"])] == ["reply"]
    await client.chat_update(channel="C1AAA", ts=reply["ts"], text="edited", blocks=[section("x")])
    message = fake.message("C1AAA", reply["ts"])
    assert message is not None and message.text == "edited" and message.edits[0]["text"] == "reply"
    with pytest.raises(SlackApiError, match="message_not_found"):
        await client.chat_update(channel="C1AAA", ts="1.2", text="nope")
    assert [r.error for r in fake.rejections] == ["message_not_found"]


@pytest.mark.parametrize(
    ("blocks", "reason"),
    [
        ([section(str(i)) for i in range(51)], "more than 50"),
        ([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}], "150"),
        ([{"type": "actions", "elements": [button("a", "x" * 76)]}], "75"),
        ([{"type": "actions", "elements": [button("a"), button("a")]}], "duplicate action_id"),
        ([{"type": "section"}], "text or fields"),
        ([section("x" * 3001)], "3000"),
        ([{"type": "bogus"}], "unknown block type"),
    ],
)
async def test_invalid_blocks_are_refused(
    served: tuple[FakeSlack, AsyncWebClient, str], blocks: list[dict[str, Any]], reason: str
) -> None:
    fake, client, _ = served
    with pytest.raises(SlackApiError) as refused:
        await client.chat_postMessage(channel="C1AAA", text="t", blocks=blocks)
    assert refused.value.response["error"] == "invalid_blocks"
    assert any(reason in r for r in fake.rejections[0].reasons), fake.rejections[0].reasons
    assert fake.messages == []


async def test_auth_views_groups_and_faults(served: tuple[FakeSlack, AsyncWebClient, str]) -> None:
    fake, client, url = served
    with pytest.raises(SlackApiError, match="invalid_auth"):
        await AsyncWebClient(token="xoxb-wrong", base_url=f"{url}/api/").auth_test()
    assert (await client.usergroups_users_list(usergroup="S0SRE"))["users"] == ["U1"]
    with pytest.raises(SlackApiError, match="no_such_subteam"):
        await client.usergroups_users_list(usergroup="S0NOPE")
    modal = {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Veto"},
        "blocks": [section("why?")],
    }
    await client.views_open(trigger_id="t1", view=modal)
    with pytest.raises(SlackApiError, match="expired_trigger_id"):
        await client.views_open(trigger_id="t1", view=modal)
    fake.fail_next("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackApiError, match="channel_not_found"):
        await client.chat_postMessage(channel="C1AAA", text="x")
    fake.rate_limit_next("chat.update", retry_after=3)
    with pytest.raises(SlackApiError) as limited:
        await client.chat_update(channel="C1AAA", ts="1.1", text="x")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "3"
    async with aiohttp.ClientSession() as session:
        ok = await session.post(
            f"{url}/respond/r1", json={"text": "hi", "response_type": "ephemeral"}
        )
        bad = await session.post(f"{url}/respond/r2", json={"blocks": [{"type": "section"}]})
    assert ok.status == 200 and bad.status == 400
    assert [r.id for r in fake.responses] == ["r1"]


def test_view_limits() -> None:
    long_title = {"type": "modal", "title": {"type": "plain_text", "text": "t" * 25}, "blocks": []}
    assert any("24" in p for p in view_problems(long_title))
    no_submit = {
        "type": "modal",
        "title": {"type": "plain_text", "text": "t"},
        "blocks": [
            {
                "type": "input",
                "label": {"type": "plain_text", "text": "Why"},
                "element": {"type": "plain_text_input", "action_id": "a"},
            }
        ],
    }
    assert any("submit" in p for p in view_problems(no_submit))
    assert problems([section("fine")]) == []
    assert any("input blocks" in p for p in problems(no_submit["blocks"], "message"))
