"""What each tenant holds right now, from a list+watch of the cluster's managed GPU pods.

Two parts, as controller-runtime splits a cache from its informer:
- :class:`UsageBook`, pure: pod events in, per-tenant usage out. It keeps one small fixed
  :class:`~airflow_gpu_webhook.core.quota.PodRecord` per charged pod, computed from the pod's accounting stamps
  (never its labels dict: a pod with a megabyte of labels costs what any other pod costs), and
  per-tenant sums updated per event, so an admission reads usage in O(1), whatever the
  cluster's size. A pod stops counting when it is deleted or reaches Succeeded/Failed. A new
  policy re-weighs the kept records once; their tenant stays what the stamp says.
- :class:`PodWatch`, the I/O: a paged list, then a watch (``kubernetes.watch.Watch``) from the
  list's resourceVersion (label-selected to pods stamped ``gpu.platform/managed=true`` and
  ``gpu.platform/tenant``), re-list on 410 Gone or a broken stream, on a thread. Raw JSON,
  never typed models. ``synced`` is set when a list completes and
  **cleared on any watch failure** until the next list completes, so ``/readyz`` turns 503
  and quota-bound pods get a retryable 503 instead of a guess. ``reached`` is the
  resourceVersion the watch has applied (events and BOOKMARKs), and :meth:`PodWatch.wait_reached`
  waits, bounded, until it passes a given version.

Resource versions are compared as integers: Kubernetes documents them as "orderable as
monotonically increasing integers within the same resource type for all types served by
kube-apiserver" since v1.35 (KEP-5504, "Comparable Resource Versions",
https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions). Only pod
versions are ever compared here. A version that is not an integer reads as 0 (never ahead).

Between an admission and its pod appearing in the watch there is a window in which another
replica (or a burst) can over-admit; the quota ledger (webhook/cluster/ledger.py) closes it, not this module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from ..core.mutate import MANAGED_LABEL, TENANT_LABEL
from ..core.pod import labels, metadata
from ..core.policy import Policy
from ..core.quota import PodRecord, ResourceList, add, pod_record, profile_of_stamp, reweigh

__all__ = ["MANAGED_SELECTOR", "ApiCaller", "Book", "PodWatch", "UsageBook", "resource_version", "version_number"]

log = logging.getLogger("gpu_webhook.tracker")

#: Only pods carrying both stamps are listed and watched: a pod that merely says
#: ``managed=true`` (anyone can label their own pod so) is never even sent to us.
MANAGED_SELECTOR = f"{MANAGED_LABEL}=true,{TENANT_LABEL}"
_WATCH_SECONDS = 300
#: A watch stream that delivers nothing for this long is dead (a half-open connection raises
#: nothing): the server itself ends every watch after ``_WATCH_SECONDS``, so a healthy stream
#: never stays silent this long.
_WATCH_READ_TIMEOUT = _WATCH_SECONDS + 30
#: Items per page of a list: a page of pods bloated with labels (~770 KB each) is ~15 MB of JSON,
#: instead of the whole cluster's pods in one body; 10,000 ordinary pods are 500 pages.
_PAGE = 20
#: How long a deleted pod's uid is remembered as seen (a reservation is confirmed by then).
_GONE_SECONDS = 600


def version_number(value: Any) -> int:
    """A resourceVersion as an integer (KEP-5504), 0 when absent or not a number. ASCII digits
    only: ``str.isdigit`` also accepts characters such as ``'²'``, on which ``int`` raises."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else 0


def resource_version(obj: Mapping[str, Any]) -> int:
    """The object's resourceVersion as an integer (:func:`version_number`)."""
    return version_number(metadata(obj).get("resourceVersion"))


def _subtract(a: Mapping[str, Any], b: Mapping[str, Any]) -> ResourceList:
    return {k: v for k, v in add(a, {n: -q for n, q in b.items()}).items() if v}


def _stamped(pod: Mapping[str, Any]) -> bool:
    pod_labels = labels(pod)
    return pod_labels.get(MANAGED_LABEL) == "true" and bool(pod_labels.get(TENANT_LABEL))


