"""Cluster wiring for `serve --track-usage` and `gpu-webhook usage`: the API client, and the
pod watch, node watch and quota ledger that a server runtime is built with, and for a policy
with DRA profiles the ResourceSlice, DeviceClass and ResourceClaimTemplate watches and the
template reconciler. Nothing here decides anything.

:func:`track_usage` returns a :class:`Tracking`: the seams the server's ``Runtime`` takes
(``usage``, ``nodes``, ``templates``, ``pod_profiles``, ``ready``, ``reserve``) and what a policy
reload must call.
They match the server's Protocols (``UsageSource``, ``NodeSource``, ``TemplateSource``,
``Reserve`` in webhook/server/app.py) structurally, so neither side imports the other::

    tracking = track_usage(kube_client(None), policy, metrics, DEFAULT_LEDGER_NAMESPACE, grace=10)
    runtime = Runtime(policy, usage=tracking.usage, nodes=tracking.nodes, templates=tracking.templates,
                      pod_profiles=tracking.pod_profiles, ready=tracking.ready, reserve=tracking.reserve,
                      metrics=metrics)

The DRA watches start with the first policy (at start or reloaded) that has a DRA profile, so a
cluster without ``resource.k8s.io/v1`` (before Kubernetes 1.34) or without that RBAC never sees
them; once started they run until the process ends.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from ..core.nodes import NodeOffer
    from ..core.policy import Policy
    from ..core.quota import ResourceList
    from .ledger import QuotaReserver
    from .tracker import PodWatch

__all__ = ["BENCHMARK_LEDGER_ENV", "DEFAULT_GRACE", "DEFAULT_LEDGER_NAMESPACE", "LEDGER_LEVERS", "TOP_HOLDERS",
           "Tracking", "TrackingMetrics", "kube_client", "ledger_levers_off", "track_usage"]

# The defaults of the cluster commands' flags live here, in a module that imports the core only for
# typing (and kubernetes inside its functions), so that `gpu-webhook --help` stays cheap.

#: Where the manifests put the ledger, apart from the webhook's own namespace (docs/quota.md).
DEFAULT_LEDGER_NAMESPACE = "gpu-webhook-ledger"
#: Seconds a reservation whose pod no watch has seen is kept before a direct GET may prune it
#: as a ghost. The API server stores a pod right after the last validating webhook answers;
#: webhooks have at most a few seconds each (ours: 5 s timeout), so 10 s covers one slow
#: webhook after ours with room to spare, and a ghost costs its tenant at most that long.
DEFAULT_GRACE = 10.0
#: How many of a tenant's largest holders ``gpu-webhook usage`` lists by default.
TOP_HOLDERS = 5
#: A benchmark knob, not a setting: the ledger's speed-ups this environment variable of
#: ``serve --track-usage`` switches off (comma-separated), so that ``benchmarks/admission.py``
#: can measure each one's worth in one run (issue 17). Both are safe to switch off: without
#: them the ledger is the slower one it was before (docs/quota.md).
BENCHMARK_LEDGER_ENV = "GPU_WEBHOOK_BENCHMARK_LEDGER_OFF"
#: ``group-commit``: one ledger round per request (still one at a time per tenant and replica);
#: ``cache``: no ledger watch, every round reads the ConfigMap from the API server.
LEDGER_LEVERS = ("group-commit", "cache")


class TrackingMetrics(Protocol):
    """What the tracking reports to (the server's ``WebhookMetrics``, without importing it)."""

    def ledger_counter(self, results: Sequence[str]) -> Callable[[str], None]: ...

    def ledger_pruned_counter(self, kinds: Sequence[str]) -> Callable[[str], None]: ...

    def template_counter(self, results: Sequence[str]) -> Callable[[str], None]: ...

    def follow_tracking(self, usage: Callable[[], Mapping[str, ResourceList] | None],
                        synced: Mapping[str, Callable[[], bool]]) -> None: ...


@dataclass(frozen=True)
class Tracking:
    """The live cluster state a runtime is built with (``serve --track-usage``)."""

    #: Per-tenant usage to charge against, None while the pod watch has not synced.
    usage: Callable[[], dict[str, ResourceList] | None]
    #: The nodes' offers and whether the node watch has synced: ``(None, False)`` until then.
    nodes: Callable[[], tuple[Sequence[NodeOffer] | None, bool]]
    #: Ready to judge pods: the pod watch has synced (quota needs the pods; capacity only warns).
    ready: Callable[[], bool]
    #: Records each admitted, quota-bound pod's charge in the shared ledger.
    reserve: QuotaReserver
    #: A policy reload: the book re-charges its pods under the new policy.
    apply_policy: Callable[[Policy], None]
    #: Ends the watches (tests and one-shot tools; ``serve`` runs them until the process exits).
    stop: Callable[[], None]
    #: (namespace, name) of the platform's claim templates whose spec is the policy's, None while
    #: not known (no DRA profile yet, or the template watch has not synced): no template check.
    templates: Callable[[], frozenset[tuple[str, str]] | None] = lambda: None
    #: (namespace, uid) -> the profile of that managed pod, None while not known (the pod watch
    #: has not seen it, or has not synced): whose a platform ResourceClaim is (core/dra.py ``decide_claim``).
    pod_profiles: Callable[[str, str], str | None] = lambda namespace, uid: None


class _Synced(Mapping[str, Callable[[], bool]]):
    """Watch name -> whether it has synced, for the watches running now (the metrics' view; the
    DRA watches join when they start). ``add`` swaps in a new dict, so a scrape that is iterating
    the old one is not disturbed."""

    def __init__(self, watches: Mapping[str, PodWatch]) -> None:
        self._watches = dict(watches)

    def add(self, watches: Mapping[str, PodWatch]) -> None:
        self._watches = {**self._watches, **watches}

    def __getitem__(self, name: str) -> Callable[[], bool]:
        return self._watches[name].synced.is_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._watches)

    def __len__(self) -> int:
        return len(self._watches)


