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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from ..core.decision import Decision, Reason, Violation
from ..core.policy import Policy
from ..core.quota import ResourceList, add, exceeded_lines, format_quantity
from .tracker import UsageBook, resource_version, version_number
from .wiring import DEFAULT_GRACE

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

__all__ = ["DEFAULT_GRACE", "PRUNE_KINDS", "ROUND_RESULTS", "WATCH_WAIT", "Ledger", "LedgerUnavailable",
           "QuotaReserver", "identity_problem"]

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
ROUND_RESULTS = ("written", "over-quota", "conflict", "unavailable", "watch-behind")
#: How a reservation left the ledger: its pod confirmed (seen or fetched), or a ghost.
PRUNE_KINDS = ("confirmed", "ghost")
#: Direct GETs of unseen pods per round, so a round stays within its deadline.
_GETS_PER_ROUND = 4
_KEY, _PRUNED = "reservations", "prunedThrough"
_UNSAFE = re.compile(r"[^a-z0-9-]")
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


def _reserved(reservations: Mapping[str, Any]) -> ResourceList:
    total: ResourceList = {}
    for reservation in reservations.values():
        total = add(total, {line: Decimal(q) for line, q in reservation.get("charge", {}).items()})
    return total


def _decode(current: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
    data = (current or {}).get("data") or {}
    reservations = json.loads(data.get(_KEY) or "{}")
    return ({uid: r for uid, r in reservations.items() if isinstance(r, dict)}, version_number(data.get(_PRUNED)))


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

    def reserve(self, tenant: str, quota: Mapping[str, Decimal], uid: str, pod: str, charge: ResourceList) -> Decision:
        """Admit the pod with a recorded reservation, or deny it (quota, watch behind, ledger unavailable)."""
        give_up = time.monotonic() + self.deadline
        attempts = 0
        while time.monotonic() < give_up:
            attempts += 1
            try:
                decision = self._try(tenant, quota, uid, pod, charge)
            except LedgerUnavailable as err:
                log.info("ledger attempt %d for tenant %s: %s", attempts, tenant, err)
                self.counted("unavailable")
                time.sleep(min(0.05 * attempts, 0.25))
                continue
            self.counted("conflict" if decision is None else "written" if decision.allowed else
                         "watch-behind" if decision.reason == Reason.WATCH_BEHIND else "over-quota")
            if decision is not None:
                return decision
        return Decision.deny([Violation(Reason.LEDGER_UNAVAILABLE,
                                        f"gpu-webhook could not record the GPU quota reservation of tenant {tenant} in "
                                        f"time ({attempts} attempts); this is temporary: retry")],
                        code=503, tenant=tenant)

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

    def _try(self, tenant: str, quota: Mapping[str, Decimal], uid: str, pod: str,
             charge: ResourceList) -> Decision | None:
        """One read-check-write round; None means "lost a race, go again"."""
        from kubernetes.client.rest import ApiException

        name = f"gpu-webhook-ledger-{_UNSAFE.sub('-', tenant.lower())}"[:253]
        current = self._read(name)
        reservations, pruned_through = _decode(current)
        wait = 0.0 if self.watch.reached < self._behind else WATCH_WAIT
        if not self.watch.wait_reached(pruned_through, wait):
            self._behind = pruned_through
            self._restart_if_stalled(pruned_through)
            return Decision.deny([Violation(Reason.WATCH_BEHIND,
                                            f"gpu-webhook's view of the cluster's pods is behind the quota ledger of "
                                            f"tenant {tenant} (it has not yet seen pods another replica counted), so "
                                            f"it cannot check the quota; this is temporary: retry")],
                                 code=503, tenant=tenant)
        self._behind_since = None
        now = self.clock()
        reservations.pop(uid, None)   # a retried admission replaces its own reservation
        gone, through = self._confirm(reservations, now)
        for ruid in gone:
            del reservations[ruid]
        unseen = {ruid: r for ruid, r in reservations.items() if not self.book.seen(ruid)}
        used = add(self.book.usage().get(tenant, {}), _reserved(unseen))
        exceeded = exceeded_lines(tenant, quota, charge, used)
        if exceeded:
            return Decision.deny([Violation(Reason.QUOTA_EXCEEDED, e.message()) for e in exceeded], tenant=tenant)
        reservations[uid] = {"charge": {k: format_quantity(v) for k, v in charge.items()}, "at": round(now, 3),
                             "pod": pod}
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "gpu-webhook", "gpu.platform/ledger": "true"}},
                "data": {_KEY: json.dumps(reservations, sort_keys=True),
                         _PRUNED: str(max(pruned_through, through))}}
        try:
            if current is None:
                self.core.create_namespaced_config_map(self.namespace, body, _request_timeout=2)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.core.replace_namespaced_config_map(name, self.namespace, body, _request_timeout=2)
        except ApiException as err:
            if err.status == 409:   # another replica wrote first (or created it): read again
                return None
            raise LedgerUnavailable(f"write failed: {err.status} {err.reason}") from None
        except Exception as err:  # noqa: BLE001 - network trouble is "unavailable", not a crash
            raise LedgerUnavailable(f"write failed: {err}") from None
        for kind in gone.values():
            self.pruned(kind)
        return Decision.allow(Reason.ADMITTED, tenant=tenant)

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


class QuotaReserver:
    """The async edge of the ledger for the validating route: one reservation per admitted,
    quota-bound, non-dry-run pod; requests of one tenant queue on a lock in this replica (so
    they never race each other), and the blocking API calls run on a worker thread."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._locks: dict[str, Any] = {}

    async def __call__(self, review: ReviewedPod, decision: Decision, policy: Policy) -> Decision:
        import asyncio

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
        lock = self._locks.setdefault(decision.tenant, asyncio.Lock())
        async with lock:
            reserved = await asyncio.to_thread(self.ledger.reserve, decision.tenant, quota, uid,
                                               f"{review.namespace}/{name}", charged)
        reserved = self._with_holders(replace(reserved, profile=decision.profile,
                                              warnings=decision.warnings + reserved.warnings))
        return reserved.as_warning() if policy.spec.enforcement == "warn" else reserved

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
