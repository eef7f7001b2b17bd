"""Fail closed on configuration, tried on the real `sophie serve` and `sophie doctor`:
HTTP mode without a signing secret does not start; Socket Mode serves no Slack route, so a
forged request on the port does nothing; the default bind is loopback only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml

from tests import slack_requests as sr
from tests.fakes.server import ThreadedServer
from tests.fakes.slack_socket import FakeSlackSocket
from tests.harness import BOT_TOKEN, SIGNING_SECRET, eventually
from tests.integration.conftest import CHANNEL, DAVE, USERS

ROOT = Path(__file__).resolve().parents[2]
APP_TOKEN = "xapp-1-A0SOPHIEAPP-test"
CLOSED_PORT_URL = "http://127.0.0.1:9/api/"  # nothing listens: Slack calls fail at once


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "GITHUB_", "SOPHIE_", "OPENROUTER", "OPENAI"))
        and k not in ("REDIS_URL", "HOST", "PORT")
    }
    env.update({"SOPHIE_DATA_DIR": str(tmp / "data"), **extra})
    return env


def _sophie(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _listening(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (Linux /proc/net/tcp*)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK_V4 = "0100007F"
ANY_V4 = "00000000"


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


async def _start(
    started: list[subprocess.Popen[bytes]], tmp: Path, env: dict[str, str], *args: str
) -> tuple[int, Path]:
    port = _port()
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve", *args],
            cwd=ROOT,
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=out,
        )
    started.append(proc)

    async def healthy() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    return resp.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(healthy, within=30, what="sophie serve to answer /healthz")
    return port, log


@pytest.mark.parametrize(
    ("env", "args", "variable", "says"),
    [
        (
            {"SLACK_BOT_TOKEN": BOT_TOKEN},
            (),
            "SLACK_SIGNING_SECRET",
            "SLACK_SIGNING_SECRET is not set: HTTP mode cannot verify that requests come from "
            "Slack. Set SLACK_SIGNING_SECRET",
        ),
        (
            {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET},
            ("--socket",),
            "SLACK_APP_TOKEN",
            "--socket needs SLACK_APP_TOKEN",
        ),
        (
            {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": "xoxb-not-an-app-token"},
            (),
            "SLACK_APP_TOKEN",
            "must start with xapp-",
        ),
        (
            {"SLACK_BOT_TOKEN": "xoxp-a-user-token", "SLACK_SIGNING_SECRET": SIGNING_SECRET},
            (),
            "SLACK_BOT_TOKEN",
            "must start with xoxb-",
        ),
        ({"SLACK_APP_TOKEN": APP_TOKEN}, (), "SLACK_BOT_TOKEN", "Socket Mode needs"),
    ],
    ids=["http-without-secret", "socket-without-app-token", "app-token", "user-token", "no-bot"],
)
def test_serve_refuses_a_configuration_that_weakens_a_guarantee(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], variable: str, says: str
) -> None:
    port = _port()
    began = time.monotonic()
    result = _sophie("serve", *args, env=_env(tmp_path, PORT=str(port), **env))
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and f"Set {variable}" in result.stderr, result.stderr
    # Refused before anything started: no port, no embedded Redis, no key.
    assert _listening(port) == set()
    assert not (tmp_path / "data").exists()
    assert time.monotonic() - began < 20
    for secret in (BOT_TOKEN, SIGNING_SECRET, APP_TOKEN):
        assert secret not in result.stderr + result.stdout


def test_worker_refuses_a_user_token(tmp_path: Path) -> None:
    result = _sophie("worker", env=_env(tmp_path, SLACK_BOT_TOKEN="xoxp-a-user-token"))
    assert result.returncode == 2 and "Set SLACK_BOT_TOKEN" in result.stderr, result.stderr
    assert not (tmp_path / "data").exists()


async def test_default_bind_is_loopback_and_no_slack_route_without_credentials(
    tmp_path: Path, serve: list[subprocess.Popen[bytes]]
) -> None:
    port, log = await _start(serve, tmp_path, _env(tmp_path))
    assert _listening(port) == {LOOPBACK_V4}
    async with aiohttp.ClientSession() as session:
        event = json.dumps(sr.mention_event("deploy auth to production", DAVE, CHANNEL))
        async with session.post(
            f"http://127.0.0.1:{port}/slack/events",
            data=event,
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 404
    assert "bind: 127.0.0.1:" in log.read_text()


async def test_socket_mode_serves_no_slack_route(
    tmp_path: Path, redis_url: str, serve: list[subprocess.Popen[bytes]]
) -> None:
    """Even with a signing secret set, Socket Mode's HTTP port has no Slack route: forged and
    correctly signed requests alike get 404 and nothing is planned or posted. (HOST is set
    here to show it is honoured: all interfaces.)"""
    slack = FakeSlackSocket(token=BOT_TOKEN, users=USERS, app_token=APP_TOKEN)
    server = ThreadedServer(slack.app).start()
    try:
        env = _env(
            tmp_path,
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_APP_TOKEN=APP_TOKEN,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            SLACK_API_URL=f"{server.url}/api/",
            REDIS_URL=redis_url,
            HOST="0.0.0.0",
        )
        port, log = await _start(serve, tmp_path, env, "--socket")
        await eventually(lambda: slack.connections == 1, within=20, what="the WebSocket")
        assert _listening(port) == {ANY_V4}
        url = f"http://127.0.0.1:{port}/slack/events"
        body = json.dumps(sr.mention_event("deploy auth to production", DAVE, CHANNEL))
        async with aiohttp.ClientSession() as session:
            unsigned = {"Content-Type": "application/json"}
            signed = sr.signed_headers(SIGNING_SECRET, body)
            for headers in (unsigned, signed):
                async with session.post(url, data=body, headers=headers) as resp:
                    assert resp.status == 404
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert [k async for k in client.scan_iter("sophie:plan*")] == []
        finally:
            await client.aclose()
        assert slack.messages == [] and slack.rejections == []
        assert "Socket Mode" in log.read_text() and "has no Slack route" in log.read_text()
    finally:
        for proc in serve:  # close the WebSocket before the fake Slack stops
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        server.stop()


def _doctor(tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return _sophie("doctor", env=_env(tmp, SLACK_API_URL=CLOSED_PORT_URL, **env))


def test_doctor_reports_mode_route_and_bind(tmp_path: Path) -> None:
    no_secret = _doctor(tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN)
    assert no_secret.returncode == 1
    out = no_secret.stdout
    assert "✗ slack mode: HTTP mode without SLACK_SIGNING_SECRET" in out
    assert "POST /slack/events is not mounted" in out
    assert "✗ refused, set SLACK_SIGNING_SECRET: SLACK_SIGNING_SECRET is not set" in out
    assert "✓ bind: 127.0.0.1:3000 (loopback only" in out

    http = _doctor(
        tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET, HOST="0.0.0.0"
    )
    assert "✓ slack mode: HTTP mode; POST /slack/events is mounted and every request is " in (
        http.stdout
    )
    assert "✓ bind: 0.0.0.0:3000 (reachable from the network" in http.stdout
    assert "refused" not in http.stdout

    sock = _doctor(tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN, PORT="4000")
    assert "✓ slack mode: Socket Mode (SLACK_APP_TOKEN); the HTTP server has no Slack route" in (
        sock.stdout
    )
    assert "bind: 127.0.0.1:4000" in sock.stdout

    user_token = _doctor(tmp_path, SLACK_BOT_TOKEN="xoxp-1", SLACK_APP_TOKEN=APP_TOKEN)
    assert "✗ refused, set SLACK_BOT_TOKEN" in user_token.stdout
    for result in (no_secret, http, sock, user_token):
        assert BOT_TOKEN not in result.stdout + result.stderr
        assert SIGNING_SECRET not in result.stdout + result.stderr


def test_a_constitution_that_cannot_be_kept_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    """A digest schedule that would never fire, an API token with no channel: refused at
    start (exit 2, what to fix, no traceback), for serve and worker alike."""
    doc = yaml.safe_load((ROOT / "constitution.yml").read_text())
    doc["policies_dir"] = str(ROOT / "policies")
    doc["digest"]["schedule"] = "61 * * * *"
    bad = tmp_path / "constitution.yml"
    bad.write_text(yaml.safe_dump(doc))
    for command in ("serve", "worker"):
        port = _port()
        result = _sophie(command, env=_env(tmp_path, PORT=str(port), SOPHIE_CONSTITUTION=str(bad)))
        assert result.returncode == 2, result.stderr
        assert "digest schedule '61 * * * *'" in result.stderr and str(bad) in result.stderr
        assert "Traceback" not in result.stderr
        assert _listening(port) == set() and not (tmp_path / "data" / "redis").exists()
