"""Prometheus metrics served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
