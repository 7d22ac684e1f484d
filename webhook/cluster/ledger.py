"""The quota ledger: reservations shared by every replica through the API server, so a burst
of creates is never over-admitted, whatever any replica's watch is doing.

Between "admitted" and "seen by the pod watch" there is a window; two replicas (or two
requests) in it would each see the same free quota. So the validating step, for a pod it is
about to admit, *reserves* its charge in a per-tenant ConfigMap (``gpu-webhook-ledger-<tenant>``
in the ledger namespace, ``gpu-webhook-ledger`` as deployed) with optimistic concurrency: read,
check, write back with the read ``resourceVersion``; on a conflict, read again. Its data:

- ``reservations``: JSON ``{pod uid: {"charge": {...}, "at": unix time, "pod": "ns/name"}}``;
- ``prunedThrough``: the highest pod resourceVersion at which a pruned reservation's pod was
  confirmed to exist.

The rules, so that no replica, however far its watch lags, can be fooled:

1. A replica counts ``its watched usage + every reservation whose uid its own watch has not
   seen``: a pod is counted once, as usage or as a reservation, never zero times.
2. Before counting, its watch must have reached ``prunedThrough`` (waited for at most
   :data:`WATCH_WAIT`); if not, the pod gets a retryable 503 ("watch behind"). So a
   reservation leaves the ledger only once every replica that counts can see its pod.
3. A reservation is removed only when confirmed: the writing replica's watch has seen the
   pod (at version r), or, once older than the grace G (``--reservation-grace``), a direct
   GET of the pod finds it with that uid and this replica's watch has reached its version r;
   ``prunedThrough`` becomes at least r. A GET that finds no pod, or a pod of another uid,
   prunes a **ghost**: a create that failed after ``/validate`` (AlreadyExists, a later
   webhook's denial, a ResourceQuota). A ghost holds quota for at most G plus one round.
   G must exceed the time between our validation and the pod's storage write (the other
   validating webhooks' time, at most their timeouts): otherwise a slow create could be
   pruned as a ghost before it is stored.

A round reads the ledger from this replica's cache (a watch of the ledger ConfigMaps, and the
objects its own writes returned), not from the API server: the compare-and-swap makes a stale
copy safe (the write is refused), and only then is the ConfigMap read from the API server once.
One replica alone thus makes one API call per round, as ResourceQuota's admission does with its
informer.

Group commit: the reservations of one tenant that arrive while a round is in flight wait for
it, then go together in the next round: one read, one check in arrival order (each request
against the usage, the unseen reservations and the requests admitted before it in the batch),
one write. As Kubernetes' ResourceQuota admission batches a namespace's admissions into one
quota-status write, a burst then costs a few rounds, not one round per pod; a conflict
re-reads and re-checks the whole batch once per lost race.

If the ledger cannot be written within the deadline, the pod is denied with a retryable
message (code 503): admitting without a record could over-admit; the client may simply retry.
Dry runs reserve nothing (the validating configuration says ``sideEffects: NoneOnDryRun``), and
neither does a pod whose charge touches no quota line of its tenant. A reservation's size is
bounded: the pod's namespace, name and uid are checked to be valid Kubernetes names before
any write, so no input can make the ledger unwritable.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from ..core.decision import Decision, Reason, Violation
from ..core.policy import Policy, ledger_name
from ..core.quota import ResourceList, add, exceeded_lines, format_quantity
from .tracker import UsageBook, resource_version, version_number
from .wiring import DEFAULT_GRACE

if TYPE_CHECKING:
    import asyncio

    from kubernetes.client import CoreV1Api

__all__ = ["DEFAULT_GRACE", "LEDGER_SELECTOR", "MAX_BATCH", "PRUNE_KINDS", "ROUND_RESULTS", "WATCH_WAIT", "Ledger",
           "LedgerCache", "LedgerUnavailable", "QuotaReserver", "Reservation", "identity_problem"]

log = logging.getLogger("gpu_webhook.ledger")

#: How long a round waits for this replica's watch to reach the ledger's ``prunedThrough``.
WATCH_WAIT = 1.0
#: How long the watch may stay behind ``prunedThrough`` before it is restarted (a fresh list is
#: a consistent read, so it catches up at once): other replicas saw those pods long ago, so this
#: replica's stream is stalled, not slow.
RESTART_BEHIND = 5.0
#: How one read-check-write round can end: the reservation written, the quota full, another
#: replica wrote first (read again), the API server did not answer (retry after a pause), or
#: this replica's watch is behind the ledger (503).
ROUND_RESULTS = ("written", "over-quota", "conflict", "recheck", "unavailable", "watch-behind")
#: How a reservation left the ledger: its pod confirmed (seen or fetched), or a ghost.
PRUNE_KINDS = ("confirmed", "ghost")
#: Direct GETs of unseen pods per round, so a round stays within its deadline.
_GETS_PER_ROUND = 4
_KEY, _PRUNED = "reservations", "prunedThrough"
#: The label every ledger ConfigMap carries; the cache's watch selects on it.
LEDGER_SELECTOR = "gpu.platform/ledger=true"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_UID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class LedgerUnavailable(Exception):
    """The ledger could not be read or written in time."""


class WatchProgress(Protocol):
    """What the ledger needs of this replica's pod watch (a :class:`~airflow_gpu_webhook.cluster.tracker.PodWatch`)."""

    def wait_reached(self, version: int, timeout: float) -> bool: ...

    def restart(self, why: str) -> None: ...

    @property
    def reached(self) -> int: ...


