"""Quota math, pure: what a pod charges, what a tenant uses, and which lines a pod exceeds.

Modelled on Kubernetes' ResourceQuota: quantities are added and compared per line, and a
denial names the line with ``requested``, ``used`` and ``limited`` so a person can act on it.
Decimals, not floats: 8 x 0.125 must be exactly 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .pod import GpuContainer, as_dict, gpu_containers, gpu_quantity, labels, metadata
from .policy import GPU_EQUIVALENT, Policy, Profile
from .tenancy import resolve_tenant

__all__ = [
    "FINISHED_PHASES",
    "Exceeded",
    "ResourceList",
    "add",
    "charge",
    "exceeded_lines",
    "format_quantity",
    "gpu_request",
    "pod_charge",
    "pod_gpu_request",
    "tenant_charge",
    "usage_from_pods",
]

ResourceList = dict[str, Decimal]

_ZERO = Decimal(0)

#: Pods in these phases hold no GPU any more.
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


def add(a: Mapping[str, Decimal], b: Mapping[str, Decimal]) -> ResourceList:
    """Line-wise sum."""
    total = dict(a)
    _add_into(total, b)
    return total


def _add_into(total: ResourceList, more: Mapping[str, Decimal]) -> None:
    for name, quantity in more.items():
        total[name] = total.get(name, _ZERO) + quantity


def gpu_request(containers: Iterable[GpuContainer]) -> ResourceList:
    """The pod's effective GPU request from its GPU containers, computed as the scheduler does.

    max(sum of app containers + restartable init (sidecar) containers, the peak of any one
    init container plus the sidecars started before it). The driver-validation init
    container asks for the same GPUs as the task, so it adds nothing on top. Unparsable
    quantities are judged by the rules; here they, and zeros, charge nothing. (Sums are kept
    in place: this runs on every GPU pod's validation.)
    """
    app: ResourceList = {}
    sidecars: ResourceList = {}
    init_peak: ResourceList = {}
    for field, container, raw in containers:
        request = {name: q for name, value in raw.items() if (q := gpu_quantity(value))}
        if field == "containers":
            _add_into(app, request)
        elif container.get("restartPolicy") == "Always":
            _add_into(sidecars, request)
        else:
            for name in {*sidecars, *request}:
                running = sidecars.get(name, _ZERO) + request.get(name, _ZERO)
                init_peak[name] = max(init_peak.get(name, _ZERO), running)
    _add_into(app, sidecars)
    for name, peak in init_peak.items():
        app[name] = max(app.get(name, _ZERO), peak)
    return {name: quantity for name, quantity in app.items() if quantity}


def pod_gpu_request(pod: Mapping[str, Any]) -> ResourceList:
    """The effective GPU request of a whole pod (see :func:`gpu_request`)."""
    return gpu_request(gpu_containers(pod))


def charge(request: Mapping[str, Decimal], profile: Profile | None, policy: Policy) -> ResourceList:
    """What a GPU request counts against its tenant: each resource plus the gpuEquivalent line."""
    if not request:
        return {}
    weighted = sum((q * policy.weight(r, profile) for r, q in request.items()), Decimal(0))
    return {**request, GPU_EQUIVALENT: weighted}


def pod_charge(pod: Mapping[str, Any], policy: Policy) -> ResourceList:
    """What a pod counts against its tenant, weighted by the profile on its label."""
    profile = policy.spec.profiles.get(labels(pod).get(policy.spec.labels.profile, ""))
    return charge(pod_gpu_request(pod), profile, policy)


def tenant_charge(pod: Mapping[str, Any], policy: Policy) -> tuple[str, ResourceList] | None:
    """(tenant, charge) of a pod the quota counts, or None: only pods carrying the profile label
    (the ones the webhook charged), not finished, that fit a tenant and ask for a GPU."""
    if policy.spec.labels.profile not in labels(pod):
        return None
    if as_dict(pod.get("status")).get("phase") in FINISHED_PHASES:
        return None
    tenant = resolve_tenant(pod, metadata(pod).get("namespace") or "", policy)
    charged = pod_charge(pod, policy) if tenant else {}
    return (tenant, charged) if tenant and charged else None


def usage_from_pods(pods: Iterable[Mapping[str, Any]], policy: Policy,
                    skip: tuple[str, str] | None = None) -> dict[str, ResourceList]:
    """Per-tenant usage of the given pods (a PodList's items), as the quota counts it.

    ``skip`` is the (namespace, name) of the pod under review, so a re-submitted pod is not
    counted twice.
    """
    usage: dict[str, ResourceList] = {}
    for pod in pods:
        meta = metadata(pod)
        if skip is not None and skip[1] and (meta.get("namespace") or "", meta.get("name")) == skip:
            continue
        charged = tenant_charge(pod, policy)
        if charged:
            usage[charged[0]] = add(usage.get(charged[0], {}), charged[1])
    return usage


@dataclass(frozen=True)
class Exceeded:
    """One quota line the pod would break."""

    tenant: str
    line: str
    requested: Decimal
    used: Decimal
    limit: Decimal

    def message(self) -> str:
        return (f"exceeded quota: tenant {self.tenant}, {self.line}, "
                f"requested: {format_quantity(self.requested)}, used: {format_quantity(self.used)}, "
                f"limited: {format_quantity(self.limit)}")


def exceeded_lines(tenant: str, quota: Mapping[str, Decimal], requested: Mapping[str, Decimal],
                   used: Mapping[str, Decimal]) -> list[Exceeded]:
    """Every quota line that ``used + requested`` would exceed, in the policy's order.

    A line the pod does not ask for is never reported, even if the tenant is already over
    it (a policy change may lower a quota below current usage; running pods stay).
    """
    broken = []
    for line, limit in quota.items():
        asked = requested.get(line, Decimal(0))
        if asked and used.get(line, Decimal(0)) + asked > limit:
            broken.append(Exceeded(tenant, line, asked, used.get(line, Decimal(0)), limit))
    return broken


def format_quantity(value: Decimal) -> str:
    """``Decimal('4.000')`` -> ``4``, ``Decimal('0.125')`` -> ``0.125``."""
    return format(value.normalize(), "f")
