"""Airflow pools from the GPU policy: one pool per tenant, sized from its quota, and a GPU task's pool.

Pure: no Airflow, no I/O. The cluster policy (:mod:`.policy`) asks :func:`task_pool` where a
task goes; ``gpu-webhook airflow-pools`` prints :func:`policy_pools` in the format of
``airflow pools import`` or applies them (:mod:`.pools_api`).

A pool slot is ``1 / SLOTS_PER_GPU`` of a GPU: a task weighs ``gpuEquivalent x count`` GPUs,
rounded **up** to whole slots; a tenant's pool holds its GPU-equivalent bound, rounded **down**.
So a pool never lets more run at once than the tenant's gpuEquivalent quota admits::

    >>> policy = load_policy("manifests/policy.yaml")        # doctest: +SKIP
    >>> [(p.name, p.slots) for p in policy_pools(policy)]     # doctest: +SKIP
    [('gpu-vision', 48), ('gpu-forecasting', 24)]

What one pool cannot express stays with the webhook (docs/pools.md): per-resource lines (a
MIG-slice line, ``nvidia.com/gpu``) beside the gpuEquivalent one, and pods made outside Airflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..core.plan import GpuPlan, plan_gpu
from ..core.policy import GPU_EQUIVALENT, Policy, Tenant

__all__ = [
    "DEFAULT_POOL",
    "POOL_PREFIX",
    "SLOTS_PER_GPU",
    "PoolSpec",
    "TaskPool",
    "import_document",
    "policy_pools",
    "pool_name",
    "pool_shortfalls",
    "task_pool",
    "tenant_bound",
]

#: Slots per whole GPU: one A100 MIG 1g.10gb slice (gpuEquivalent 0.125) is one slot.
SLOTS_PER_GPU = 8
POOL_PREFIX = "gpu-"
#: Airflow's pool for a task that names none (``[core] default_pool_task_slot_count`` slots).
DEFAULT_POOL = "default_pool"


@dataclass(frozen=True)
class PoolSpec:
    """An Airflow pool the policy implies for one tenant."""

    name: str
    tenant: str
    slots: int
    description: str
    #: A deferred task (a deferrable KubernetesPodOperator whose pod runs) keeps its slot.
    include_deferred: bool = True

    def import_entry(self) -> dict[str, Any]:
        """This pool as a value of the ``airflow pools import`` JSON document."""
        return {"slots": self.slots, "description": self.description, "include_deferred": self.include_deferred}

    def api_body(self) -> dict[str, Any]:
        """This pool as a ``PoolBody`` of Airflow's REST API (``/api/v2/pools``)."""
        return {"name": self.name, **self.import_entry()}


@dataclass(frozen=True)
class TaskPool:
    """Where a GPU task waits: its pool and how many of its slots it takes."""

    pool: str
    slots: int
    tenant: str


def pool_name(tenant: str) -> str:
    return f"{POOL_PREFIX}{tenant}"


def _slots_up(gpu_equivalent: Decimal) -> int:
    return max(1, math.ceil(gpu_equivalent * SLOTS_PER_GPU))


def tenant_bound(tenant: Tenant, policy: Policy) -> Decimal | None:
    """The most GPU-equivalents ``tenant`` may hold at once, or None when its quota leaves it unbounded.

    The ``gpuEquivalent`` line, or, tighter, the per-resource lines when every resource of the
    policy's profiles has one (each unit weighed by the heaviest profile of that resource).
    """
    bounds = [tenant.quota[GPU_EQUIVALENT]] if GPU_EQUIVALENT in tenant.quota else []
    heaviest: dict[str, Decimal] = {}
    for profile in policy.spec.profiles.values():
        heaviest[profile.resource] = max(heaviest.get(profile.resource, Decimal(0)), profile.gpuEquivalent)
    if all(resource in tenant.quota for resource in heaviest):
        bounds.append(sum((tenant.quota[r] * weight for r, weight in heaviest.items()), Decimal(0)))
    return min(bounds) if bounds else None


