"""Cluster wiring for `serve --track-usage` and `gpu-webhook usage`: the API client, and the
pod watch, node watch and quota ledger plugged into a runtime. Nothing here decides anything."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..core.policy import Policy

__all__ = ["DEFAULT_LEDGER_NAMESPACE", "kube_client", "track_usage"]

#: Where the manifests put the ledger, apart from the webhook's own namespace (docs/quota.md).
DEFAULT_LEDGER_NAMESPACE = "gpu-webhook-ledger"


def kube_client(kubeconfig: str | None) -> Any:
    """An API client: the given kubeconfig, else the in-cluster service account, else ~/.kube/config."""
    from kubernetes import client, config

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config(config_file=kubeconfig)


def track_usage(runtime: Any, kubeconfig: str | None, ledger_namespace: str, grace: float) -> Callable[[Policy], None]:
    """Start the pod and node watches and the quota ledger; the runtime then charges against the
    cluster, checks node capacity, and is ready once the pod watch has synced.

    Returns what a policy reload must call: the book re-charges its pods under the new policy.
    """
    from kubernetes import client

    from .ledger import LEDGER_SELECTOR, PRUNE_KINDS, ROUND_RESULTS, Ledger, LedgerCache, QuotaReserver
    from ..core.nodes import NodeBook
    from .tracker import PodWatch, UsageBook

    api = kube_client(kubeconfig)
    book, nodes = UsageBook(runtime.policy), NodeBook()
    watch, node_watch = PodWatch(api, book), PodWatch(api, nodes, selector="", path="/api/v1/nodes")
    ledgers = LedgerCache()
    ledger_watch = PodWatch(api, ledgers, selector=LEDGER_SELECTOR, path=f"/api/v1/namespaces/{ledger_namespace}/configmaps")
    runtime.usage = lambda: book.usage() if watch.synced.is_set() else None
    runtime.nodes = lambda: (nodes.offers(), True) if node_watch.synced.is_set() else (None, False)
    # Quota needs the pods (synced is cleared while the watch is broken); capacity only warns.
    runtime.ready = watch.synced.is_set
    runtime.reserve = QuotaReserver(Ledger(client.CoreV1Api(api), ledger_namespace, book, watch, grace=grace,
                                           counted=runtime.metrics.ledger_counter(ROUND_RESULTS),
                                           pruned=runtime.metrics.ledger_pruned_counter(PRUNE_KINDS),
                                           cache=ledgers, cache_live=ledger_watch.synced.is_set))
    runtime.metrics.follow_tracking(runtime.usage, {"pods": watch.synced.is_set, "nodes": node_watch.synced.is_set,
                                                    "ledger": ledger_watch.synced.is_set})
    for started in (watch, node_watch, ledger_watch):
        started.start()

    def apply(policy: Policy) -> None:
        book.set_policy(policy)
        runtime.policy = policy

    return apply
