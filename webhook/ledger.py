"""The quota ledger: reservations shared by every replica through the API server, so a burst
of creates is never over-admitted, in the way ResourceQuota admission closes the same window.

Between "admitted" and "seen by the pod watch" there is a window; two replicas (or two
requests) in it would each see the same free quota. So the validating step, for a pod it is
about to admit, *reserves* its charge in a per-tenant ConfigMap (``gpu-webhook-ledger-<tenant>``
in the ledger namespace, ``gpu-webhook-ledger`` as deployed, key ``reservations``: JSON ``{pod uid: {charge, expires, pod}}``)
with optimistic concurrency: read, check ``watched usage + live reservations + this pod``
against the quota, write back with the read ``resourceVersion``; on a conflict, read again.
A reservation stops counting once its pod is in the watch (it is usage then) or after its TTL
(the pod never appeared: a later admission step refused it, or the client gave up).

If the ledger cannot be written within the deadline, the pod is denied with a retryable
message (code 503): admitting without a record could over-admit; the client may simply retry.
Dry runs reserve nothing (the validating configuration says ``sideEffects: NoneOnDryRun``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from .decision import Decision, Violation
from .quota import ResourceList, add, exceeded_lines, format_quantity
from .tracker import UsageBook

__all__ = ["DEFAULT_TTL", "ROUND_RESULTS", "Ledger", "LedgerUnavailable", "QuotaReserver", "live_reservations"]

log = logging.getLogger("gpu_webhook.ledger")

DEFAULT_TTL = 60.0
#: How one read-check-write round can end: the reservation written, the quota full, another
#: replica wrote first (read again), or the API server did not answer (retry after a pause).
ROUND_RESULTS = ("written", "over-quota", "conflict", "unavailable")
_KEY = "reservations"
_UNSAFE = re.compile(r"[^a-z0-9-]")


class LedgerUnavailable(Exception):
    """The ledger could not be read or written in time."""


def live_reservations(reservations: Mapping[str, Any], now: float, landed: Callable[[str], bool]) -> dict[str, Any]:
    """The reservations that still count: not expired, and whose pod the watch has not seen."""
    return {uid: r for uid, r in reservations.items()
            if isinstance(r, dict) and float(r.get("expires", 0)) > now and not landed(uid)}


def _reserved(reservations: Mapping[str, Any]) -> ResourceList:
    total: ResourceList = {}
    for reservation in reservations.values():
        total = add(total, {line: Decimal(q) for line, q in reservation.get("charge", {}).items()})
    return total


@dataclass
class Ledger:
    """Reservations in ConfigMaps of ``namespace``, through a kubernetes ``CoreV1Api``."""

    core: Any
    namespace: str
    book: UsageBook
    ttl: float = DEFAULT_TTL
    deadline: float = 3.0   # under the webhook's timeoutSeconds (5 s)
    clock: Callable[[], float] = time.time
    #: Told how each read-check-write round ended (one of :data:`ROUND_RESULTS`), for the metrics.
    counted: Callable[[str], None] = lambda result: None

    def reserve(self, tenant: str, quota: Mapping[str, Decimal], uid: str, pod: str, charge: ResourceList) -> Decision:
        """Admit the pod with a recorded reservation, or deny it (quota, or ledger unavailable)."""
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
            self.counted("conflict" if decision is None else "written" if decision.allowed else "over-quota")
            if decision is not None:
                return decision
        return Decision.deny([Violation("ledger-unavailable",
                                        f"gpu-webhook could not record the GPU quota reservation of tenant {tenant} in "
                                        f"time ({attempts} attempts); this is temporary: retry")], code=503, tenant=tenant)

    def _try(self, tenant: str, quota: Mapping[str, Decimal], uid: str, pod: str,
             charge: ResourceList) -> Decision | None:
        """One read-check-write round; None means "lost a race, go again"."""
        from kubernetes.client.rest import ApiException

        name = f"gpu-webhook-ledger-{_UNSAFE.sub('-', tenant.lower())}"[:253]
        current = self._read(name)
        now = self.clock()
        reservations = live_reservations(json.loads(((current or {}).get("data") or {}).get(_KEY) or "{}"), now,
                                         self.book.seen)
        reservations.pop(uid, None)   # a retried admission replaces its own reservation
        used = add(self.book.usage().get(tenant, {}), _reserved(reservations))
        exceeded = exceeded_lines(tenant, quota, charge, used)
        if exceeded:
            return Decision.deny([Violation("quota-exceeded", e.message()) for e in exceeded], tenant=tenant)
        reservations[uid] = {"charge": {k: format_quantity(v) for k, v in charge.items()}, "expires": now + self.ttl,
                             "pod": pod}
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "gpu-webhook", "gpu.platform/ledger": "true"}},
                "data": {_KEY: json.dumps(reservations, sort_keys=True)}}
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
        return Decision.allow("admitted", tenant=tenant)

    def _read(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            response = self.core.read_namespaced_config_map(name, self.namespace, _preload_content=False,
                                                            _request_timeout=2)
            return json.loads(response.data)
        except ApiException as err:
            if err.status == 404:
                return None
            raise LedgerUnavailable(f"read failed: {err.status} {err.reason}") from None
        except Exception as err:  # noqa: BLE001
            raise LedgerUnavailable(f"read failed: {err}") from None


class QuotaReserver:
    """The async edge of the ledger for the validating route: one reservation per admitted,
    quota-bound, non-dry-run pod; requests of one tenant queue on a lock in this replica (so
    they never race each other), and the blocking API calls run on a worker thread."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._locks: dict[str, Any] = {}

    async def __call__(self, review: Any, decision: Decision, policy: Any) -> Decision:
        import asyncio

        from .pod import metadata
        from .quota import pod_charge

        if decision.reason == "quota-exceeded":
            return self._with_holders(decision)
        if not (decision.allowed and decision.reason == "admitted") or review.dry_run or not decision.tenant:
            return decision
        pod = review.object or {}
        meta = metadata(pod)
        name = f"{review.namespace}/{meta.get('name') or meta.get('generateName') or '?'}"
        uid = meta.get("uid") or name
        lock = self._locks.setdefault(decision.tenant, asyncio.Lock())
        async with lock:
            reserved = await asyncio.to_thread(self.ledger.reserve, decision.tenant,
                                               policy.spec.tenants[decision.tenant].quota, uid, name,
                                               pod_charge(pod, policy))
        reserved = self._with_holders(replace(reserved, profile=decision.profile,
                                              warnings=decision.warnings + reserved.warnings))
        return reserved.as_warning() if policy.spec.enforcement == "warn" else reserved

    def _with_holders(self, decision: Decision, top: int = 3) -> Decision:
        """A quota denial also names who holds the quota, so the author knows whom to ask."""
        if decision.reason != "quota-exceeded" or not decision.tenant:
            return decision
        from .usage_report import holder_name

        holders = self.ledger.book.holders(decision.tenant)
        if not holders:
            return decision
        named = ", ".join(f"{holder_name(pod)} ({format_quantity(charge.get('gpuEquivalent', Decimal(0)))} GPU-eq)"
                          for charge, pod in holders[:top])
        more = f" and {len(holders) - top} more" if len(holders) > top else ""
        return replace(decision, message=f"{decision.message}; held by {named}{more}")
