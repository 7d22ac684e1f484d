"""Which pods the webhook manages, and what a managed pod asked for, pure.

A pod is *managed* when it carries the profile label and (with ``airflowPodsOnly``) was built
by Airflow. For a managed pod, :func:`plan_gpu` turns its labels into a :class:`GpuPlan`
(profile, count, tenant, target container) or the violations that make that impossible.
Both the mutating and the validating step start here, so they can never disagree.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .decision import Reason, Violation
from .pod import airflow_dag_id, as_list, is_airflow_pod, labels, spec
from .policy import Policy, Profile
from .tenancy import dag_id_conflict, describe_tenants, resolve_tenant

if TYPE_CHECKING:
    from .tenancy import UserInfo

__all__ = ["GpuPlan", "Scope", "plan_gpu", "scope_of"]

_COUNT = re.compile(r"^[0-9]+$")


class Scope(enum.Enum):
    """How the webhook relates to a pod."""

    UNLABELLED = "unlabelled"      # no profile label
    NOT_AIRFLOW = "not-airflow"    # labelled, but airflowPodsOnly and not built by Airflow
    MANAGED = "managed"            # labelled Airflow pod: mutated and charged

    @property
    def reason(self) -> Reason:
        """Why a pod of this scope passes untouched (for UNLABELLED and NOT_AIRFLOW)."""
        return Reason(self.value)


def scope_of(pod: Mapping[str, Any], policy: Policy) -> Scope:
    if policy.spec.labels.profile not in labels(pod):
        return Scope.UNLABELLED
    if policy.spec.airflowPodsOnly and not is_airflow_pod(pod):
        return Scope.NOT_AIRFLOW
    return Scope.MANAGED


@dataclass(frozen=True)
class GpuPlan:
    """What a managed pod gets: ``count`` units of ``profile.resource`` on one container."""

    profile_name: str
    profile: Profile
    count: int
    tenant: str
    target_index: int


def _profile(value: Any, policy: Policy) -> tuple[str, Profile] | Violation:
    label = policy.spec.labels.profile
    profile = policy.spec.profiles.get(value) if isinstance(value, str) else None
    if profile is None:
        known = ", ".join(policy.spec.profiles)
        return Violation(Reason.UNKNOWN_PROFILE,
                         f"{label} {value!r} is not a known GPU profile; known profiles: {known}")
    return value, profile


def _count(value: Any, name: str, profile: Profile, policy: Policy) -> int | Violation:
    label = policy.spec.labels.count
    if value is None:
        return 1
    if not isinstance(value, str) or not _COUNT.match(value) or int(value) < 1:
        return Violation(Reason.INVALID_COUNT, f"{label} {value!r} must be a positive whole number "
                                               f"(1 to {profile.maxCount} for profile {name})")
    if int(value) > profile.maxCount:
        return Violation(Reason.COUNT_OVER_MAX, f"{label} {value} exceeds maxCount {profile.maxCount} of profile "
                                                f"{name}; ask for 1 to {profile.maxCount}")
    return int(value)


def _target_index(pod: Mapping[str, Any], policy: Policy) -> int | Violation:
    name = policy.spec.targetContainer
    for index, container in enumerate(as_list(spec(pod).get("containers"))):
        if isinstance(container, dict) and container.get("name") == name:
            return index
    return Violation(Reason.NO_TARGET_CONTAINER, f"the pod has no container named {name!r} to give the GPU to")


def _tenant(pod: Mapping[str, Any], namespace: str, policy: Policy, requester: UserInfo | None) -> str | Violation:
    conflict = dag_id_conflict(pod)
    if conflict is not None:
        return conflict
    tenant = resolve_tenant(pod, namespace, policy, requester)
    if tenant is None:
        by = f", created by {requester.username!r}" if requester is not None and policy.reads_requester else ""
        return Violation(Reason.NO_TENANT, f"no GPU tenant matches namespace {namespace!r}, dag_id "
                                           f"{airflow_dag_id(pod)!r}{by}; tenants: {describe_tenants(policy)}")
    return tenant


def plan_gpu(pod: Mapping[str, Any], namespace: str, policy: Policy,
             requester: UserInfo | None = None) -> GpuPlan | list[Violation]:
    """The plan for a managed pod, or every reason it cannot have one (``requester``: who
    creates it, None when not known)."""
    pod_labels = labels(pod)
    chosen = _profile(pod_labels.get(policy.spec.labels.profile), policy)
    count = 1 if isinstance(chosen, Violation) else _count(pod_labels.get(policy.spec.labels.count), *chosen, policy)
    target = _target_index(pod, policy)
    tenant = _tenant(pod, namespace, policy, requester)
    if (isinstance(chosen, Violation) or isinstance(count, Violation) or isinstance(target, Violation)
            or isinstance(tenant, Violation)):
        return [p for p in (chosen, count, target, tenant) if isinstance(p, Violation)]
    name, profile = chosen
    return GpuPlan(name, profile, count, tenant, target)