class ReviewedPod(Protocol):
    """What a reservation reads of the admission request (the server's ``AdmissionRequest``)."""

    @property
    def namespace(self) -> str: ...

    @property
    def dry_run(self) -> bool: ...

    @property
    def object(self) -> dict[str, Any] | None: ...


class _Caught:
    """A watch that is always there: for a ledger used without one (tests, one-shot tools)."""

    reached = 1 << 62

    def wait_reached(self, version: int, timeout: float) -> bool:
        return True

    def restart(self, why: str) -> None:
        """Nothing to restart."""


#: Stateless, so one is shared by every ledger used without a watch.
CAUGHT_UP = _Caught()


def _shown(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def identity_problem(namespace: str, name: str, uid: str) -> Violation | None:
    """Why this review may not touch the ledger, or None: the namespace must be a DNS-1123 label
    (at most 63), the name a DNS-1123 subdomain (at most 253), the uid a UUID, as the API
    server makes them. A forged review with a megabyte name is refused here, before any write."""
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        field, value, rule = "namespace", namespace, "a DNS-1123 label of at most 63 characters"
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        field, value, rule = "metadata.name", name, "a DNS-1123 subdomain of at most 253 characters"
    elif not _UID.fullmatch(uid):
        field, value, rule = "metadata.uid", uid, "a UUID assigned by the API server"
    else:
        return None
    return Violation(Reason.INVALID_IDENTITY, f"the pod's {field} {_shown(value)} is not {rule}, as the API server "
                                              f"assigns it; gpu-webhook records GPU quota only for pods the API server "
                                              f"is creating: send this review through the API server")


@dataclass(frozen=True)
class Reservation:
    """One pod's request for quota: its uid (the ledger key), ``ns/name`` and charge."""

    uid: str
    pod: str
    charge: ResourceList


def _reserved(reservations: Mapping[str, Any]) -> ResourceList:
    total: ResourceList = {}
    for reservation in reservations.values():
        total = add(total, {line: Decimal(q) for line, q in reservation.get("charge", {}).items()})
    return total


def _decode(current: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
    data = (current or {}).get("data") or {}
    reservations = json.loads(data.get(_KEY) or "{}")
    return ({uid: r for uid, r in reservations.items() if isinstance(r, dict)}, version_number(data.get(_PRUNED)))


class LedgerCache:
    """The ledger ConfigMaps as this replica last saw them: fed by a watch (the same interface as
    the usage book: ``apply``, ``replace_all``) and by the objects its own writes returned. Only
    newer objects replace older ones, so a late watch event never hides this replica's write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}

    def apply(self, event: str, obj: Mapping[str, Any]) -> None:
        name = str(obj.get("metadata", {}).get("name", ""))
        with self._lock:
            if event == "DELETED":
                self._objects.pop(name, None)
            elif resource_version(obj) >= resource_version(self._objects.get(name, {})):
                self._objects[name] = dict(obj)

    def offer(self, obj: Mapping[str, Any]) -> None:
        """What a write or a direct read returned."""
        self.apply("MODIFIED", obj)

    def replace_all(self, objs: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self._objects = {str(o.get("metadata", {}).get("name", "")): dict(o) for o in objs}

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(name)


@dataclass
class Ledger:
    """Reservations in ConfigMaps of ``namespace``, through a kubernetes ``CoreV1Api``."""

    core: CoreV1Api
    namespace: str
    book: UsageBook
    watch: WatchProgress = CAUGHT_UP
    grace: float = DEFAULT_GRACE
    deadline: float = 3.0   # under the webhook's timeoutSeconds (5 s)
    clock: Callable[[], float] = time.time
    #: Told how each read-check-write round ended (one of :data:`ROUND_RESULTS`), for the metrics.
    counted: Callable[[str], None] = lambda result: None
    #: Told how each written-away reservation left (one of :data:`PRUNE_KINDS`), for the metrics.
    pruned: Callable[[str], None] = lambda kind: None
    #: The ``prunedThrough`` this replica's watch last failed to reach in time: while it is still
    #: behind it, a round answers at once instead of waiting again (requests queue per tenant,
    #: and a second of waiting each would push the queue past the webhook's timeout).
    _behind: int = 0
    #: Since when (``clock``) the watch has been behind, or None when it is not.
    _behind_since: float | None = None
    #: The ledger objects as last seen, and whether that view is live (its watch synced); without
    #: one, every round reads the API server.
    cache: LedgerCache | None = None
    cache_live: Callable[[], bool] = lambda: False
    #: Ledgers whose cached copy lost a compare-and-swap: their next round reads the API server.
    _stale: set[str] = field(default_factory=set)

    def reserve(self, tenant: str, quota: Mapping[str, Decimal], uid: str, pod: str, charge: ResourceList) -> Decision:
        """Admit one pod with a recorded reservation, or deny it (see :meth:`reserve_many`)."""
        return self.reserve_many(tenant, quota, [Reservation(uid, pod, charge)])[0]

    def reserve_many(self, tenant: str, quota: Mapping[str, Decimal],
                     requests: Sequence[Reservation]) -> list[Decision]:
        """Admit each request with a recorded reservation, or deny it (quota, watch behind,
        ledger unavailable), in rounds that each read and write the tenant's ledger once for
        the whole batch: one decision per request, in order."""
        give_up = time.monotonic() + self.deadline
        attempts = 0
        while time.monotonic() < give_up:
            attempts += 1
            try:
                decisions = self._try(tenant, quota, requests)
            except LedgerUnavailable as err:
                log.info("ledger attempt %d for tenant %s: %s", attempts, tenant, err)
                self.counted("unavailable")
                time.sleep(min(0.05 * attempts, 0.25))
                continue
            if isinstance(decisions, str):   # go again: lost the swap, or a denial to confirm
                self.counted(decisions)
                continue
            self.counted(_round_result(decisions))
            return decisions
        late = Decision.deny([Violation(Reason.LEDGER_UNAVAILABLE,
                                        f"gpu-webhook could not record the GPU quota reservation of tenant {tenant} in "
                                        f"time ({attempts} attempts); this is temporary: retry")],
                             code=503, tenant=tenant)
        return [late] * len(requests)

    def _confirm(self, reservations: dict[str, Any], now: float) -> tuple[dict[str, str], int]:
        """Which reservations may leave the ledger ({uid: kind}), and the highest version at
        which a pruned one's pod was confirmed (see the module's rule 3)."""
        gone: dict[str, str] = {}
        through, gets = 0, 0
        for uid, reservation in reservations.items():
            at = self.book.seen_at(uid)
            if at is not None:
                gone[uid], through = "confirmed", max(through, at)
                continue
            if now - float(reservation.get("at", 0)) <= self.grace or gets >= _GETS_PER_ROUND:
                continue
            gets += 1
            found = self._get_pod(str(reservation.get("pod", "")))
            if found is None or found.get("metadata", {}).get("uid") != uid:
                gone[uid] = "ghost"
            elif self.watch.reached >= (version := resource_version(found)):
                gone[uid], through = "confirmed", max(through, version)
        return gone, through

    def _restart_if_stalled(self, pruned_through: int) -> None:
        """Restart a watch that has stayed behind the ledger for :data:`RESTART_BEHIND` seconds."""
        now = self.clock()
        if self._behind_since is None:
            self._behind_since = now
        elif now - self._behind_since >= RESTART_BEHIND:
            self._behind_since = None
            self.watch.restart(f"behind the quota ledger for {RESTART_BEHIND:g} s (at {self.watch.reached}, "
                               f"the ledger at {pruned_through})")

    def _try(self, tenant: str, quota: Mapping[str, Decimal],
             requests: Sequence[Reservation]) -> list[Decision] | str:
        """One read-check-write round for a batch: its decisions, or why to go again: "conflict"
        (another replica wrote first) or "recheck" (a denial read from the cache, which may be
        stale: a write would have caught that, a denial writes nothing, so it is read again)."""
        name = ledger_name(tenant)
        current, cached = self._current(name)
        reservations, pruned_through = _decode(current)
        behind = self._watch_behind(tenant, pruned_through)
        if behind is not None:
            return [behind] * len(requests)
        now = self.clock()
        for request in requests:
            reservations.pop(request.uid, None)   # a retried admission replaces its own reservation
        gone, through = self._confirm(reservations, now)
        for ruid in gone:
            del reservations[ruid]
        unseen = {ruid: r for ruid, r in reservations.items() if not self.book.seen(ruid)}
        used = add(self.book.usage().get(tenant, {}), _reserved(unseen))
        decisions: list[Decision] = []
        for request in requests:
            exceeded = exceeded_lines(tenant, quota, request.charge, used)
            if exceeded:
                decisions.append(Decision.deny([Violation(Reason.QUOTA_EXCEEDED, e.message()) for e in exceeded],
                                               tenant=tenant))
                continue
            used = add(used, request.charge)
            reservations[request.uid] = {"charge": {k: format_quantity(v) for k, v in request.charge.items()},
                                         "at": round(now, 3), "pod": request.pod}
            decisions.append(Decision.allow(Reason.ADMITTED, tenant=tenant))
        if cached and not all(d.allowed for d in decisions):
            self._stale.add(name)
            return "recheck"
        if not any(d.allowed for d in decisions):
            return decisions   # nothing to record: the quota is full for every request
        if not self._write(name, current, reservations, max(pruned_through, through)):
            self._stale.add(name)
            return "conflict"
        for kind in gone.values():
            self.pruned(kind)
        return decisions

    def _watch_behind(self, tenant: str, pruned_through: int) -> Decision | None:
        """The 503 of rule 2 when this replica's watch has not reached ``prunedThrough`` in time."""
        wait = 0.0 if self.watch.reached < self._behind else WATCH_WAIT
        if self.watch.wait_reached(pruned_through, wait):
            self._behind_since = None
            return None
        self._behind = pruned_through
        self._restart_if_stalled(pruned_through)
        return Decision.deny([Violation(Reason.WATCH_BEHIND,
                                        f"gpu-webhook's view of the cluster's pods is behind the quota ledger of "
                                        f"tenant {tenant} (it has not yet seen pods another replica counted), so "
                                        f"it cannot check the quota; this is temporary: retry")],
                             code=503, tenant=tenant)

    def _write(self, name: str, current: Mapping[str, Any] | None, reservations: Mapping[str, Any],
               pruned_through: int) -> bool:
        """Create or compare-and-swap the ledger; False when another replica wrote first."""
        from kubernetes.client.rest import ApiException

        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/name": "gpu-webhook", "gpu.platform/ledger": "true"}},
            "data": {_KEY: json.dumps(reservations, sort_keys=True), _PRUNED: str(pruned_through)}}
        try:
            if current is None:
                written = self.core.create_namespaced_config_map(self.namespace, body, _request_timeout=2,
                                                                 _preload_content=False)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                written = self.core.replace_namespaced_config_map(name, self.namespace, body, _request_timeout=2,
                                                                  _preload_content=False)
        except ApiException as err:
            if err.status == 409:   # another replica wrote first (or created it): read again
                return False
            raise LedgerUnavailable(f"write failed: {err.status} {err.reason}") from None
        except Exception as err:  # noqa: BLE001 - network trouble is "unavailable", not a crash
            raise LedgerUnavailable(f"write failed: {err}") from None
        if self.cache is not None:
            self.cache.offer(json.loads(written.data))
        return True

    def _current(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        """The ledger as this replica's cache has it (and True), or as the API server has it when
        there is no live cache or the cached copy lost a swap or must confirm a denial."""
        if self.cache is not None and self.cache_live() and name not in self._stale:
            return self.cache.get(name), True
        current = self._read(name)
        self._stale.discard(name)
        if self.cache is not None and current is not None:
            self.cache.offer(current)
        return current, False

    def _get_pod(self, where: str) -> dict[str, Any] | None:
        """The pod ``ns/name`` as the API server has it now (a quorum read), or None if absent."""
        namespace, _, name = where.partition("/")
        if not namespace or not name:
            return None
        return _read_or_none(f"reading pod {where}", self.core.read_namespaced_pod, name, namespace)

    def _read(self, name: str) -> dict[str, Any] | None:
        return _read_or_none("read", self.core.read_namespaced_config_map, name, self.namespace)


def _read_or_none(what: str, read: Callable[..., Any], name: str, namespace: str) -> dict[str, Any] | None:
    """One GET as raw JSON; None on 404; any other failure is :class:`LedgerUnavailable`."""
    from kubernetes.client.rest import ApiException

    try:
        return json.loads(read(name, namespace, _preload_content=False, _request_timeout=2).data)
    except ApiException as err:
        if err.status == 404:
            return None
        raise LedgerUnavailable(f"{what} failed: {err.status} {err.reason}") from None
    except Exception as err:  # noqa: BLE001 - network trouble is "unavailable", not a crash
        raise LedgerUnavailable(f"{what} failed: {err}") from None


#: At most this many requests in one round: bounds a round's time and its ledger write.
MAX_BATCH = 100


@dataclass
class _Waiting:
    """A request queued for its tenant's next round, and where its decision goes."""

    request: Reservation
    quota: Mapping[str, Decimal]
    answer: Any   # asyncio.Future[Decision]

    def settle(self, decision: Decision | None = None, error: BaseException | None = None) -> None:
        """Answer the request, unless it stopped waiting (the API server's call timed out)."""
        if self.answer.done():
            return
        if error is not None:
            self.answer.set_exception(error)
        else:
            self.answer.set_result(decision)


def _round_result(decisions: Sequence[Decision]) -> str:
    """How a final round ended, for :data:`ROUND_RESULTS`: one that recorded any reservation was written."""
    if any(d.allowed for d in decisions):
        return "written"
    return "watch-behind" if decisions and decisions[0].reason == Reason.WATCH_BEHIND else "over-quota"


class QuotaReserver:
    """The async edge of the ledger for the validating route: one reservation per admitted,
    quota-bound, non-dry-run pod. One round per tenant is in flight in this replica at a time
    (its requests never race each other); the requests that arrive meanwhile queue, and the
    next round takes them all (group commit, see the module). The blocking API calls run on a
    worker thread."""

    def __init__(self, ledger: Ledger, max_batch: int = MAX_BATCH) -> None:
        self.ledger = ledger
        #: At most this many requests in one round; 1 switches group commit off (one round per
        #: request, still one at a time per tenant: how the ledger worked before group commit).
        self.max_batch = max_batch
        #: Per tenant with a round in flight: the requests waiting for the next round.
        self._queues: dict[str, list[_Waiting]] = {}
        #: The running rounds: the loop keeps only weak references to tasks (asyncio.ensure_future).
        self._rounds_running: set[asyncio.Future[None]] = set()

    async def __call__(self, review: ReviewedPod, decision: Decision, policy: Policy) -> Decision:
        from ..core.pod import metadata
        from ..core.quota import pod_charge, touches_quota

        if decision.warned:
            return decision   # enforcement warn let a denial through: nothing to reserve or explain
        if decision.reason == Reason.QUOTA_EXCEEDED:
            return self._with_holders(decision)
        if not (decision.allowed and decision.reason == Reason.ADMITTED) or review.dry_run or not decision.tenant:
            return decision
        pod = review.object or {}
        quota = policy.spec.tenants[decision.tenant].quota
        charged = pod_charge(pod, policy)
        if not touches_quota(charged, quota):
            return decision   # nothing of this pod is limited: no ledger round, no write, no 503
        meta = metadata(pod)
        name, uid = str(meta.get("name") or ""), str(meta.get("uid") or "")
        problem = identity_problem(review.namespace, name, uid)
        if problem is not None:
            refused = Decision.deny([problem], code=400, profile=decision.profile, tenant=decision.tenant)
            return refused.as_warning() if policy.spec.enforcement == "warn" else refused
        reserved = await self._queued(decision.tenant, quota, Reservation(uid, f"{review.namespace}/{name}", charged))
        reserved = self._with_holders(replace(reserved, profile=decision.profile,
                                              warnings=decision.warnings + reserved.warnings))
        return reserved.as_warning() if policy.spec.enforcement == "warn" else reserved

    async def _queued(self, tenant: str, quota: Mapping[str, Decimal], request: Reservation) -> Decision:
        """This request's decision, from the next round of its tenant (started here if none is in flight)."""
        import asyncio

        waiting = _Waiting(request, quota, asyncio.get_running_loop().create_future())
        queue = self._queues.get(tenant)
        if queue is not None:
            queue.append(waiting)
        else:
            self._queues[tenant] = [waiting]
            rounds = asyncio.ensure_future(self._rounds(tenant))
            self._rounds_running.add(rounds)
            rounds.add_done_callback(self._rounds_running.discard)
        return await waiting.answer

    async def _rounds(self, tenant: str) -> None:
        """Rounds for ``tenant`` until its queue is empty; each takes the requests queued so far
        that share the first one's quota (a reload between them starts a new batch)."""
        import asyncio

        queue = self._queues[tenant]
        try:
            while queue:
                # a request whose call timed out is dropped: reserving for it would hold quota for a ghost
                batch = [w for w in queue if not w.answer.done()]
                quota = batch[0].quota if batch else {}
                batch = [w for w in batch if w.quota == quota][:self.max_batch]
                taken = {id(w) for w in batch}
                queue[:] = [w for w in queue if not w.answer.done() and id(w) not in taken]
                if not batch:
                    continue
                try:
                    decisions = await asyncio.to_thread(self.ledger.reserve_many, tenant, quota,
                                                        [w.request for w in batch])
                except Exception as err:  # noqa: BLE001 - each waiting request answers the error
                    for w in batch:
                        w.settle(error=err)
                else:
                    for w, d in zip(batch, decisions, strict=True):
                        w.settle(d)
        finally:
            del self._queues[tenant]

    def _with_holders(self, decision: Decision, top: int = 3) -> Decision:
        """A quota denial also names who holds the quota, so the author knows whom to ask."""
        if decision.reason != Reason.QUOTA_EXCEEDED or not decision.tenant:
            return decision
        holders = self.ledger.book.holders(decision.tenant)
        if not holders:
            return decision
        named = ", ".join(f"{r.holder} ({format_quantity(r.charge.get('gpuEquivalent', Decimal(0)))} GPU-eq)"
                          for r in holders[:top])
        more = f" and {len(holders) - top} more" if len(holders) > top else ""
        return replace(decision, message=f"{decision.message}; held by {named}{more}")
