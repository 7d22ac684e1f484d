"""Which tenant a pod belongs to: the first tenant (in policy order) with a fitting match."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .pod import airflow_dag_id, labels
from .policy import Policy, TenantMatch

__all__ = ["describe_tenants", "resolve_tenant"]


def _fits(match: TenantMatch, namespace: str, pod_labels: Mapping[str, Any], dag_id: str) -> bool:
    if match.namespace is not None and match.namespace != namespace:
        return False
    if match.podLabels and any(pod_labels.get(k) != v for k, v in match.podLabels.items()):
        return False
    return not match.dagIdPrefix or dag_id.startswith(match.dagIdPrefix)


def resolve_tenant(pod: Mapping[str, Any], namespace: str, policy: Policy) -> str | None:
    """The tenant name for the pod, or None when no tenant's match fits.

    ``namespace`` comes from the admission request: on CREATE the pod's own
    ``metadata.namespace`` is often empty.
    """
    pod_labels = labels(pod)
    dag_id = airflow_dag_id(pod)
    for name, tenant in policy.spec.tenants.items():
        if any(_fits(m, namespace, pod_labels, dag_id) for m in tenant.match):
            return name
    return None


def describe_tenants(policy: Policy) -> str:
    """``vision (namespace ml-jobs | ...), forecasting (...)`` for denial messages."""
    if not policy.spec.tenants:
        return "the policy defines no tenants"
    return ", ".join(
        f"{name} ({' | '.join(m.describe() for m in tenant.match)})"
        for name, tenant in policy.spec.tenants.items())
