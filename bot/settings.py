"""Configuration from the environment (the contract in DESIGN.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

DEFAULT_MODEL = "openai/gpt-4o-mini"
DEFAULT_LLM_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_SLACK_API_URL = "https://slack.com/api/"
DEFAULT_GITHUB_API_URL = "https://api.github.com"


def _env(name: str, environ: dict[str, str]) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _private_key(env: dict[str, str]) -> str | None:
    """GITHUB_APP_PRIVATE_KEY (PEM, literal \\n allowed) or GITHUB_APP_PRIVATE_KEY_FILE."""
    text = _env("GITHUB_APP_PRIVATE_KEY", env)
    if text:
        return text.replace("\\n", "\n")
    path = _env("GITHUB_APP_PRIVATE_KEY_FILE", env)
    return Path(path).read_text() if path else None


@dataclass(frozen=True)
class Settings:
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str = DEFAULT_SLACK_API_URL
    github_token: str | None = None
    github_api_url: str = DEFAULT_GITHUB_API_URL
    github_webhook_secret: str | None = None
    github_app_id: str | None = None
    github_app_private_key: str | None = None
    github_app_installation_id: str | None = None
    llm_api_key: str | None = None
    llm_base_url: str = DEFAULT_LLM_BASE_URL
    llm_models: tuple[str, ...] = (DEFAULT_MODEL,)
    llm_timeout_seconds: float = 25.0
    redis_url: str | None = None
    signing_key: str | None = None
    signing_key_file: Path | None = None
    constitution_path: Path = Path("constitution.yml")
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("sophie")))
    port: int = 3000
    # Where `sophie serve` listens (HOST or --host). Loopback by default: put a TLS proxy in
    # front, or set HOST=0.0.0.0 (all interfaces) deliberately when the proxy is elsewhere.
    host: str = "127.0.0.1"
    public_url: str | None = None
    poll_seconds: float = 10.0
    # How often an idle worker looks for jobs: the floor of directive-to-card latency.
    worker_poll_delay: float = 0.02
    # The longest a job may run before it is cancelled (and tried again).
    job_timeout: float = 120.0
    dispatch_settle_seconds: float = 45.0
    status_edit_seconds: float = 1.5
    # `sophie worker` serves /healthz, /readyz and /metrics on this port (unset: none).
    worker_port: int | None = None
    # How often a worker publishes its heartbeat and renews its running jobs' leases.
    worker_heartbeat_seconds: float = 2.0
    # A running job's lease: a job whose worker died runs again within about this long.
    job_lease_seconds: float = 10.0
    # Retries of a model call (on timeouts, 429 and 5xx; backoff honours Retry-After).
    llm_retries: int = 1
    # How many models are asked at once (0: all); with the timeout, retries and the one
    # repair it sets the planning deadline (bot.deadlines.planning_deadline), checked at start.
    llm_parallel: int = 0
    # How often the reconciler sweeps for plans left behind (a cron job on every worker).
    reconcile_seconds: int = 5
    # How long a plan may sit pending without a card or approved without a dispatch before
    # the reconciler moves it on (dispatching and running plans get longer, derived).
    stuck_seconds: float = 30.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        models = tuple(
            m.strip()
            for m in (_env("SOPHIE_LLM_MODELS", env) or DEFAULT_MODEL).split(",")
            if m.strip()
        )
        key_file = _env("SOPHIE_SIGNING_KEY_FILE", env)
        data_dir = _env("SOPHIE_DATA_DIR", env)
        return cls(
            slack_bot_token=_env("SLACK_BOT_TOKEN", env),
            slack_signing_secret=_env("SLACK_SIGNING_SECRET", env),
            slack_app_token=_env("SLACK_APP_TOKEN", env),
            slack_api_url=_env("SLACK_API_URL", env) or DEFAULT_SLACK_API_URL,
            github_token=_env("GITHUB_TOKEN", env),
            github_api_url=(_env("GITHUB_API_URL", env) or DEFAULT_GITHUB_API_URL).rstrip("/"),
            github_webhook_secret=_env("GITHUB_WEBHOOK_SECRET", env),
            github_app_id=_env("GITHUB_APP_ID", env),
            github_app_private_key=_private_key(env),
            github_app_installation_id=_env("GITHUB_APP_INSTALLATION_ID", env),
            llm_api_key=_env("SOPHIE_LLM_API_KEY", env)
            or _env("OPENROUTER_API_KEY", env)
            or _env("OPENAI_API_KEY", env),
            llm_base_url=_env("SOPHIE_LLM_BASE_URL", env) or DEFAULT_LLM_BASE_URL,
            llm_models=models or (DEFAULT_MODEL,),
            llm_timeout_seconds=float(_env("SOPHIE_LLM_TIMEOUT", env) or 25),
            redis_url=_env("REDIS_URL", env),
            signing_key=_env("SOPHIE_SIGNING_KEY", env),
            signing_key_file=Path(key_file) if key_file else None,
            constitution_path=Path(_env("SOPHIE_CONSTITUTION", env) or "constitution.yml"),
            data_dir=Path(data_dir) if data_dir else Path(platformdirs.user_data_dir("sophie")),
            port=int(_env("PORT", env) or 3000),
            host=_env("HOST", env) or "127.0.0.1",
            public_url=_env("SOPHIE_PUBLIC_URL", env),
            poll_seconds=float(_env("SOPHIE_POLL_SECONDS", env) or 10),
            worker_poll_delay=float(_env("SOPHIE_WORKER_POLL_SECONDS", env) or 0.02),
            job_timeout=float(_env("SOPHIE_JOB_TIMEOUT", env) or 120),
            dispatch_settle_seconds=float(_env("SOPHIE_DISPATCH_SETTLE_SECONDS", env) or 45),
            status_edit_seconds=float(_env("SOPHIE_STATUS_EDIT_SECONDS", env) or 1.5),
            worker_port=int(_env("SOPHIE_WORKER_PORT", env) or 0) or None,
            worker_heartbeat_seconds=float(_env("SOPHIE_WORKER_HEARTBEAT_SECONDS", env) or 2),
            job_lease_seconds=float(_env("SOPHIE_JOB_LEASE_SECONDS", env) or 10),
            llm_retries=int(_env("SOPHIE_LLM_RETRIES", env) or 1),
            llm_parallel=int(_env("SOPHIE_LLM_PARALLEL", env) or 0),
            reconcile_seconds=int(_env("SOPHIE_RECONCILE_SECONDS", env) or 5),
            stuck_seconds=float(_env("SOPHIE_STUCK_SECONDS", env) or 30),
        )

    @property
    def github_configured(self) -> bool:
        app = self.github_app_id and self.github_app_private_key and self.github_app_installation_id
        return bool(self.github_token or app)

    @property
    def dry_run(self) -> bool:
        return not self.github_configured

    @property
    def offline_planner(self) -> bool:
        return self.llm_api_key is None

    def secrets(self) -> list[str]:
        """Values that must never appear in logs or Slack messages."""
        values = [
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.github_token,
            self.github_webhook_secret,
            self.github_app_private_key,
            self.llm_api_key,
            self.signing_key,
        ]
        return [v for v in values if v]
