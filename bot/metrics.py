"""Prometheus metrics served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from roles.outcomes import Outcome

REGISTRY = CollectorRegistry()

HTTP_SECONDS = Histogram(
    "sophie_http_request_seconds",
    "Time to answer an HTTP request (Slack acks included)",
    ["route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENTS = Counter(
    "sophie_audit_events_total", "Audited state changes by kind", ["kind"], registry=REGISTRY
)
JOBS = Counter(
    "sophie_jobs_total",
    "Background jobs run, by job and outcome",
    ["job", "outcome"],
    registry=REGISTRY,
)

# Job workers (each process reports its own; the queue and heartbeats are shared).
WORKER_UP = Gauge(
    "sophie_worker_up",
    "1 while this process's job worker polls the queue; 0 while it reconnects",
    registry=REGISTRY,
)
WORKER_RESTARTS = Counter(
    "sophie_worker_restarts_total",
    "Times this process's job worker was restarted after a dependency failed",
    registry=REGISTRY,
)
WORKER_JOBS_RUNNING = Gauge(
    "sophie_worker_jobs_running", "Jobs this process's worker is running", registry=REGISTRY
)
WORKERS_ALIVE = Gauge(
    "sophie_workers_alive",
    "Workers with a live heartbeat in Redis, when this process last looked",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "sophie_queue_depth",
    "Jobs in the queue: due (waiting or running) and deferred (scheduled for later)",
    ["state"],
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "sophie_job_leases_lost_total",
    "Jobs stopped because their lease could not be renewed (they run again from the queue)",
    registry=REGISTRY,
)

# Ψ: outcomes and the timings of each step (roles/outcomes.py), observed by the process
# that keeps the outcome (a worker, or a web process running its in-process worker).
_STEP_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
OUTCOMES = Counter(
    "sophie_plan_outcomes_total",
    "Plans ended, by outcome and environment (rolled back is counted when the rollback ends)",
    ["result", "environment"],
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "sophie_plan_step_seconds",
    "Time each step of a plan took: directive→card, card→decision, decision→dispatch, "
    "dispatch→deployed, directive→deployed (lead time), failure→restored, build",
    ["step", "environment"],
    registry=REGISTRY,
    buckets=_STEP_BUCKETS,
)


class PrometheusMetrics:
    """Implements :class:`roles.ports.Metrics` with this process's registry."""

    def outcome(self, outcome: Outcome) -> None:
        env = outcome.environment
        OUTCOMES.labels(outcome.result, env).inc()
        if outcome.dry_run:
            return
        steps = {
            "directive_to_card": (outcome.directive_at, outcome.card_at),
            "card_to_decision": (outcome.card_at, outcome.decided_at),
            "decision_to_dispatch": (outcome.decided_at, outcome.dispatched_at),
        }
        if outcome.deployed:
            steps["dispatch_to_deployed"] = (outcome.dispatched_at, outcome.ended_at)
            steps["lead_time"] = (outcome.directive_at, outcome.ended_at)
        for step, (start, end) in steps.items():
            if start and end and end >= start:
                STEP_SECONDS.labels(step, env).observe(end - start)
        if outcome.build_seconds:
            STEP_SECONDS.labels("build", env).observe(outcome.build_seconds)

    def restored(self, outcome: Outcome) -> None:
        seconds = outcome.restore_seconds
        if outcome.result == "rolled_back":
            OUTCOMES.labels("rolled_back", outcome.environment).inc()
        if seconds is not None:
            STEP_SECONDS.labels("time_to_restore", outcome.environment).observe(seconds)
