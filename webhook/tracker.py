"""What each tenant holds right now, from a list+watch of the cluster's managed GPU pods.

Two parts, as controller-runtime splits a cache from its informer:
- :class:`UsageBook`, pure: pod events in, per-tenant usage out. It keeps a compact copy of
  each managed pod (the fields quota reads, not the whole pod: bounded memory) and per-tenant
  sums updated per event, so an admission reads usage in O(1), whatever the cluster's size.
  A pod stops counting when it is deleted or reaches Succeeded/Failed. A new policy re-charges
  the kept pods once (tenants and weights may have changed).
- :class:`PodWatch`, the I/O: list, then watch from the list's resourceVersion (label-selected
  to ``gpu.platform/managed=true``), re-list on 410 Gone or a broken stream, on a thread.
  Raw JSON, never typed models. ``synced`` turns true after the first full list.

Between an admission and its pod appearing in the watch there is a window in which another
replica (or a burst) can over-admit; the quota ledger (webhook/ledger.py) closes it, not this module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .mutate import MANAGED_LABEL
from .pod import as_dict, as_list, metadata
from .policy import Policy
from .quota import ResourceList, add, tenant_charge

__all__ = ["MANAGED_SELECTOR", "PodWatch", "UsageBook", "compact_pod"]

log = logging.getLogger("gpu_webhook.tracker")

MANAGED_SELECTOR = f"{MANAGED_LABEL}=true"
_WATCH_SECONDS = 300
#: How long a deleted pod's uid is remembered (longer than any reservation's TTL).
_GONE_SECONDS = 600


def compact_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The fields quota and tenancy read, and nothing else (about 1 KB a pod)."""
    meta, spec = metadata(pod), as_dict(pod.get("spec"))

    def containers(field: str) -> list[dict[str, Any]]:
        return [{k: c[k] for k in ("name", "resources", "restartPolicy") if k in c}
                for c in as_list(spec.get(field)) if isinstance(c, dict)]

    dag_id = as_dict(meta.get("annotations")).get("dag_id")
    return {
        "metadata": {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "uid": meta.get("uid", ""),
                     "labels": dict(as_dict(meta.get("labels"))),
                     "annotations": {"dag_id": dag_id} if dag_id else {}},
        "spec": {"containers": containers("containers"), "initContainers": containers("initContainers")},
        "status": {"phase": as_dict(pod.get("status")).get("phase")},
    }


def _subtract(a: Mapping[str, Any], b: Mapping[str, Any]) -> ResourceList:
    return {k: v for k, v in add(a, {n: -q for n, q in b.items()}).items() if v}


