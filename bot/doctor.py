"""`sophie doctor`: is the configuration complete, and is everything reachable?"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bot import startup_checks
from bot.settings import Settings


async def _check(name: str, probe: Callable[[], Awaitable[str]]) -> bool:
    try:
        detail = await asyncio.wait_for(probe(), 10)
    except Exception as exc:
        print(f"✗ {name}: {type(exc).__name__}: {str(exc)[:200]}")
        return False
    print(f"✓ {name}: {detail}")
    return True


# What SOPHIE needs of a fine-grained token or GitHub App (README, "GitHub permissions").
GITHUB_NEEDS = {
    "metadata": "read",
    "actions": "write",  # dispatch; read: runs, jobs, artifacts
    "deployments": "read",  # environment URLs, rollback history
    "contents": "read",  # releases and tags (installers)
    "checks": "read",  # check-run annotations (pushed images)
}
_LEVEL = {"none": 0, "read": 1, "write": 2, "admin": 3}


def _missing(granted: dict[str, str]) -> list[str]:
    return [
        f"{name.capitalize()}: {level}"
        for name, level in GITHUB_NEEDS.items()
        if _LEVEL.get(granted.get(name, "none"), 0) < _LEVEL[level]
    ]


def github_access(settings: Settings, gh: Any, repos: list[tuple[str, str, str]]) -> str:
    """Does the token or App have what SOPHIE needs? (blocking; raises when it does not)

    A GitHub App installation states its permissions (``GET /app/installations/{id}``).
    A classic token names its scopes in ``X-OAuth-Scopes`` on every reply; dispatching
    needs ``repo`` ("OAuth tokens and personal access tokens (classic) need the repo
    scope", https://docs.github.com/en/rest/actions/workflows#create-a-workflow-dispatch-event).
    A fine-grained token states nothing, so one harmless GET per permission on each
    repository in the constitution (``repos``: name, workflow, default ref) shows it; a
    refusal names the permission in ``X-Accepted-GitHub-Permissions``
    (https://docs.github.com/en/rest/using-the-rest-api/troubleshooting-the-rest-api).
    """
    from github import Auth, GithubException, GithubIntegration

    if (
        settings.github_app_id
        and settings.github_app_private_key
        and settings.github_app_installation_id
    ):
        integration = GithubIntegration(
            auth=Auth.AppAuth(settings.github_app_id, settings.github_app_private_key),
            base_url=settings.github_api_url,
        )
        installation = integration.get_app_installation(int(settings.github_app_installation_id))
        missing = _missing(dict(installation.raw_data.get("permissions") or {}))
        if missing:
            raise RuntimeError(f"the App installation lacks {', '.join(missing)}")
        return "App permissions: " + ", ".join(f"{k} {v}" for k, v in GITHUB_NEEDS.items())
    headers, _ = gh.requester.requestJsonAndCheck("GET", "/rate_limit")
    scopes = {k.lower(): v for k, v in headers.items()}.get("x-oauth-scopes")
    if scopes is not None:
        have = {s.strip() for s in scopes.split(",") if s.strip()}
        if "repo" not in have:
            raise RuntimeError(
                f"the classic token needs the repo scope (it has: {scopes or 'none'})"
            )
        return f"classic token, scopes: {scopes}"
    problems = []
    for repo, workflow, ref in repos:
        probes = {
            "Metadata: read": f"/repos/{repo}",
            "Actions: read": f"/repos/{repo}/actions/workflows/{workflow}",
            "Deployments: read": f"/repos/{repo}/deployments?per_page=1",
            "Contents: read": f"/repos/{repo}/tags?per_page=1",
            "Checks: read": f"/repos/{repo}/commits/{ref}/check-runs?per_page=1",
        }
        for need, url in probes.items():
            try:
                gh.requester.requestJsonAndCheck("GET", url)
            except GithubException as exc:
                accepted = {k.lower(): v for k, v in (exc.headers or {}).items()}.get(
                    "x-accepted-github-permissions", ""
                )
                if exc.status == 403:
                    problems.append(f"{repo} needs {need} ({accepted or exc.status})")
                elif exc.status == 404 and need == "Metadata: read":
                    problems.append(f"{repo} is not visible to this token")
                    break
                elif exc.status != 404:  # 404: no such workflow or ref yet, not a permission
                    problems.append(f"{repo}: {need} answered {exc.status}")
    if problems:
        raise RuntimeError("; ".join(problems))
    return (
        f"fine-grained token reads what SOPHIE needs in {len(repos)} repo(s); "
        "Actions: write shows at the first dispatch"
    )


def _configuration(settings: Settings) -> list[bool]:
    """What `sophie serve` would do (mode, Slack route, bind), and what it would refuse."""
    results = []
    for finding in startup_checks.describe(settings, settings.host, settings.port):
        print(f"{'✓' if finding.ok else '✗'} {finding.name}: {finding.detail}")
        results.append(finding.ok)
    for refusal in startup_checks.refusals(settings, "serve"):
        print(f"✗ refused, set {refusal.variable}: {refusal.message}")
        results.append(False)
    return results


async def run_doctor(settings: Settings) -> int:
    results = _configuration(settings)

    async def constitution() -> str:
        from roles.constitution import load_constitution

        c = load_constitution(settings.constitution_path)
        return f"{settings.constitution_path} version {c.version}, {len(c.repos)} repo(s)"

    async def signing_key() -> str:
        from bot.signer import load_keyring

        ring = load_keyring(settings.signing_key, settings.signing_key_file, settings.data_dir)
        return ring.keyid

    async def redis() -> str:
        import redis.asyncio as aioredis

        if settings.redis_url is None:
            return "REDIS_URL not set: an embedded redis-server will be started"
        from bot.redis_health import describe_persistence

        client = aioredis.from_url(settings.redis_url, socket_connect_timeout=3)
        try:
            await client.ping()
            found = await describe_persistence(client)
        finally:
            await client.aclose()
        if found.warning:
            return f"reachable; ⚠ {found.warning}"
        return f"reachable; persistence: {found.describe()}"

    async def slack() -> str:
        from slack_sdk.web.async_client import AsyncWebClient

        if settings.slack_bot_token is None:
            raise RuntimeError("SLACK_BOT_TOKEN is not set")
        resp = await AsyncWebClient(
            token=settings.slack_bot_token, base_url=settings.slack_api_url
        ).auth_test()
        return f"team {resp.get('team')} as {resp.get('user')}"

    async def github() -> str:
        if not settings.github_configured:
            return "neither GITHUB_TOKEN nor a GitHub App is set: execution is a DRY RUN"
        from github import Github

        from bot.github_gateway import make_auth

        auth = make_auth(
            settings.github_token,
            settings.github_app_id,
            settings.github_app_private_key,
            settings.github_app_installation_id,
        )
        gh = Github(auth=auth, base_url=settings.github_api_url, retry=None)
        remaining, limit = await asyncio.to_thread(lambda: gh.rate_limiting)
        kind = "token" if settings.github_token else "GitHub App installation"
        from roles.constitution import load_constitution

        c = load_constitution(settings.constitution_path)
        repos = [(r.name, r.workflow, r.default_ref) for r in c.repos]
        access = await asyncio.to_thread(github_access, settings, gh, repos)
        return f"{kind} accepted; {remaining}/{limit} requests left this hour; {access}"

    async def llm() -> str:
        if settings.llm_api_key is None:
            return "no LLM key: the offline planner is used"
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            api_key=settings.llm_api_key, base_url=settings.llm_base_url, max_retries=0, timeout=10
        )
        models = {m.id async for m in client.models.list()}
        missing = [m for m in settings.llm_models if m not in models]
        if missing:
            raise RuntimeError(f"unknown model(s): {', '.join(missing)}")
        return f"{len(settings.llm_models)} model(s) available"

    for name, probe in [
        ("constitution", constitution),
        ("signing key", signing_key),
        ("redis", redis),
        ("slack", slack),
        ("github", github),
        ("llm", llm),
    ]:
        results.append(await _check(name, probe))
    return 0 if all(results) else 1
