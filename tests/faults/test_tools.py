"""The fault tools themselves: the Redis proxy lands each fault where it says, and the
fakes' fault knobs answer as the real services are documented to (driven by the real
clients: redis-py, slack_sdk, aiohttp, openai)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.github_rest import FakeGitHub
from tests.fakes.llm_api import FakeLLM, content
from tests.fakes.server import ThreadedServer
from tests.fakes.slack_api import FakeSlack
from tests.faults.tcp_proxy import RedisProxy, parse_command
from tests.redis_server import RedisServer

# --- the proxy ------------------------------------------------------------------------------


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


@pytest.fixture()
async def linked(redis_server: RedisServer) -> AsyncIterator[tuple[RedisProxy, aioredis.Redis]]:
    proxy = RedisProxy(redis_server.port).start()
    client = aioredis.Redis(port=proxy.port)
    yield proxy, client
    await client.aclose()
    proxy.stop()


async def sent(command: Any) -> Any:
    """Await a redis-py command (typed "Awaitable[T] | T" for both of its clients)."""
    return await command


def test_commands_are_read_from_the_client_side_of_the_protocol() -> None:
    raw = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na b\r\n\r\n*1\r\n$4\r\nPING\r\n"
    parsed = parse_command(raw)
    assert parsed is not None and parsed[0] == [b"SET", b"k", b"a b\r\n"]
    assert parse_command(raw[parsed[1] :]) == ([b"PING"], len(raw) - parsed[1])
    assert parse_command(raw[:10]) is None  # incomplete: wait for more
    assert parse_command(b"PING\r\n") == ([b"PING"], 6)  # inline


async def test_a_cut_before_a_command_means_it_never_ran(
    linked: tuple[RedisProxy, aioredis.Redis],
) -> None:
    proxy, client = linked
    rule = proxy.cut_at(r"^SET b ")
    await client.set("a", "1")
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.set("b", "2")
    assert await client.get("b") is None and await client.get("a") == b"1"
    assert rule.hits == 1 and rule.matched == ["SET b 2"]


async def test_a_cut_after_a_command_means_it_ran_and_the_reply_was_lost(
    linked: tuple[RedisProxy, aioredis.Redis],
) -> None:
    proxy, client = linked
    proxy.cut_at(r"^SET c ", when="after")
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.set("c", "3")
    assert await client.get("c") == b"3"
    # Inside MULTI a command only queues: "after" lands after its EXEC ran.
    proxy.cut_at(r"^HSET h ", when="after")
    with pytest.raises(redis.exceptions.ConnectionError):
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("d", "4")
            pipe.hset("h", "f", "v")
            await pipe.execute()
    assert (await client.get("d"), await sent(client.hget("h", "f"))) == (b"4", b"v")
    # "before" inside MULTI: the whole transaction is discarded.
    proxy.cut_at(r"^HSET i ")
    with pytest.raises(redis.exceptions.ConnectionError):
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("e", "5")
            pipe.hset("i", "f", "v")
            await pipe.execute()
    assert await client.get("e") is None


async def test_the_nth_match_and_a_hold_released_either_way(
    linked: tuple[RedisProxy, aioredis.Redis],
) -> None:
    proxy, client = linked
    rule = proxy.hold_at(r"^INCRBY n 1$", nth=2, times=2)  # redis-py's incr()
    await client.incr("n")  # the first match passes
    held = asyncio.create_task(sent(client.incr("n")))
    assert await rule.landed(5)
    await asyncio.sleep(0.1)
    assert not held.done() and rule.holding == 1
    proxy.release(rule, forward=True)
    assert await held == 2
    held = asyncio.create_task(sent(client.incr("n")))
    await asyncio.sleep(0.1)
    proxy.release(rule, forward=False)
    with pytest.raises(redis.exceptions.ConnectionError):
        await held
    assert await client.get("n") == b"2" and rule.hits == 2


async def test_a_sender_that_dies_while_held_never_delivers(
    linked: tuple[RedisProxy, aioredis.Redis], redis_server: RedisServer
) -> None:
    proxy, _ = linked
    rule = proxy.hold_at(r"^SET gone ")
    doomed = aioredis.Redis(port=proxy.port)
    task = asyncio.create_task(sent(doomed.set("gone", "1")))
    assert await rule.landed(5)
    task.cancel()  # its connection closes, as a killed process's does
    await doomed.aclose()
    await asyncio.sleep(0.2)
    check = aioredis.Redis(port=redis_server.port)
    try:
        assert await check.get("gone") is None
    finally:
        await check.aclose()


async def test_cut_all_refuse_and_kill_at_a_command(
    linked: tuple[RedisProxy, aioredis.Redis], redis_server: RedisServer
) -> None:
    proxy, client = linked
    await client.set("kept", "1")
    proxy.refuse(0.5)
    assert proxy.cut_all() == 1
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.get("kept")
    await asyncio.sleep(0.6)
    assert await client.get("kept") == b"1"
    rule = proxy.on_command(r"^SET k ", redis_server.kill)
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.set("k", "1")
    assert rule.hits == 1 and redis_server.proc is None
    redis_server.start()  # same port, same append-only file
    assert await client.get("kept") == b"1"


# --- the fakes' knobs --------------------------------------------------------------------


@pytest.fixture()
def slack() -> Iterator[tuple[FakeSlack, ThreadedServer]]:
    fake = FakeSlack()
    server = ThreadedServer(fake.app).start()
    yield fake, server
    server.stop()


async def _refused(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        await call
    return info.value


async def test_slack_fails_only_the_chosen_call(slack: tuple[FakeSlack, ThreadedServer]) -> None:
    fake, server = slack
    client = AsyncWebClient(token=fake.token, base_url=f"{server.url}/api/", retry_handlers=[])
    limited = fake.fail_matching(
        "chat.postMessage", lambda p: p.get("text") == "card", status=429, retry_after=3
    )
    down = fake.fail_matching("chat.update", lambda p: True, status=503, nth=2)
    other = await client.chat_postMessage(channel="C0SOPHIE01", text="other")
    error = await _refused(client.chat_postMessage(channel="C0SOPHIE01", text="card"))
    assert error.response.status_code == 429
    assert error.response.headers.get("Retry-After") == "3"
    assert error.response.data == {"ok": False, "error": "ratelimited"}
    again = await client.chat_postMessage(channel="C0SOPHIE01", text="card")  # once only
    assert limited.hits == 1 and again["ok"]
    await client.chat_update(channel="C0SOPHIE01", ts=other["ts"], text="edit 1")
    error = await _refused(client.chat_update(channel="C0SOPHIE01", ts=other["ts"], text="x"))
    assert error.response.status_code == 503 and down.hits == 1
    assert [m.text for m in fake.messages] == ["edit 1", "card"]  # the failed edit changed nothing
    assert fake.rejections == []  # scripted failures are not the client's fault


async def test_github_secondary_rate_limit_at_one_path() -> None:
    fake = FakeGitHub()
    server = ThreadedServer(fake.app).start()
    fake.rate_limit_at("POST", r"/dispatches$", status=429, retry_after=2)
    fake.rate_limit_at("POST", r"/dispatches$", status=403, retry_after=None)
    url = f"{server.url}/repos/acme/auth-service/actions/workflows/sophie-pipeline.yml/dispatches"
    headers = {"Authorization": "Bearer ghp_testtoken0123456789"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{server.url}/repos/acme/auth-service") as ok:
                assert ok.status == 200  # other paths answer
            async with http.post(url, json={"ref": "main"}) as first:
                body = await first.json()
                assert first.status == 429 and first.headers["retry-after"] == "2"
                assert "secondary rate limit" in body["message"]
                assert first.headers["x-ratelimit-remaining"] != "0"  # not the primary limit
            async with http.post(url, json={"ref": "main"}) as second:
                assert second.status == 403 and "retry-after" not in second.headers
            async with http.post(url, json={"ref": "main"}) as third:
                assert third.status == 204
    finally:
        server.stop()
    assert len(fake.dispatches) == 1


async def test_a_model_that_hangs_answers_nobody() -> None:
    fake = FakeLLM(keys=("sk-or-test",))
    fake.default = content('{"ok": true}')
    server = ThreadedServer(fake.app).start()
    model = "openai/gpt-4o-mini"
    fake.hang(model, times=1)
    client = openai.AsyncOpenAI(
        api_key="sk-or-test", base_url=f"{server.url}/api/v1", timeout=0.5, max_retries=0
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    try:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=model, messages=messages)
        answer = await client.chat.completions.create(model=model, messages=messages)
        assert answer.choices[0].message.content == '{"ok": true}'
    finally:
        await client.close()
        server.stop()
