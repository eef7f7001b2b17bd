"""The start-up rules, in one place: which Slack mode the settings mean, whether
``POST /slack/events`` exists, and which settings are refused because they would weaken a
guarantee. ``sophie serve``, ``sophie worker`` and ``sophie doctor`` all ask here.

Pure functions of the settings (and the ``--socket`` flag): no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from bot import deadlines
from bot.settings import Settings

SlackMode = Literal["http", "socket", "none"]
Process = Literal["serve", "worker"]

SIGNING_SECRET_HELP = (
    "Set SLACK_SIGNING_SECRET (Slack app settings → Basic Information → App Credentials) "
    "or use Socket Mode with SLACK_APP_TOKEN."
)


@dataclass(frozen=True)
class Refusal:
    """A setting SOPHIE will not start with: the variable to set, and why."""

    variable: str
    message: str


def slack_mode(settings: Settings, socket: bool = False) -> SlackMode:
    """Socket Mode when asked for (``--socket``) or when SLACK_APP_TOKEN is set; HTTP when
    only SLACK_BOT_TOKEN is; otherwise Slack is not configured."""
    if socket or settings.slack_app_token:
        return "socket"
    if settings.slack_bot_token:
        return "http"
    return "none"


def slack_route_mounted(settings: Settings) -> bool:
    """``POST /slack/events`` exists only in HTTP mode with a signing secret to verify it.

    In Socket Mode Slack talks over the WebSocket, so the HTTP server has no Slack route.
    """
    return slack_mode(settings) == "http" and settings.slack_signing_secret is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lease_problem(heartbeat_seconds: float, lease_seconds: float) -> str | None:
    """Timings under which a live job's lease could lapse between two renewals."""
    if heartbeat_seconds <= 0:
        return "SOPHIE_WORKER_HEARTBEAT_SECONDS must be positive."
    if lease_seconds < 3 * heartbeat_seconds:
        return (
            f"SOPHIE_JOB_LEASE_SECONDS ({lease_seconds:g}) must be at least three heartbeats "
            f"(SOPHIE_WORKER_HEARTBEAT_SECONDS={heartbeat_seconds:g}): a running job's lease "
            "is renewed once per heartbeat. Raise SOPHIE_JOB_LEASE_SECONDS or lower the "
            "heartbeat."
        )
    return None


def refusals(settings: Settings, process: Process, *, socket: bool = False) -> list[Refusal]:
    """Every setting that would weaken a guarantee, each naming what to set. Empty: start."""
    found: list[Refusal] = []
    mode = slack_mode(settings, socket)
    bot_token = settings.slack_bot_token
    if bot_token is not None and not bot_token.startswith("xoxb-"):
        found.append(
            Refusal(
                "SLACK_BOT_TOKEN",
                "SLACK_BOT_TOKEN is not a bot token (it must start with xoxb-): any other "
                "token would act with a person's or a workspace's rights. Set SLACK_BOT_TOKEN "
                "to the Bot User OAuth Token (OAuth & Permissions).",
            )
        )
    timing = lease_problem(settings.worker_heartbeat_seconds, settings.job_lease_seconds)
    if timing:
        found.append(Refusal("SOPHIE_JOB_LEASE_SECONDS", timing))
    found.extend(deadline_refusals(settings))  # serve runs jobs too (unless --no-worker)
    if process == "worker":
        return found  # a worker serves no HTTP and opens no WebSocket
    app_token = settings.slack_app_token
    if mode == "socket":
        if app_token is None:
            found.append(
                Refusal(
                    "SLACK_APP_TOKEN",
                    "--socket needs SLACK_APP_TOKEN. Set SLACK_APP_TOKEN to an app-level token "
                    "(xapp-…, scope connections:write; Basic Information → App-Level Tokens).",
                )
            )
        elif not app_token.startswith("xapp-"):
            found.append(
                Refusal(
                    "SLACK_APP_TOKEN",
                    "SLACK_APP_TOKEN is not an app-level token (it must start with xapp-). "
                    "Set SLACK_APP_TOKEN to an app-level token with connections:write "
                    "(Basic Information → App-Level Tokens).",
                )
            )
        if bot_token is None:
            found.append(
                Refusal(
                    "SLACK_BOT_TOKEN",
                    "Socket Mode needs SLACK_BOT_TOKEN too: without it nothing could be "
                    "answered. Set SLACK_BOT_TOKEN (xoxb-…, OAuth & Permissions), or unset "
                    "SLACK_APP_TOKEN.",
                )
            )
    elif mode == "http" and settings.slack_signing_secret is None:
        found.append(
            Refusal(
                "SLACK_SIGNING_SECRET",
                "SLACK_SIGNING_SECRET is not set: HTTP mode cannot verify that requests come "
                f"from Slack. {SIGNING_SECRET_HELP}",
            )
        )
    return found


