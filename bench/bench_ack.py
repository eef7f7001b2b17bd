"""Acknowledgement latency: SOPHIE versus a bare Bolt AsyncApp, same run, same loopback.

Sends signed Slack requests (an app_mention event, a /sophie command, an Approve
click) over HTTP to each app in turn and measures the time until the HTTP answer,
which is what Slack's 3-second rule is about. SOPHIE runs its web process only
(the worker that plans would be a separate process, as in the Procfile); the bare
app has empty listeners and Bolt's default settings.

    scripts/bench            # all benchmarks
    .venv/bin/python bench/bench_ack.py --rounds 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request  # noqa: E402
from slack_bolt.async_app import AsyncAck, AsyncApp  # noqa: E402
from slack_sdk.web.async_client import AsyncWebClient  # noqa: E402

from bench.common import CHANNEL, REQUESTER, USERS, redis, table  # noqa: E402
from handlers import blocks  # noqa: E402
from roles.records import Actor, Directive, Thread  # noqa: E402
from tests import slack_requests as sr  # noqa: E402
from tests.fakes.server import ThreadedServer  # noqa: E402
from tests.fakes.slack_api import FakeSlack  # noqa: E402
from tests.harness import BOT_TOKEN, SIGNING_SECRET, settings_for, start_app  # noqa: E402

SEED = "Add caching to the user authentication system and deploy to staging"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://127.0.0.1:{port}"


def bare_bolt(slack_url: str) -> web.Application:
    bolt = AsyncApp(
        client=AsyncWebClient(token=BOT_TOKEN, base_url=slack_url),
        signing_secret=SIGNING_SECRET,
    )

    @bolt.event("app_mention")
    async def on_mention() -> None:
        return None

    @bolt.command("/sophie")
    async def on_command(ack: AsyncAck) -> None:
        await ack()

    @bolt.action(blocks.APPROVE)
    async def on_approve(ack: AsyncAck) -> None:
        await ack()

    async def events(request: web.Request) -> web.StreamResponse:
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    app = web.Application()
    app.router.add_post("/slack/events", events)
    return app


class Requests:
    """Fresh, correctly signed requests of each kind (new event ids every time)."""

    def __init__(self, slack_url: str, plan_value: str, card_ts: str) -> None:
        self.slack_url = slack_url
        self.plan_value = plan_value
        self.card_ts = card_ts
        self.n = 0

    def make(self, kind: str) -> tuple[str, str]:
        self.n += 1
        if kind == "event":
            body = sr.mention_event(f"{SEED} #{self.n}", REQUESTER, CHANNEL)
            return json.dumps(body), "application/json"
        response_url = f"{self.slack_url}/respond/bench-{self.n}"
        if kind == "command":
            return sr.command_body(f"{SEED} #{self.n}", REQUESTER, CHANNEL, response_url), (
                "application/x-www-form-urlencoded"
            )
        # The requester's own click is refused (self-approval): the whole decision path
        # runs, and the plan stays pending for the next click.
        click = sr.block_action(
            blocks.APPROVE, self.plan_value, REQUESTER, CHANNEL, self.card_ts, response_url
        )
        return sr.form_body(click), "application/x-www-form-urlencoded"


async def timed_post(session: aiohttp.ClientSession, url: str, body: str, ctype: str) -> float:
    headers = sr.signed_headers(SIGNING_SECRET, body, None, ctype)
    start = time.perf_counter()
    async with session.post(f"{url}/slack/events", data=body.encode(), headers=headers) as resp:
        await resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}")
    return elapsed


async def run(rounds: int, warmup: int) -> None:
    fake = FakeSlack(token=BOT_TOKEN, users=USERS, usergroups={"S0SRETEAM1": []})
    slack = ThreadedServer(fake.app).start()
    with redis() as server, tempfile.TemporaryDirectory(prefix="sophie-bench-") as tmp:
        settings = settings_for(
            server.url, Path(tmp), slack_url=slack.url, github_url=None, llm_url=None
        )
        sophie = await start_app(settings, worker=False)
        record = await sophie.rt.sophie.plan(
            Directive(
                text=SEED,
                requester=Actor(team_id=sr.TEAM, user_id=REQUESTER),
                thread=Thread(channel=CHANNEL, thread_ts="1700000000.000001"),
                source="mention",
                event_id="EvBENCHSEED",
            )
        )
        assert record is not None and record.card_ts is not None
        value = blocks.button_value(record.plan)
        bare_runner, bare_url = await serve(bare_bolt(slack.url.rstrip("/") + "/api/"))
        requests = Requests(slack.url, value, record.card_ts)
        samples: dict[tuple[str, str], list[float]] = {}
        async with aiohttp.ClientSession() as session:
            for i in range(warmup + rounds):
                for kind in ("event", "command", "click"):
                    for name, url in (("sophie", sophie.url), ("bolt", bare_url)):
                        body, ctype = requests.make(kind)
                        elapsed = await timed_post(session, url, body, ctype)
                        if i >= warmup:
                            samples.setdefault((kind, name), []).append(elapsed)
        await bare_runner.cleanup()
        await sophie.close()
        queued = len(fake.rejections)
    slack.stop()
    rows: list[tuple[str, list[float], list[float]]] = [
        (kind, samples[(kind, "sophie")], samples[(kind, "bolt")])
        for kind in ("event", "command", "click")
    ]
    print(
        table(
            f"Ack latency over loopback, {rounds} requests of each kind "
            f"(after {warmup} warm-up), SOPHIE / bare Bolt AsyncApp",
            rows,
            ("sophie", "bolt"),
        )
    )
    print(f"fake Slack rejections during the run: {queued}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args(argv)
    asyncio.run(run(args.rounds, args.warmup))


if __name__ == "__main__":
    main()