class UsageBook:
    """Per-tenant usage of the managed pods the watch has seen; thread-safe."""

    def __init__(self, policy: Policy) -> None:
        self._lock = threading.Lock()
        self._policy = policy
        self._records: dict[str, PodRecord] = {}                   # uid -> record of a charged pod
        self._usage: dict[str, ResourceList] = {}
        #: uid -> the pod's resourceVersion when the watch first saw it, for stamped pods
        #: (charged, finished or deleted lately): a replica whose watch has passed that version
        #: has seen the pod too. One int per pod, whatever the pod carries.
        self._seen: dict[str, int] = {}
        self._gone: dict[str, float] = {}                          # uid -> when it was deleted

    def _forget(self, uid: str) -> None:
        old = self._records.pop(uid, None)
        if old:
            self._usage[old.tenant] = _subtract(self._usage.get(old.tenant, {}), old.charge)

    def _keep(self, record: PodRecord | None) -> None:
        if record is not None:
            self._records[record.uid] = record
            self._usage[record.tenant] = add(self._usage.get(record.tenant, {}), record.charge)

    def apply(self, event: str, pod: Mapping[str, Any]) -> None:
        """One watch event: ADDED / MODIFIED / DELETED of a (raw) pod."""
        uid = metadata(pod).get("uid")
        if not isinstance(uid, str) or not uid:
            return
        stamped = _stamped(pod)
        with self._lock:   # the record under the policy in force: a reload may be under way
            record = None if event == "DELETED" else pod_record(pod, self._policy)
            self._forget(uid)
            if stamped:
                self._seen.setdefault(uid, resource_version(pod))
            if event == "DELETED":
                self._remember_gone(uid)
            else:
                self._keep(record)

    def replace_all(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list: what is not in it is gone. ``pods`` may be a generator over pages:
        each pod is reduced to its record as it comes, so the list is never held whole."""
        records: dict[str, PodRecord] = {}
        seen: dict[str, int] = {}
        policy = self._policy
        for pod in pods:
            uid = metadata(pod).get("uid")
            if not isinstance(uid, str) or not uid:
                continue
            if _stamped(pod):
                seen[uid] = resource_version(pod)
            record = pod_record(pod, policy)
            if record is not None:
                records[uid] = record
        with self._lock:
            if self._policy is not policy:   # reloaded while the list was read: weigh as set_policy does
                records = {uid: reweigh(record, self._policy) for uid, record in records.items()}
            for uid in set(self._seen) - set(seen):
                self._remember_gone(uid)
            self._seen = {**{u: v for u, v in self._seen.items() if u in self._gone}, **seen}
            self._records, self._usage = {}, {}
            for record in records.values():
                self._keep(record)

    def set_policy(self, policy: Policy) -> None:
        """Re-weigh every kept record under a new policy; each keeps the tenant it was stamped with."""
        with self._lock:
            self._policy = policy
            records = [reweigh(r, policy) for r in self._records.values()]
            self._records, self._usage = {}, {}
            for record in records:
                self._keep(record)

    def _remember_gone(self, uid: str) -> None:
        now = time.monotonic()
        self._gone[uid] = now
        if len(self._gone) > 10_000:   # bounded: a confirmed reservation is pruned long before this
            self._gone = {u: t for u, t in self._gone.items() if now - t < _GONE_SECONDS}
            self._seen = {u: v for u, v in self._seen.items() if u in self._gone or u in self._records}

    def seen(self, uid: str) -> bool:
        """Whether the watch has seen this pod (now, finished, or deleted lately)."""
        with self._lock:
            return uid in self._seen

    def seen_at(self, uid: str) -> int | None:
        """The resourceVersion at which the watch first saw this pod, or None if it has not."""
        with self._lock:
            return self._seen.get(uid)

    def profile(self, namespace: str, uid: str) -> str | None:
        """The profile of the charged pod with this uid in ``namespace`` (from its stamp), or None
        when the watch has seen no such pod (core/dra.py ``decide_claim``: whose claim it is)."""
        with self._lock:
            record = self._records.get(uid)
            policy = self._policy
        if record is None or record.namespace != namespace:
            return None
        return profile_of_stamp(record.profile, policy)

    def usage(self) -> dict[str, ResourceList]:
        """A snapshot: tenant -> resource line -> quantity (O(tenants), not O(pods))."""
        with self._lock:
            return {tenant: dict(lines) for tenant, lines in self._usage.items() if lines}

    def holders(self, tenant: str) -> list[PodRecord]:
        """The tenant's charged pods, largest charge first."""
        with self._lock:
            found = [r for r in self._records.values() if r.tenant == tenant]
        return sorted(found, key=lambda r: -sum(r.charge.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class _WatchEnded(Exception):
    """The API server ended a watch with an ERROR event (410 Gone, or another status)."""


class ApiCaller(Protocol):
    """What a watch needs of ``kubernetes.client.ApiClient``: its generic call (raw JSON, no models)."""

    def call_api(self, resource_path: str, method: str, *args: Any, **kwargs: Any) -> Any: ...


class Book(Protocol):
    """Where a watch puts what it reads: a :class:`UsageBook`, or a NodeBook (webhook/core/nodes.py)."""

    def apply(self, event: str, obj: Mapping[str, Any]) -> None: ...

    def replace_all(self, objs: Iterable[Mapping[str, Any]]) -> None: ...


class PodWatch:
    """List+watch over the API server into a book (``apply`` per event, ``replace_all`` per list),
    on a thread: managed pods into a :class:`UsageBook` by default, or nodes into a NodeBook, or
    the DRA objects (webhook/cluster/devices.py, templates.py)."""

    def __init__(self, api_client: ApiCaller, book: Book, selector: str = MANAGED_SELECTOR,
                 path: str = "/api/v1/pods", on_unsync: Callable[[], None] | None = None) -> None:
        self.api = api_client
        self.book = book
        self.selector = selector
        self.path = path
        #: Told on every failure that clears ``synced``: for a book that must forget what it
        #: publishes while its view may be behind (the DRA device book).
        self.on_unsync = on_unsync
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._relist = threading.Event()
        self._stream: Any = None
        self._reached = 0
        self._progress = threading.Condition()

    @property
    def reached(self) -> int:
        """The resourceVersion up to which this watch has applied the cluster's changes."""
        with self._progress:
            return self._reached

    def _advance(self, version: int) -> None:
        with self._progress:
            if version > self._reached:
                self._reached = version
                self._progress.notify_all()

    def wait_reached(self, version: int, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until the watch is synced and has reached ``version``."""
        give_up = time.monotonic() + timeout
        with self._progress:
            while not (self.synced.is_set() and self._reached >= version):
                left = give_up - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, 0.05))
            return True

    def _unsync(self, why: object) -> None:
        if self.synced.is_set() and not self._stop.is_set():   # a stopped watch is not behind: no warning
            log.warning("%s watch is behind (%s): not ready until the next list completes", self.path, why)
        self.synced.clear()
        if self.on_unsync is not None:
            self.on_unsync()

    def _get(self, params: list[tuple[str, str]], stream: bool) -> Any:
        params = ([("labelSelector", self.selector)] if self.selector else []) + params
        return self.api.call_api(self.path, "GET", query_params=params, auth_settings=["BearerToken"],
                                 _preload_content=False, _return_http_data_only=True,
                                 _request_timeout=(10, _WATCH_READ_TIMEOUT) if stream else 60)

    def _pages(self, found: dict[str, str]) -> Iterator[dict[str, Any]]:
        """The list's items, page by page (``limit``/``continue``); ``found['version']`` is the
        list's resourceVersion once the first page is read.

        Hand-written because the client has no paged raw list: its ``SharedInformer`` lists in one
        unpaged call into models and keeps whole objects (``python -m benchmarks.quota --client``:
        42-51x the baseline parse against 3.3-5.3x for this loop, and every label of a label bomb
        kept). The typed ``list_pod_for_all_namespaces(_preload_content=False)`` per page costs
        0.9-1.3x this ``call_api`` (same benchmark), so the plain call stays."""
        token = ""
        while True:
            body = json.loads(self._get([("limit", str(_PAGE))] + ([("continue", token)] if token else []),
                                        stream=False).data)
            found.setdefault("version", body["metadata"]["resourceVersion"])
            token = body["metadata"].get("continue") or ""
            items = body.pop("items", None) or []
            del body
            while items:   # each pod is let go once consumed, before the next page is read
                yield items.pop()
            if not token:
                return

    def list_once(self) -> str:
        """One full list into the book (also what `gpu-webhook usage` does); its resourceVersion."""
        found: dict[str, str] = {}
        self.book.replace_all(self._pages(found))
        version = found["version"]
        self._advance(version_number(version))
        self.synced.set()
        return version

    def _events(self, version: str) -> Iterator[dict[str, Any]]:
        """The events of one watch stream from ``version``, as raw dicts, through the client's own
        ``kubernetes.watch.Watch``. Given a function without a documented return type it only
        parses each line (no model deserialisation: ``deserialize=False`` would do too, but then
        it fails with a KeyError on an ERROR event, kubernetes 36.0), and with ``timeout_seconds``
        it opens one stream and never retries by itself. ``python -m benchmarks.quota --client``
        measured it at the cost of the hand-written reader it replaced (0.8-1.1x the CPU per
        event over four runs; models cost 36-42x the baseline parse, docs/quota.md). An ERROR event
        (410 Gone: the version is too old; or any other status) raises :class:`_WatchEnded`."""
        from kubernetes.client.rest import ApiException
        from kubernetes.watch import Watch

        params = [("watch", "true"), ("resourceVersion", version), ("allowWatchBookmarks", "true"),
                  ("timeoutSeconds", str(_WATCH_SECONDS))]
        opened = False

        def open_stream(**_: Any) -> Any:
            nonlocal opened
            response = self._stream = self._get(params, stream=True)
            opened = True
            return response

        try:
            for event in Watch().stream(open_stream, timeout_seconds=_WATCH_SECONDS):
                if event is not None:   # a blank line
                    yield event
        except ApiException as err:
            if not opened:
                raise   # the stream could not be opened: a failure, not the end of a watch
            raise _WatchEnded(f"{err.status} {err.reason}") from None
        finally:
            self._stream = None

    def _watch_from(self, version: str) -> str | None:
        """Apply events until the stream ends (returns where to resume) or the server ends the
        watch with an ERROR event, such as 410 Gone (returns None: list again)."""
        try:
            for event in self._events(version):
                if self._stop.is_set():
                    return version
                kind, obj = event.get("type"), event.get("object") or {}
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self.book.apply(kind, obj)
                version = metadata(obj).get("resourceVersion") or version
                self._advance(resource_version(obj))
        except _WatchEnded as ended:
            log.info("watch ended (%s); listing again", ended)
            return None
        return version

    def run(self) -> None:
        """List, then watch until stopped. A watch that fails (an error, a broken stream, 410
        Gone) clears ``synced`` and lists again (after a pause on errors): until that list
        completes, nobody may trust this book."""
        while not self._stop.is_set():
            try:
                self._relist.clear()
                version: str | None = self.list_once()
                while version is not None and not self._stop.is_set() and not self._relist.is_set():
                    version = self._watch_from(version)
                self._unsync("stopped" if self._stop.is_set() else "the watch ended: 410 Gone, or a restart")
            except Exception as err:  # noqa: BLE001 - the watch must outlive a flaky API server
                self._unsync(err)
                log.warning("%s watch failed (%s); listing again in 1s", self.path, err)
                self._stop.wait(1.0)

    def restart(self, why: str) -> None:
        """Drop the current stream and list again, unready until that list completes: for a
        watch known to be behind (a stalled stream delivers nothing and raises nothing)."""
        self._unsync(why)
        self._relist.set()
        stream = self._stream
        if stream is not None:
            stream.shutdown()   # urllib3: interrupts the blocking read on the watch thread

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"watch {self.path}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)