# Beyond the model: opening the thread, reading precedent, saving the plan, posting the card.
PLANNING_MARGIN_SECONDS = 10.0


def planning_deadline(settings: Settings) -> float | None:
    """How long planning may take with these settings (None: the offline planner)."""
    if settings.offline_planner:
        return None
    return deadlines.planning_deadline(
        settings.llm_timeout_seconds,
        settings.llm_retries,
        len(settings.llm_models),
        settings.llm_parallel,
    )


def deadline_refusals(settings: Settings) -> list[Refusal]:
    """Deadlines must add up: a planning job that the queue would cancel before the model
    had its timeouts, retries and repair could never tell the thread that planning failed."""
    deadline = planning_deadline(settings)
    if deadline is None or deadline + PLANNING_MARGIN_SECONDS <= settings.job_timeout:
        return []
    need = deadline + PLANNING_MARGIN_SECONDS
    return [
        Refusal(
            "SOPHIE_JOB_TIMEOUT",
            f"Planning may take {deadline:g} s (SOPHIE_LLM_TIMEOUT="
            f"{settings.llm_timeout_seconds:g} s × {settings.llm_retries + 1} tries, one "
            f"repair, {len(settings.llm_models)} model(s), SOPHIE_LLM_PARALLEL="
            f"{settings.llm_parallel}) plus {PLANNING_MARGIN_SECONDS:g} s for Slack and Redis, "
            f"more than SOPHIE_JOB_TIMEOUT ({settings.job_timeout:g} s): the job would be "
            f"cancelled before it could tell the thread. Set SOPHIE_JOB_TIMEOUT to at least "
            f"{need:g}, or lower SOPHIE_LLM_TIMEOUT or SOPHIE_LLM_RETRIES, or ask fewer models "
            "at once.",
        )
    ]


@dataclass(frozen=True)
class Finding:
    """One line of what `sophie serve` would do: ``ok`` False when it would refuse."""

    name: str
    detail: str
    ok: bool = True


def describe(settings: Settings, host: str, port: int, socket: bool = False) -> list[Finding]:
    """Slack mode, the Slack route and the bind address, each with the next step to take."""
    mode = slack_mode(settings, socket)
    refused = refusals(settings, "serve", socket=socket)
    findings: list[Finding] = []
    if mode == "http" and settings.slack_signing_secret is not None:
        findings.append(
            Finding(
                "slack mode",
                "HTTP mode; POST /slack/events is mounted and every request is verified with "
                "SLACK_SIGNING_SECRET. Next: set the Request URL (Event Subscriptions, "
                "Interactivity, Slash Commands) to https://<your host>/slack/events",
            )
        )
    elif mode == "http":
        findings.append(
            Finding(
                "slack mode",
                "HTTP mode without SLACK_SIGNING_SECRET; POST /slack/events is not mounted and "
                f"`sophie serve` refuses to start. Next: {SIGNING_SECRET_HELP}",
                ok=False,
            )
        )
    elif mode == "socket":
        findings.append(
            Finding(
                "slack mode",
                "Socket Mode (SLACK_APP_TOKEN); the HTTP server has no Slack route (POST "
                "/slack/events answers 404), so nothing on the port can pose as Slack",
                ok=not refused,
            )
        )
    else:
        findings.append(
            Finding(
                "slack mode",
                "not configured (no SLACK_BOT_TOKEN); POST /slack/events is not mounted. "
                "Next: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (HTTP) or SLACK_BOT_TOKEN "
                "and SLACK_APP_TOKEN (Socket Mode)",
            )
        )
    if is_loopback(host):
        where = (
            "loopback only. Next: put a TLS-terminating proxy on this machine in front, or set "
            "HOST=0.0.0.0 if the proxy runs elsewhere"
        )
    else:
        where = "reachable from the network. Next: make sure only a TLS-terminating proxy can "
        where += "reach it, or set HOST=127.0.0.1"
    findings.append(Finding("bind", f"{host}:{port} ({where})"))
    return findings
