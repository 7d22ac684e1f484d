"""Prometheus metrics of the webhook's decisions, on a registry owned by the app (no globals).

Labels are bounded: step, outcome and reason are small fixed sets; no pod, namespace or
dag_id labels (those belong to kube-state-metrics, joined through the stamped pod labels).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .decision import Decision

__all__ = ["CONTENT_TYPE_LATEST", "WebhookMetrics"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class WebhookMetrics:
    """The counters and histograms one server updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "gpu_webhook_admissions", "Admission decisions by step, outcome and reason.",
            ["step", "outcome", "reason"], registry=self.registry)
        self.bad_requests = Counter(
            "gpu_webhook_bad_requests", "Requests answered with a 4xx before any decision.",
            ["step", "status"], registry=self.registry)
        self.latency = Histogram(
            "gpu_webhook_decision_seconds", "Time to read, decide and answer one AdmissionReview.",
            ["step"], buckets=_LATENCY_BUCKETS, registry=self.registry)

    def observe(self, step: str, decision: Decision, seconds: float) -> None:
        outcome = ("warned" if decision.reason.startswith("warned:") else
                   "mutated" if decision.patch and decision.allowed else
                   "allowed" if decision.allowed else "denied")
        self.admissions.labels(step, outcome, decision.reason.removeprefix("warned:")).inc()
        self.latency.labels(step).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
