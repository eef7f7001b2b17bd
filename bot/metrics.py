"""Prometheus metrics served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