def kube_client(kubeconfig: str | None) -> ApiClient:
    """An API client: the given kubeconfig, else the in-cluster service account, else ~/.kube/config."""
    from kubernetes import client, config

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config(config_file=kubeconfig)


def ledger_levers_off(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The ledger speed-ups :data:`BENCHMARK_LEDGER_ENV` switches off (a benchmark knob); an
    unknown name is an error, so a misspelt knob never measures the wrong thing."""
    named = frozenset(filter(None, (n.strip() for n in environ.get(BENCHMARK_LEDGER_ENV, "").split(","))))
    if unknown := named - set(LEDGER_LEVERS):
        raise ValueError(f"{BENCHMARK_LEDGER_ENV}: unknown {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(LEDGER_LEVERS)}")
    return named


def track_usage(api: ApiClient, policy: Policy, metrics: TrackingMetrics, ledger_namespace: str,
                grace: float, levers_off: frozenset[str] = frozenset()) -> Tracking:
    """Start the pod and node watches and the quota ledger on ``api`` (and the DRA watches and
    template reconciler once the policy has a DRA profile); the runtime built with the returned
    :class:`Tracking` charges against the cluster, checks node capacity and claim templates, and
    is ready once the pod watch has synced. ``levers_off``: see :data:`LEDGER_LEVERS` (benchmarks)."""
    from kubernetes import client

    from ..core.nodes import NodeBook
    from .devices import CLASSES_PATH, SLICES_PATH, DeviceBook
    from .ledger import LEDGER_SELECTOR, MAX_BATCH, PRUNE_KINDS, ROUND_RESULTS, Ledger, LedgerCache, QuotaReserver
    from .templates import RESULTS as TEMPLATE_RESULTS
    from .templates import TEMPLATES_PATH, TEMPLATES_SELECTOR, ResourceV1Templates, TemplateBook, TemplateReconciler
    from .tracker import PodWatch, UsageBook

    book, nodes = UsageBook(policy), NodeBook()
    watch, node_watch = PodWatch(api, book), PodWatch(api, nodes, selector="", path="/api/v1/nodes")
    ledgers = None if "cache" in levers_off else LedgerCache()
    ledger_watch = None if ledgers is None else PodWatch(api, ledgers, selector=LEDGER_SELECTOR,
                                                         path=f"/api/v1/namespaces/{ledger_namespace}/configmaps")
    # DRA: built now (the device book marks every DRA count unknown until its watches have
    # synced), started with the first policy that has a DRA profile.
    devices = DeviceBook(policy, nodes.set_devices)
    slice_watch = PodWatch(api, devices.slices, selector="", path=SLICES_PATH, on_unsync=devices.slices.lost)
    class_watch = PodWatch(api, devices.classes, selector="", path=CLASSES_PATH, on_unsync=devices.classes.lost)
    claim_templates = TemplateBook(policy)
    template_watch = PodWatch(api, claim_templates, selector=TEMPLATES_SELECTOR, path=TEMPLATES_PATH)
    reconciler = TemplateReconciler(ResourceV1Templates(client.ResourceV1Api(api)), claim_templates,
                                    live=template_watch.synced.is_set,
                                    counted=metrics.template_counter(TEMPLATE_RESULTS))
    claim_templates.changed = reconciler.trigger
    watches = [w for w in (watch, node_watch, ledger_watch) if w is not None]
    synced = _Synced({"pods": watch, "nodes": node_watch, **({"ledger": ledger_watch} if ledger_watch else {})})
    dra_started = threading.Lock()

    def start_dra(policy: Policy) -> None:
        if not any(p.dra is not None for p in policy.spec.profiles.values()) or not dra_started.acquire(False):
            return   # no DRA profile, or started already (the lock is never released)
        synced.add({"resourceslices": slice_watch, "deviceclasses": class_watch, "claimtemplates": template_watch})
        for watching in (slice_watch, class_watch, template_watch, reconciler):
            watching.start()

    def usage() -> dict[str, ResourceList] | None:
        return book.usage() if watch.synced.is_set() else None

    def offers() -> tuple[Sequence[NodeOffer] | None, bool]:
        return (nodes.offers(), True) if node_watch.synced.is_set() else (None, False)

    def templates() -> frozenset[tuple[str, str]] | None:
        return claim_templates.templates() if template_watch.synced.is_set() else None

    def pod_profiles(namespace: str, uid: str) -> str | None:
        return book.profile(namespace, uid) if watch.synced.is_set() else None

    def apply_policy(new: Policy) -> None:
        book.set_policy(new)
        devices.set_policy(new)
        claim_templates.set_policy(new)   # its change wakes the reconciler
        start_dra(new)

    def stop() -> None:
        for watching in watches:
            watching.stop()
        for dra in (slice_watch, class_watch, template_watch, reconciler):
            dra.stop()

    def no_cache() -> bool:
        return False

    cache_live = no_cache if ledger_watch is None else ledger_watch.synced.is_set
    reserve = QuotaReserver(Ledger(client.CoreV1Api(api), ledger_namespace, book, watch, grace=grace,
                                   counted=metrics.ledger_counter(ROUND_RESULTS),
                                   pruned=metrics.ledger_pruned_counter(PRUNE_KINDS),
                                   cache=ledgers, cache_live=cache_live),
                            max_batch=1 if "group-commit" in levers_off else MAX_BATCH)
    metrics.follow_tracking(usage, synced)
    for watching in watches:
        watching.start()
    start_dra(policy)
    return Tracking(usage=usage, nodes=offers, ready=watch.synced.is_set, reserve=reserve,
                    apply_policy=apply_policy, stop=stop, templates=templates, pod_profiles=pod_profiles)
