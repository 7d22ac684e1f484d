"""Prometheus metrics of the webhook's decisions, on a registry owned by the app (no globals).

Labels are bounded: step, outcome and reason are small fixed sets, profile and tenant are names
from the policy (or ``unknown`` / ``none``, see :mod:`airflow_gpu_webhook.core.decision`); no pod, namespace or
dag_id labels (those belong to kube-state-metrics, joined through the stamped pod labels; see
docs/observability.md and manifests/monitoring/).

The policy's quota limits and profile weights are gauges read from the policy in force at each
scrape, so a reloaded policy shows at the next scrape with nothing to refresh::

    >>> metrics = WebhookMetrics()
    >>> metrics.follow_policy(lambda: runtime.policy)      # doctest: +SKIP
    >>> metrics.observe("mutate", decision, 0.0004)        # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..core.decision import Decision, Reason
from ..core.policy import Policy
from ..core.quota import ResourceList

__all__ = ["CONTENT_TYPE_LATEST", "NONE", "WebhookMetrics", "ksm_name"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

#: profile and tenant of a pod the webhook does not manage (an empty label would vanish in PromQL).
NONE = "none"

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")


def ksm_name(name: str) -> str:
    """A resource or quota line as kube-state-metrics spells it in label values and names.

    ``nvidia.com/mig-1g.10gb`` -> ``nvidia_com_mig_1g_10gb`` (its ``SanitizeLabelName``, as in
    ``kube_pod_container_resource_requests{resource=...}``), ``gpuEquivalent`` ->
    ``gpu_equivalent`` (its snake-casing), so quota gauges join its series without rewriting.
    """
    return _CAMEL.sub(r"\1_\2", _INVALID.sub("_", name)).lower()


class _PolicyCollector(Collector):
    """The policy in force as gauges, read at scrape time from ``source``."""

    def __init__(self, source: Callable[[], Policy | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        policy = self.source()
        info = GaugeMetricFamily("gpu_webhook_policy_info", "The policy in force (always 1).",
                                 labels=["policy", "enforcement"])
        limits = GaugeMetricFamily(
            "gpu_webhook_quota_limit", "A tenant's quota line from the policy; resource is the line as "
            "kube-state-metrics spells resources (nvidia_com_gpu, gpu_equivalent).",
            labels=["tenant", "line", "resource"])
        weights = GaugeMetricFamily(
            "gpu_webhook_profile_gpu_equivalent", "Quota weight of one unit of a profile's resource, in whole GPUs.",
            labels=["profile", "resource"])
        if policy is not None:
            info.add_metric([policy.metadata.name, policy.spec.enforcement], 1)
            for tenant, spec in policy.spec.tenants.items():
                for line, limit in spec.quota.items():
                    limits.add_metric([tenant, line, ksm_name(line)], float(limit))
            for name, profile in policy.spec.profiles.items():
                weights.add_metric([name, ksm_name(profile.resource)], float(profile.gpuEquivalent))
        yield from (info, limits, weights)


class _TrackingCollector(Collector):
    """What ``serve --track-usage`` knows of the cluster, read at scrape time: each tenant's
    usage per quota line (the figure the quota is charged against) and whether each watch has
    synced. Usage is absent, not zero, while the pod watch has not synced: it is unknown then."""

    def __init__(self, policy: Callable[[], Policy | None], usage: Callable[[], Mapping[str, ResourceList] | None],
                 synced: Mapping[str, Callable[[], bool]]) -> None:
        self.policy, self.usage, self.synced = policy, usage, synced

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "gpu_webhook_tenant_usage", "What a tenant's unfinished managed GPU pods hold per quota line, as the "
            "webhook's pod watch sees it (the usage its quota is charged against); line and resource as in "
            "gpu_webhook_quota_limit.",
            labels=["tenant", "line", "resource"])
        synced = GaugeMetricFamily("gpu_webhook_watch_synced", "1 once the watch has read the whole list, else 0.",
                                   labels=["watch"])
        for name, is_synced in self.synced.items():
            synced.add_metric([name], 1.0 if is_synced() else 0.0)
        usage, policy = self.usage(), self.policy()
        if usage is not None and policy is not None:
            for tenant, spec in policy.spec.tenants.items():
                lines = usage.get(tenant, {})
                for line in dict.fromkeys([*spec.quota, *lines]):   # every quota line, 0 when nothing is held
                    held.add_metric([tenant, line, ksm_name(line)], float(lines.get(line, 0)))
        yield from (held, synced)


def _counter_of(counter: Counter, values: Sequence[str]) -> Callable[[str], None]:
    increments = {value: counter.labels(value).inc for value in values}
    return lambda value: increments[value]()


class WebhookMetrics:
    """The counters, histograms and policy gauges one server exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "gpu_webhook_admissions", "Admission decisions by step, outcome, reason, GPU profile and tenant.",
            ["step", "outcome", "reason", "profile", "tenant"], registry=self.registry)
        self.bad_requests = Counter(
            "gpu_webhook_bad_requests", "Requests answered with a 4xx before any decision.",
            ["step", "status"], registry=self.registry)
        self.reloads = Counter(
            "gpu_webhook_reloads", "Reloads of the policy or serving certificate files, by result.",
            ["what", "result"], registry=self.registry)
        for what in ("policy", "certificate"):  # from 0, so the first failure is an increase()
            for result in ("ok", "failed", "error"):
                self.reloads.labels(what, result)
        self.ledger_rounds = Counter(
            "gpu_webhook_ledger_rounds", "Read-check-write rounds on the quota ledger (serve --track-usage), by how "
            "they ended: written, over-quota, conflict (another replica wrote first), unavailable, watch-behind "
            "(this replica's pod watch had not reached the ledger's prunedThrough).",
            ["result"], registry=self.registry)
        self.ledger_pruned = Counter(
            "gpu_webhook_ledger_pruned", "Reservations removed from the quota ledger, by how: confirmed (the pod was "
            "seen or fetched) or ghost (the create failed after /validate).",
            ["how"], registry=self.registry)
        self.claim_templates = Counter(
            "gpu_webhook_claim_templates", "Writes of the platform's ResourceClaimTemplates by the reconciler (serve "
            "--track-usage with DRA claim profiles), by result: created, replaced (its spec differed: deleted and "
            "created), relabelled, conflict (another writer kept changing it; next pass), deferred (replaced by this "
            "replica moments ago), no-namespace (a tenant's namespace does not exist), failed.",
            ["result"], registry=self.registry)
        self.latency = Histogram(
            "gpu_webhook_decision_seconds", "Time to read, decide and answer one AdmissionReview.",
            ["step"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._policy = _PolicyCollector(lambda: None)
        self.registry.register(self._policy)
        # (step, allowed, unpatched, warned, reason, profile, tenant) -> (counter inc, histogram
        # observe): prometheus_client's labels() costs more than the update itself, and the keys are bounded.
        self._children: dict[tuple[str, bool, bool, bool, Reason, str, str],
                             tuple[Callable[[], None], Callable[[float], None]]] = {}

    def follow_policy(self, source: Callable[[], Policy | None]) -> None:
        """Expose the policy that ``source`` returns at each scrape (the one in force)."""
        self._policy.source = source

    def ledger_counter(self, results: Sequence[str]) -> Callable[[str], None]:
        """What a quota ledger tells how each round ended; every result starts at 0, so the first
        conflict is an ``increase()``."""
        return _counter_of(self.ledger_rounds, results)

    def ledger_pruned_counter(self, kinds: Sequence[str]) -> Callable[[str], None]:
        """What a quota ledger tells how each pruned reservation left it (from 0, as above)."""
        return _counter_of(self.ledger_pruned, kinds)

    def template_counter(self, results: Sequence[str]) -> Callable[[str], None]:
        """What the claim-template reconciler tells how each template's write ended (from 0, as above)."""
        return _counter_of(self.claim_templates, results)

    def follow_tracking(self, usage: Callable[[], Mapping[str, ResourceList] | None],
                        synced: Mapping[str, Callable[[], bool]]) -> None:
        """Expose live usage and watch sync state (``serve --track-usage``): ``usage`` returns
        tenant -> line -> quantity, or None while unknown; ``synced`` maps watch names to checks."""
        self.registry.register(_TrackingCollector(lambda: self._policy.source(), usage, synced))

    def observe(self, step: str, decision: Decision, seconds: float) -> None:
        """Count one answered AdmissionReview and its latency (the hot path: one dict lookup)."""
        key = (step, decision.allowed, not decision.patch, decision.warned, decision.reason, decision.profile,
               decision.tenant)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._children_for(*key)
        children[0]()
        children[1](seconds)

    def _children_for(self, step: str, allowed: bool, unpatched: bool, warned: bool, reason: Reason, profile: str,
                      tenant: str) -> tuple[Callable[[], None], Callable[[float], None]]:
        outcome = ("warned" if warned else
                   "mutated" if allowed and not unpatched else
                   "allowed" if allowed else "denied")
        counter = self.admissions.labels(step, outcome, str(reason), profile or NONE, tenant or NONE)
        return counter.inc, self.latency.labels(step).observe

    def reloaded(self, what: str, ok: bool | None) -> None:
        """A reload of the policy or the serving certificate was attempted (``ok``: taken;
        None: the file watch itself hit an unexpected error, and goes on)."""
        self.reloads.labels(what, "error" if ok is None else "ok" if ok else "failed").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
