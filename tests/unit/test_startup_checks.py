"""The start-up rules as a table: which settings `serve` and `worker` refuse, which Slack
mode they mean, and whether POST /slack/events exists (tried over HTTP in
tests/integration/test_fail_closed.py)."""

from __future__ import annotations

import pytest

from bot import slack_guard, startup_checks
from bot.settings import Settings

BOT = "xoxb-1-bot"
APP = "xapp-1-app"
SECRET = "s3cret-signing-secret"


def _settings(**env: str) -> Settings:
    return Settings.from_env({"SOPHIE_DATA_DIR": "/nonexistent", **env})


@pytest.mark.parametrize(
    ("env", "socket", "mode", "refused"),
    [
        ({}, False, "none", []),
        ({"SLACK_SIGNING_SECRET": SECRET}, False, "none", []),
        ({"SLACK_BOT_TOKEN": BOT, "SLACK_SIGNING_SECRET": SECRET}, False, "http", []),
        ({"SLACK_BOT_TOKEN": BOT}, False, "http", ["SLACK_SIGNING_SECRET"]),
        (
            {"SLACK_BOT_TOKEN": BOT, "SLACK_SIGNING_SECRET": "  "},
            False,
            "http",
            ["SLACK_SIGNING_SECRET"],
        ),
        ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP}, False, "socket", []),
        ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP}, True, "socket", []),
        ({"SLACK_BOT_TOKEN": BOT}, True, "socket", ["SLACK_APP_TOKEN"]),
        (
            {"SLACK_BOT_TOKEN": BOT, "SLACK_SIGNING_SECRET": SECRET},
            True,
            "socket",
            ["SLACK_APP_TOKEN"],
        ),
        (
            {"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": "xoxb-wrong"},
            False,
            "socket",
            ["SLACK_APP_TOKEN"],
        ),
        ({"SLACK_APP_TOKEN": APP}, False, "socket", ["SLACK_BOT_TOKEN"]),
        (
            {"SLACK_BOT_TOKEN": "xoxp-user", "SLACK_SIGNING_SECRET": SECRET},
            False,
            "http",
            ["SLACK_BOT_TOKEN"],
        ),
        (
            {"SLACK_BOT_TOKEN": "xoxp-user"},
            False,
            "http",
            [
                "SLACK_BOT_TOKEN",
                "SLACK_SIGNING_SECRET",
            ],
        ),
    ],
)
def test_serve_refusals(env: dict[str, str], socket: bool, mode: str, refused: list[str]) -> None:
    settings = _settings(**env)
    assert startup_checks.slack_mode(settings, socket) == mode
    problems = startup_checks.refusals(settings, "serve", socket=socket)
    assert [p.variable for p in problems] == refused
    for problem in problems:  # each message names what to set
        assert f"Set {problem.variable}" in problem.message or "--socket" in problem.message


def test_worker_refuses_only_what_it_uses() -> None:
    """A worker serves no Slack route: no secret is fine, a non-bot token is not."""
    assert startup_checks.refusals(_settings(SLACK_BOT_TOKEN=BOT), "worker") == []
    (problem,) = startup_checks.refusals(_settings(SLACK_BOT_TOKEN="xoxp-1"), "worker")
    assert problem.variable == "SLACK_BOT_TOKEN"


@pytest.mark.parametrize(
    ("env", "mounted"),
    [
        ({"SLACK_BOT_TOKEN": BOT, "SLACK_SIGNING_SECRET": SECRET}, True),
        ({"SLACK_BOT_TOKEN": BOT}, False),
        ({"SLACK_BOT_TOKEN": BOT, "SLACK_SIGNING_SECRET": SECRET, "SLACK_APP_TOKEN": APP}, False),
        ({"SLACK_SIGNING_SECRET": SECRET}, False),
        ({}, False),
    ],
)
def test_slack_route_only_in_http_mode_with_a_secret(env: dict[str, str], mounted: bool) -> None:
    assert startup_checks.slack_route_mounted(_settings(**env)) is mounted


def test_bind_defaults_to_loopback() -> None:
    assert _settings().host == "127.0.0.1"
    assert _settings(HOST="0.0.0.0").host == "0.0.0.0"
    (_, bind) = startup_checks.describe(_settings(), "127.0.0.1", 3000)
    assert "loopback only" in bind.detail
    (_, bind) = startup_checks.describe(_settings(), "0.0.0.0", 3000)
    assert "reachable from the network" in bind.detail


@pytest.mark.parametrize(
    ("timestamp", "status"),
    [("", 401), ("abc", 400), ("1e9", 400), ("-5", 400), ("9" * 40, 400), ("100", 401)],
)
def test_timestamp_format_is_checked_before_the_signature(timestamp: str, status: int) -> None:
    headers = {"X-Slack-Signature": "v0=00", "X-Slack-Request-Timestamp": timestamp}
    refused = slack_guard.verify(headers, b"{}", SECRET, now=1_700_000_000)
    assert refused is not None and refused.status == status
