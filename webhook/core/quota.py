"""Quota math, pure: what a pod charges, what a tenant uses, and which lines a pod exceeds.

Modelled on Kubernetes' ResourceQuota: quantities are added and compared per line, and a
denial names the line with ``requested``, ``used`` and ``limited`` so a person can act on it.
Decimals, not floats: 8 x 0.125 must be exactly 1.

The one quota model: :func:`pod_record` turns an admitted pod into a small fixed
:class:`PodRecord` read from the accounting **stamps** the mutation wrote
(``gpu.platform/managed``, ``gpu.platform/tenant``, ``gpu.platform/profile``) and the pod's
resources; tenancy is never re-resolved from the pod's current labels, which a namespace's
users can change. The live tracker, the ledger, ``review --cluster-pods`` and
``gpu-webhook usage`` all read these records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from .dra import dra_request
from .mutate import MANAGED_LABEL, PROFILE_LABEL, TENANT_LABEL
from .pod import GpuContainer, airflow_dag_id, as_dict, gpu_containers, gpu_quantity, labels, metadata, safe_label_value
from .policy import GPU_EQUIVALENT, Policy, Profile, per_policy

__all__ = [
    "FINISHED_PHASES",
    "HOLDER_MAX",
    "Exceeded",
    "PodRecord",
    "ResourceList",
    "add",
    "charge",
    "exceeded_lines",
    "format_quantity",
    "gpu_request",
    "pod_charge",
    "pod_devices",
    "pod_gpu_request",
    "pod_record",
    "profile_of_stamp",
    "reweigh",
    "touches_quota",
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


def pod_devices(pod: Mapping[str, Any], policy: Policy) -> ResourceList:
    """Every GPU the pod will hold: its containers' extended resources and its claims from DRA
    profile templates (one device each), by resource."""
    return add(pod_gpu_request(pod), dra_request(pod, policy))


def pod_charge(pod: Mapping[str, Any], policy: Policy) -> ResourceList:
    """What a pod counts against its tenant, weighted by the profile on its label."""
    profile = policy.spec.profiles.get(labels(pod).get(policy.spec.labels.profile, ""))
    return charge(pod_devices(pod, policy), profile, policy)


#: A holder's name (``dag_id/task_id (ns/name)``) is cut to this many characters.
HOLDER_MAX = 100


class PodRecord(NamedTuple):
    """What the quota keeps of one charged pod: a fixed handful of short fields, whatever the
    pod's labels (a label bomb on the pod costs nothing here)."""

    uid: str
    namespace: str
    name: str
    tenant: str
    #: The profile stamp (the safe label value), kept to re-weigh the charge on a policy reload.
    profile: str
    #: The pod's effective GPU request (device units, DRA claims included), unweighted.
    request: ResourceList
    #: ``request`` plus the weighted gpuEquivalent line under the policy in force.
    charge: ResourceList
    #: ``dag_id/task_id (ns/name)``, at most :data:`HOLDER_MAX` characters, for denials and reports.
    holder: str


@per_policy
def _tenant_by_stamp(policy: Policy) -> dict[str, str]:
    """Tenant stamp (its safe label value) -> tenant name, once per policy, not per pod event."""
    return {safe_label_value(name): name for name in policy.spec.tenants}


@per_policy
def _profile_by_stamp(policy: Policy) -> dict[str, str]:
    """Profile stamp -> profile name, once per policy."""
    return {safe_label_value(name): name for name in policy.spec.profiles}


def profile_of_stamp(stamp: str, policy: Policy) -> str | None:
    """The policy's profile whose stamp (its safe label value) this is, or None."""
    return _profile_by_stamp(policy).get(stamp)


def _holder(pod: Mapping[str, Any], namespace: str, name: str) -> str:
    dag, task = airflow_dag_id(pod), labels(pod).get("task_id")
    where = f"{namespace}/{name}"
    text = f"{dag}/{task} ({where})" if dag and task else where
    return text if len(text) <= HOLDER_MAX else text[:HOLDER_MAX - 3] + "..."


def pod_record(pod: Mapping[str, Any], policy: Policy) -> PodRecord | None:
    """The record of a pod the quota counts, from its stamps, or None.

    Counted: stamped ``managed=true`` with a tenant stamp, not finished, asking for a GPU. The
    tenant is the stamp mapped back to the policy's tenant name (the stamp is its
    ``safe_label_value``); a stamp no tenant of the policy has stays as it is (it then holds no
    quota line). The charge is weighted by the profile stamp.
    """
    pod_labels = labels(pod)
    stamp = pod_labels.get(TENANT_LABEL)
    if pod_labels.get(MANAGED_LABEL) != "true" or not isinstance(stamp, str) or not stamp:
        return None
    if as_dict(pod.get("status")).get("phase") in FINISHED_PHASES:
        return None
    request = pod_devices(pod, policy)
    if not request:
        return None
    meta = metadata(pod)
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    profile = pod_labels.get(PROFILE_LABEL)
    record = PodRecord(str(meta.get("uid") or ""), namespace, name,
                       _tenant_by_stamp(policy).get(stamp, stamp[:63]),
                       profile[:63] if isinstance(profile, str) else "", request, {}, _holder(pod, namespace, name))
    return reweigh(record, policy)


def reweigh(record: PodRecord, policy: Policy) -> PodRecord:
    """The record's charge under ``policy`` (a reload may change weights); the tenant is kept."""
    profile_name = _profile_by_stamp(policy).get(record.profile)
    profile = policy.spec.profiles.get(profile_name) if profile_name else None
    return record._replace(charge=charge(record.request, profile, policy))


def touches_quota(charged: Mapping[str, Decimal], quota: Mapping[str, Decimal]) -> bool:
    """Whether a charge reaches any line of the quota (if not, there is nothing to reserve)."""
    return any(line in quota for line in charged)


def usage_from_pods(pods: Iterable[Mapping[str, Any]], policy: Policy,
                    skip: tuple[str, str] | None = None) -> dict[str, ResourceList]:
    """Per-tenant usage of the given pods (a PodList's items), as the quota counts it.

    ``skip`` is the (namespace, name) of the pod under review, so a re-submitted pod is not
    counted twice.
    """
    usage: dict[str, ResourceList] = {}
    for pod in pods:
        record = pod_record(pod, policy)
        if record is None or (skip is not None and skip[1] and (record.namespace, record.name) == skip):
            continue
        usage[record.tenant] = add(usage.get(record.tenant, {}), record.charge)
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
