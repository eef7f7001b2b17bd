"""The fake Slack API, driven by the real slack_sdk client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.blockkit import message_problems, problems, view_problems
from tests.fakes.server import ThreadedServer
from tests.fakes.slack_api import FakeSlack

TOKEN = "xoxb-test-bot-token"
CHANNEL = "C0SOPHIE01"


def text(t: str, kind: str = "plain_text") -> dict[str, Any]:
    return {"type": kind, "text": t}


def button(label: str, action_id: str, value: str = "v") -> dict[str, Any]:
    return {"type": "button", "text": text(label), "action_id": action_id, "value": value}


def card() -> list[dict[str, Any]]:
    return [
        {"type": "header", "text": text("Deploy plan")},
        {"type": "section", "text": text("*Run* `deploy` on prod", "mrkdwn")},
        {
            "type": "section",
            "fields": [text("*Env*\nprod", "mrkdwn"), text("*By*\n<@U1>", "mrkdwn")],
            "accessory": button("Details", "details"),
        },
        {"type": "context", "elements": [text("requested 2 min ago", "mrkdwn")]},
        {"type": "divider"},
        {
            "type": "actions",
            "block_id": "decide",
            "elements": [
                {**button("Approve", "approve", "r1"), "style": "primary"},
                {**button("Reject", "reject", "r1"), "style": "danger"},
            ],
        },
    ]


def modal(title: str = "Plan") -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": "plan",
        "title": text(title),
        "close": text("Close"),
        "blocks": [{"type": "section", "text": text("hello", "mrkdwn")}],
    }


@pytest.fixture()
def fake() -> FakeSlack:
    return FakeSlack(
        users={"U1": "ada", "U2": "grace"},
        usergroups={"S0OPS": ["U1", "U2"]},
    )


@pytest.fixture()
def server(fake: FakeSlack) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(fake.app).start()
    yield srv
    srv.stop()


@pytest.fixture()
async def client(server: ThreadedServer) -> AsyncIterator[AsyncWebClient]:
    c = AsyncWebClient(token=TOKEN, base_url=f"{server.url}/api/", retry_handlers=[])
    yield c


async def refused(coro: Any) -> dict[str, Any]:
    with pytest.raises(SlackApiError) as info:
        await coro
    data = info.value.response.data
    assert isinstance(data, dict)
    return data


# --- messages ----------------------------------------------------------------------------


async def test_auth_test(client: AsyncWebClient, fake: FakeSlack) -> None:
    resp = await client.auth_test()
    assert resp["user_id"] == "U0SOPHIEBOT"
    assert resp["team_id"] == "T0SOPHIE01"
    assert resp["bot_id"] and resp["url"].startswith("https://")
    assert fake.rejections == []


async def test_post_then_threaded_reply(client: AsyncWebClient, fake: FakeSlack) -> None:
    parent = await client.chat_postMessage(channel=CHANNEL, text="hello", blocks=card())
    assert parent["ok"] and parent["channel"] == CHANNEL
    assert parent["message"]["text"] == "hello"
    reply1 = await client.chat_postMessage(channel=CHANNEL, thread_ts=parent["ts"], text="one")
    reply2 = await client.chat_postMessage(channel=CHANNEL, thread_ts=parent["ts"], text="two")
    assert float(parent["ts"]) < float(reply1["ts"]) < float(reply2["ts"])
    assert [m.text for m in fake.thread(CHANNEL, parent["ts"])] == ["one", "two"]
    msg = fake.message(CHANNEL, parent["ts"])
    assert msg is not None and msg.blocks == card() and msg.user == "U0SOPHIEBOT"

    replies = await client.conversations_replies(channel=CHANNEL, ts=parent["ts"])
    assert [m["text"] for m in replies["messages"]] == ["hello", "one", "two"]
    assert replies["messages"][0]["reply_count"] == 2
    assert fake.orphans == [] and fake.rejections == []


async def test_reply_to_unknown_thread_is_accepted_but_noted(
    client: AsyncWebClient, fake: FakeSlack
) -> None:
    await client.chat_postMessage(channel=CHANNEL, thread_ts="1600000000.000100", text="lost")
    assert [m.text for m in fake.orphans] == ["lost"]
    assert fake.rejections == []


async def test_update_in_place_keeps_history(client: AsyncWebClient, fake: FakeSlack) -> None:
    posted = await client.chat_postMessage(channel=CHANNEL, text="v1", blocks=card())
    updated = await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="v2")
    assert updated["ts"] == posted["ts"] and updated["text"] == "v2"
    msg = fake.message(CHANNEL, posted["ts"])
    assert msg is not None
    assert msg.text == "v2" and msg.blocks == card()  # blocks kept when not sent
    await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="v3", blocks=[])
    assert [e.text for e in msg.edits] == ["v1", "v2"]
    assert msg.blocks == []
    assert len(fake.messages) == 1


async def test_update_and_delete_unknown_ts(client: AsyncWebClient, fake: FakeSlack) -> None:
    data = await refused(client.chat_update(channel=CHANNEL, ts="1.000100", text="x"))
    assert data["error"] == "message_not_found"
    posted = await client.chat_postMessage(channel=CHANNEL, text="bye")
    await client.chat_delete(channel=CHANNEL, ts=posted["ts"])
    msg = fake.message(CHANNEL, posted["ts"])
    assert msg is not None and msg.deleted
    data = await refused(client.chat_delete(channel=CHANNEL, ts=posted["ts"]))
    assert data["error"] == "message_not_found"
    assert [r.error for r in fake.rejections] == ["message_not_found", "message_not_found"]


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_no_text_and_bad_channel(client: AsyncWebClient, fake: FakeSlack) -> None:
    assert (await refused(client.chat_postMessage(channel=CHANNEL)))["error"] == "no_text"
    data = await refused(client.chat_postMessage(channel="#general", text="x"))
    assert data["error"] == "channel_not_found"
    data = await refused(client.chat_postMessage(channel=CHANNEL, text="x" * 40_001))
    assert data["error"] == "msg_too_long"


async def test_ts_unique_and_increasing_per_channel(client: AsyncWebClient) -> None:
    seen: list[str] = []
    for channel in (CHANNEL, "D0DM000001", CHANNEL, "G0PRIV0001", CHANNEL):
        seen.append((await client.chat_postMessage(channel=channel, text="x"))["ts"])
    assert len(set(seen)) == len(seen)
    assert seen == sorted(seen, key=float)


async def test_bad_token_refused(server: ThreadedServer, fake: FakeSlack) -> None:
    bad = AsyncWebClient(token="xoxb-wrong", base_url=f"{server.url}/api/", retry_handlers=[])
    assert (await refused(bad.auth_test()))["error"] == "invalid_auth"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{server.url}/api/chat.postMessage", json={"text": "x"}) as r:
            assert (await r.json())["error"] == "not_authed"
    assert [r.error for r in fake.rejections] == ["invalid_auth", "not_authed"]


async def test_unknown_method(client: AsyncWebClient) -> None:
    data = await refused(client.api_call("chat.scheduleSomething", json={"channel": CHANNEL}))
    assert data["error"] == "unknown_method"


async def test_form_encoded_blocks_and_token_param(server: ThreadedServer, fake: FakeSlack) -> None:
    form = {"token": TOKEN, "channel": CHANNEL, "blocks": json.dumps(card())}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{server.url}/api/chat.postMessage", data=form) as r:
            body = await r.json()
    assert body["ok"], body
    assert fake.messages[0].blocks == card()


async def test_ephemeral(client: AsyncWebClient, fake: FakeSlack) -> None:
    await client.chat_postEphemeral(channel=CHANNEL, user="U1", text="psst", blocks=card())
    (eph,) = fake.ephemerals
    assert (eph.channel, eph.user, eph.text) == (CHANNEL, "U1", "psst")
    data = await refused(client.chat_postEphemeral(channel=CHANNEL, user="U9", text="x"))
    assert data["error"] == "user_not_in_channel"


# --- block kit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocks", "needle"),
    [
        ([{"type": "divider"}] * 51, "at most 50"),
        ([{"type": "header", "text": text("h" * 151)}], "at most 150"),
        ([{"type": "actions", "elements": [button("b" * 76, "a")]}], "at most 75"),
        (
            [{"type": "actions", "elements": [button("A", "same"), button("B", "same")]}],
            "duplicate action_id",
        ),
        ([{"type": "section", "txt": text("typo")}], "txt"),
        ([{"type": "sektion", "text": text("x")}], "unknown block type"),
    ],
    ids=["51-blocks", "long-header", "long-button", "dup-action-id", "bad-key", "bad-type"],
)
async def test_invalid_blocks_refused(
    client: AsyncWebClient, fake: FakeSlack, blocks: list[dict[str, Any]], needle: str
) -> None:
    data = await refused(client.chat_postMessage(channel=CHANNEL, text="x", blocks=blocks))
    assert data["error"] == "invalid_blocks"
    assert any(needle in e for e in data["errors"]), data["errors"]
    (rej,) = fake.rejections
    assert rej.method == "chat.postMessage" and rej.error == "invalid_blocks"
    assert any(needle in r for r in rej.reasons)
    assert fake.messages == []


async def test_valid_card_passes(client: AsyncWebClient, fake: FakeSlack) -> None:
    await client.chat_postMessage(channel=CHANNEL, text="plan", blocks=card())
    await client.chat_postMessage(
        channel=CHANNEL, text="att", attachments=[{"color": "#36a64f", "blocks": card()}]
    )
    assert fake.rejections == [] and len(fake.messages) == 2


async def test_attachment_blocks_validated(client: AsyncWebClient) -> None:
    bad = [{"blocks": [{"type": "header", "text": text("h" * 200)}]}]
    data = await refused(client.chat_postMessage(channel=CHANNEL, text="x", attachments=bad))
    assert data["error"] == "invalid_blocks"
    assert data["errors"][0].startswith("attachments[0].blocks[0]")


def test_problems_direct() -> None:
    assert problems(card(), "message") == []
    assert problems([{"type": "divider"}] * 100, "modal") == []
    assert problems([{"type": "divider"}] * 101, "home") != []
    assert problems([{"type": "markdown", "text": "**x**"}], "modal") != []
    long_section = [{"type": "section", "text": text("x" * 3001, "mrkdwn")}]
    assert any("3000" in p for p in problems(long_section))
    fields = [{"type": "section", "fields": [text("f")] * 11}]
    assert any("at most 10" in p for p in problems(fields))
    dup_block = [{"type": "divider", "block_id": "b"}, {"type": "divider", "block_id": "b"}]
    assert any("duplicate block_id" in p for p in problems(dup_block))
    context = [{"type": "context", "elements": [text("c")] * 11}]
    assert any("at most 10" in p for p in problems(context))
    actions = [{"type": "actions", "elements": [button("b", f"a{i}") for i in range(26)]}]
    assert any("at most 25" in p for p in problems(actions))
    assert any(
        "2000" in p
        for p in problems([{"type": "actions", "elements": [button("b", "a", "v" * 2001)]}])
    )
    assert any(
        "255" in p for p in problems([{"type": "actions", "elements": [button("b", "a" * 256)]}])
    )
    assert problems([{"type": "section", "text": {"type": "plain_text", "text": ""}}]) != []
    rich = [
        {
            "type": "rich_text",
            "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": "hi"}]},
                {
                    "type": "rich_text_list",
                    "style": "bullet",
                    "elements": [{"type": "rich_text_section", "elements": []}],
                },
            ],
        }
    ]
    assert problems(rich) == []
    assert problems([{"type": "rich_text", "elements": [{"type": "bogus"}]}]) != []
    assert message_problems("x" * 40_001) != []
    with pytest.raises(ValueError):
        problems([], "canvas")


def test_view_problems_direct() -> None:
    assert view_problems(modal()) == []
    assert any("24" in p for p in view_problems(modal("t" * 25)))
    assert any("3000" in p for p in view_problems({**modal(), "private_metadata": "m" * 3001}))
    assert any("255" in p for p in view_problems({**modal(), "callback_id": "c" * 256}))
    assert any("24" in p for p in view_problems({**modal(), "submit": text("s" * 25)}))
    with_input = {
        **modal(),
        "blocks": [
            {
                "type": "input",
                "label": text("Why"),
                "element": {"type": "plain_text_input", "action_id": "why"},
            }
        ],
    }
    assert any("submit" in p for p in view_problems(with_input))
    assert view_problems({**with_input, "submit": text("Send")}) == []
    home = {"type": "home", "blocks": card()}
    assert view_problems(home) == []
    assert view_problems({**home, "submit": text("no")}) != []


# --- views --------------------------------------------------------------------------------


async def test_views_open_update_and_trigger_reuse(client: AsyncWebClient, fake: FakeSlack) -> None:
    trigger = fake.new_trigger_id()
    opened = await client.views_open(trigger_id=trigger, view=modal())
    view_id = opened["view"]["id"]
    assert opened["view"]["callback_id"] == "plan"
    data = await refused(client.views_open(trigger_id=trigger, view=modal()))
    assert data["error"] == "expired_trigger_id"
    data = await refused(client.views_open(trigger_id="nonsense", view=modal()))
    assert data["error"] == "invalid_trigger_id"

    await client.views_update(view_id=view_id, view=modal("Updated"))
    current = fake.view(view_id)
    assert current is not None and current["title"]["text"] == "Updated"
    data = await refused(client.views_update(view_id="V404", view=modal()))
    assert data["error"] == "not_found"
    assert [(v.action, v.view_id, v.trigger_id) for v in fake.views] == [
        ("open", view_id, trigger),
        ("update", view_id, None),
    ]


async def test_invalid_view_refused(client: AsyncWebClient, fake: FakeSlack) -> None:
    data = await refused(client.views_open(trigger_id=fake.new_trigger_id(), view=modal("t" * 30)))
    assert data["error"] == "invalid_arguments"
    assert any("title" in m for m in data["response_metadata"]["messages"])
    assert fake.views == [] and fake.rejections[0].error == "invalid_arguments"


async def test_views_publish(client: AsyncWebClient, fake: FakeSlack) -> None:
    home = {"type": "home", "blocks": card()}
    first = await client.views_publish(user_id="U1", view=home)
    again = await client.views_publish(user_id="U1", view=home)
    assert first["view"]["id"] == again["view"]["id"]
    assert fake.home("U1") == home and fake.home("U2") is None
    data = await refused(client.views_publish(user_id="U1", view=modal()))
    assert data["error"] == "invalid_arguments"


# --- directory ------------------------------------------------------------------------------


async def test_usergroups_and_users(client: AsyncWebClient, fake: FakeSlack) -> None:
    resp = await client.usergroups_users_list(usergroup="S0OPS")
    assert resp["users"] == ["U1", "U2"]
    data = await refused(client.usergroups_users_list(usergroup="S0NOPE"))
    assert data["error"] == "no_such_subteam"
    info = await client.users_info(user="U1")
    assert info["user"]["name"] == "ada"
    assert (await refused(client.users_info(user="U404")))["error"] == "user_not_found"
    assert fake.calls_to("usergroups.users.list")[0].http_method == "GET"


# --- fault injection ------------------------------------------------------------------------


async def test_fail_next(client: AsyncWebClient, fake: FakeSlack) -> None:
    fake.fail_next("chat.postMessage", error="fatal_error", times=2)
    for _ in range(2):
        data = await refused(client.chat_postMessage(channel=CHANNEL, text="x"))
        assert data["error"] == "fatal_error"
    await client.chat_postMessage(channel=CHANNEL, text="x")
    assert len(fake.messages) == 1
    assert fake.rejections == []  # scripted failures are not rejections
    assert [c.ok for c in fake.calls] == [False, False, True]


async def test_rate_limit_next(client: AsyncWebClient, fake: FakeSlack) -> None:
    fake.rate_limit_next("chat.update", retry_after=7)
    posted = await client.chat_postMessage(channel=CHANNEL, text="x")
    with pytest.raises(SlackApiError) as info:
        await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="y")
    assert info.value.response.status_code == 429
    assert info.value.response.headers["Retry-After"] == "7"
    assert info.value.response["error"] == "ratelimited"
    await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="y")
    assert fake.calls_to("chat.update")[0].status == 429


async def test_http_error_next(client: AsyncWebClient, fake: FakeSlack) -> None:
    fake.http_error_next("auth.test", status=503)
    with pytest.raises(SlackApiError) as info:
        await client.auth_test()
    assert info.value.response.status_code == 503
    assert (await client.auth_test())["ok"]


# --- response_url ---------------------------------------------------------------------------


async def test_respond_recorded_and_validated(server: ThreadedServer, fake: FakeSlack) -> None:
    url = f"{server.url}/respond/abc"
    good = {"response_type": "ephemeral", "replace_original": False, "text": "hi", "blocks": card()}
    bad = {"text": "x", "blocks": [{"type": "header", "text": text("h" * 151)}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=good) as r:
            assert r.status == 200
        async with s.post(url, json=bad) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "invalid_blocks"
        async with s.post(url, json={"delete_original": True}) as r:
            assert r.status == 200
    assert [(x.id, x.response_type, x.replace_original) for x in fake.responses] == [
        ("abc", "ephemeral", False),
        ("abc", None, False),
    ]
    assert fake.responses[0].blocks == card() and fake.responses[1].delete_original
    (rej,) = fake.rejections
    assert rej.method == "respond" and rej.error == "invalid_blocks"


async def test_bolt_style_respond(server: ThreadedServer, fake: FakeSlack) -> None:
    from slack_sdk.webhook.async_client import AsyncWebhookClient

    hook = AsyncWebhookClient(f"{server.url}/respond/r1")
    resp = await hook.send(text="done", response_type="in_channel", replace_original=True)
    assert resp.status_code == 200
    assert fake.responses[0].replace_original and fake.responses[0].text == "done"


# --- files ----------------------------------------------------------------------------------


async def test_files_upload_v2(client: AsyncWebClient, fake: FakeSlack) -> None:
    posted = await client.chat_postMessage(channel=CHANNEL, text="x")
    resp = await client.files_upload_v2(
        channel=CHANNEL,
        thread_ts=posted["ts"],
        content="hello file",
        filename="log.txt",
        title="Log",
    )
    assert resp["ok"]
    (up,) = fake.uploads
    assert up.completed and up.content == b"hello file" and up.channel_id == CHANNEL
    assert up.thread_ts == posted["ts"] and up.title == "Log"
    assert fake.rejections == []


# --- conversations -------------------------------------------------------------------------


async def test_users_conversations(client: AsyncWebClient, fake: FakeSlack) -> None:
    fake.add_conversation("C0PUBLIC01", ["U1", "U2"], name="general")
    fake.add_conversation("C0NOBOT001", ["U1"], with_bot=False)  # the bot was never invited
    fake.add_conversation("G0PRIVATE1", ["U1"], kind="private_channel")
    fake.add_conversation("C0ARCHIVE1", ["U1"], archived=True)
    fake.add_conversation("D0DIRECT01", ["U1"], kind="im")
    # Default type: public channels the bot is in; with user=, those it shares with them.
    resp = await client.users_conversations()
    assert {c["id"] for c in resp["channels"]} == {"C0PUBLIC01", "C0ARCHIVE1"}
    both = await client.users_conversations(user="U2", types="public_channel,private_channel")
    assert [c["id"] for c in both["channels"]] == ["C0PUBLIC01"]
    assert "is_member" not in both["channels"][0] and both["channels"][0]["is_channel"]
    live = await client.users_conversations(
        user="U1", types="public_channel,private_channel,mpim", exclude_archived=True
    )
    assert {c["id"] for c in live["channels"]} == {"C0PUBLIC01", "G0PRIVATE1"}
    # Paginated by cursor.
    first = await client.users_conversations(user="U1", types="public_channel", limit=1)
    cursor = first["response_metadata"]["next_cursor"]
    second = await client.users_conversations(user="U1", types="public_channel", cursor=cursor)
    assert len(first["channels"]) == 1 and cursor
    assert {c["id"] for c in first["channels"] + second["channels"]} == {
        "C0PUBLIC01",
        "C0ARCHIVE1",
    }
    assert second["response_metadata"]["next_cursor"] == ""
    # Strict: unknown types, scopes the manifest does not grant, bad limits and cursors.
    assert (await refused(client.users_conversations(types="channels")))["error"] == "invalid_types"
    assert (await refused(client.users_conversations(types="im")))["error"] == "missing_scope"
    assert (await refused(client.users_conversations(limit=0)))["error"] == "invalid_limit"
    assert (await refused(client.users_conversations(limit=1001)))["error"] == "invalid_limit"
    assert (await refused(client.users_conversations(cursor="nope")))["error"] == "invalid_cursor"
    assert (await refused(client.users_conversations(user="U404")))["error"] == "user_not_found"
    with pytest.raises(ValueError):
        fake.add_conversation("C0NOTADM01", ["U1"], kind="im")