class UsageBook:
    """Per-tenant usage of the managed pods the watch has seen; thread-safe."""

    def __init__(self, policy: Policy) -> None:
        self._lock = threading.Lock()
        self._policy = policy
        self._pods: dict[str, dict[str, Any]] = {}                 # uid -> compact pod
        self._charges: dict[str, tuple[str, ResourceList]] = {}    # uid -> (tenant, charge)
        self._usage: dict[str, ResourceList] = {}
        self._gone: dict[str, float] = {}                          # uid -> when it was deleted

    def _forget(self, uid: str) -> None:
        self._pods.pop(uid, None)
        old = self._charges.pop(uid, None)
        if old:
            tenant, charge = old
            self._usage[tenant] = _subtract(self._usage.get(tenant, {}), charge)

    def _record(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        self._forget(uid)
        self._pods[uid] = pod
        charged = tenant_charge(pod, self._policy)
        if charged:
            self._charges[uid] = charged
            self._usage[charged[0]] = add(self._usage.get(charged[0], {}), charged[1])

    def apply(self, event: str, pod: Mapping[str, Any]) -> None:
        """One watch event: ADDED / MODIFIED / DELETED of a (raw) pod."""
        compact = compact_pod(pod)
        if not compact["metadata"]["uid"]:
            return
        with self._lock:
            if event == "DELETED":
                self._forget(compact["metadata"]["uid"])
                self._remember_gone(compact["metadata"]["uid"])
            else:
                self._record(compact)

    def replace_all(self, pods: list[Mapping[str, Any]]) -> None:
        """A fresh list: what is not in it is gone."""
        compact = [compact_pod(p) for p in pods]
        with self._lock:
            self._pods, self._charges, self._usage = {}, {}, {}
            for pod in compact:
                if pod["metadata"]["uid"]:
                    self._record(pod)

    def set_policy(self, policy: Policy) -> None:
        """Re-charge every kept pod under a new policy (tenants and weights may have moved)."""
        with self._lock:
            self._policy = policy
            pods = list(self._pods.values())
            self._pods, self._charges, self._usage = {}, {}, {}
            for pod in pods:
                self._record(pod)

    def _remember_gone(self, uid: str) -> None:
        now = time.monotonic()
        self._gone[uid] = now
        if len(self._gone) > 10_000:   # bounded: a reservation outlives its TTL by far less than this
            self._gone = {u: t for u, t in self._gone.items() if now - t < _GONE_SECONDS}

    def seen(self, uid: str) -> bool:
        """Whether the watch has seen this pod (now, or deleted lately): its reservation is spent."""
        with self._lock:
            return uid in self._pods or uid in self._gone

    def usage(self) -> dict[str, ResourceList]:
        """A snapshot: tenant -> resource line -> quantity (O(tenants), not O(pods))."""
        with self._lock:
            return {tenant: dict(lines) for tenant, lines in self._usage.items() if lines}

    def holders(self, tenant: str) -> list[tuple[ResourceList, Mapping[str, Any]]]:
        """The tenant's charged pods with their charge (compact pods), largest first."""
        with self._lock:
            found = [(charge, self._pods[uid]) for uid, (t, charge) in self._charges.items() if t == tenant]
        return sorted(found, key=lambda item: -sum(item[0].values()))


class PodWatch:
    """List+watch over the API server into a book (``apply`` per event, ``replace_all`` per list),
    on a thread: managed pods into a :class:`UsageBook` by default, or nodes into a NodeBook."""

    def __init__(self, api_client: Any, book: Any, selector: str = MANAGED_SELECTOR, path: str = "/api/v1/pods") -> None:
        self.api = api_client
        self.book = book
        self.selector = selector
        self.path = path
        self.synced = threading.Event()
        self._stop = threading.Event()

    def _get(self, params: list[tuple[str, str]], stream: bool) -> Any:
        params = ([("labelSelector", self.selector)] if self.selector else []) + params
        return self.api.call_api(self.path, "GET", query_params=params, auth_settings=["BearerToken"],
                                 _preload_content=False, _return_http_data_only=True,
                                 _request_timeout=None if stream else 60)

    def list_once(self) -> str:
        """One full list into the book (also what `gpu-webhook usage` does); its resourceVersion."""
        response = self._get([], stream=False)
        body = json.loads(response.data)
        self.book.replace_all(body.get("items") or [])
        self.synced.set()
        return body["metadata"]["resourceVersion"]

    def _events(self, version: str) -> Iterator[dict[str, Any]]:
        params = [("watch", "true"), ("resourceVersion", version),
                  ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(_WATCH_SECONDS))]
        response = self._get(params, stream=True)
        try:
            buffer = b""
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()

    def _watch_from(self, version: str) -> str | None:
        """Apply events until the stream ends (returns where to resume) or the server says the
        version is gone (returns None: list again)."""
        for event in self._events(version):
            if self._stop.is_set():
                return version
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                log.info("watch ended (%s); listing again", obj.get("message") or obj.get("reason"))
                return None
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.book.apply(kind, obj)
            version = metadata(obj).get("resourceVersion") or version
        return version

    def run(self) -> None:
        """List, then watch until stopped; list again on 410 Gone or any failure (after a pause)."""
        while not self._stop.is_set():
            try:
                version: str | None = self.list_once()
                while version is not None and not self._stop.is_set():
                    version = self._watch_from(version)
            except Exception as err:  # noqa: BLE001 - the watch must outlive a flaky API server
                log.warning("pod watch failed (%s); listing again in 1s", err)
                self._stop.wait(1.0)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"watch {self.path}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