def policy_pools(policy: Policy) -> list[PoolSpec]:
    """One pool per tenant with a bounded quota, in policy order (an unbounded tenant needs no queue)."""
    pools = []
    for name, tenant in policy.spec.tenants.items():
        bound = tenant_bound(tenant, policy)
        if bound is None:
            continue
        slots = math.floor(bound * SLOTS_PER_GPU)
        pools.append(PoolSpec(
            pool_name(name), name, slots,
            f"GPU quota of tenant {name}: {bound.normalize():f} GPU-equivalents x {SLOTS_PER_GPU} slots per GPU "
            f"(from GPU policy {policy.metadata.name}; written by gpu-webhook airflow-pools)"))
    return pools


def import_document(pools: Iterable[PoolSpec]) -> dict[str, dict[str, Any]]:
    """The JSON document ``airflow pools import FILE`` reads: ``{name: {slots, description, include_deferred}}``."""
    return {p.name: p.import_entry() for p in pools}


def _plan(pod: Mapping[str, Any], namespace: str, policy: Policy) -> GpuPlan | None:
    plan = plan_gpu(pod, namespace, policy)
    return plan if isinstance(plan, GpuPlan) else None


def task_pool(pods: Iterable[tuple[Mapping[str, Any], str]], current: str | None, policy: Policy) -> TaskPool | None:
    """The pool and slots of a task whose GPU pods are ``pods`` (pod, namespace), or None to leave it as it is.

    None when the tenant cannot be told here (no plan for a pod: a template, an unknown namespace,
    or a tenant matched on who creates the pod), when pods of the task belong to different tenants,
    when the tenant has no pool (unbounded quota), or when the task alone outweighs its pool (it
    could never start; the webhook refuses its pod with the quota message instead). A task that
    names one of its tenant's ``airflowPools`` keeps it.
    """
    if policy.reads_requester:
        return None
    plans = [_plan(pod, namespace, policy) for pod, namespace in pods]
    tenants = {p.tenant for p in plans if p is not None}
    if not plans or None in plans or len(tenants) != 1:
        return None
    tenant = tenants.pop()
    slots = _slots_up(sum((p.profile.gpuEquivalent * p.count for p in plans if p is not None), Decimal(0)))
    if current and current in policy.spec.tenants[tenant].airflowPools:
        return TaskPool(current, slots, tenant)
    own = next((p for p in policy_pools(policy) if p.tenant == tenant), None)
    if own is None or slots > own.slots:
        return None
    return TaskPool(own.name, slots, tenant)


def pool_shortfalls(expected: Iterable[PoolSpec], existing: Mapping[str, int]) -> list[str]:
    """Pools missing, smaller or larger than the policy's (``existing``: name -> slots in Airflow), one line each."""
    problems = []
    for pool in expected:
        have = existing.get(pool.name)
        if have is None:
            problems.append(f"Airflow pool {pool.name!r} does not exist; GPU tasks of tenant {pool.tenant} will not "
                            f"run until it does (gpu-webhook airflow-pools --apply makes it with {pool.slots} slots)")
        elif have < 0 or have > pool.slots:
            size = "unlimited slots" if have < 0 else f"{have} slots"
            problems.append(f"Airflow pool {pool.name!r} has {size}; the GPU policy gives tenant {pool.tenant} "
                            f"{pool.slots}: its GPU tasks beyond the quota start and are refused by the webhook "
                            f"(gpu-webhook airflow-pools --apply)")
        elif have < pool.slots:
            problems.append(f"Airflow pool {pool.name!r} has {have} slots; the GPU policy gives tenant {pool.tenant} "
                            f"{pool.slots}: its GPU tasks wait longer than the quota requires "
                            f"(gpu-webhook airflow-pools --apply)")
    return problems
