"""Which tenant a pod belongs to: the first tenant (in policy order) with a fitting match.

A match may read the requester (``request.userInfo``: who asks the API server to create the
pod). ``requester`` None means "not known" (a DAG being parsed, ``gpu-webhook explain`` without
one): a match that reads the requester then never fits, and callers say the tenant is unknown
rather than missing. A review always carries a requester.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from .decision import Reason, Violation
from .pod import airflow_dag_id, labels
from .pod import annotations as pod_annotations
from .policy import Policy, TenantMatch

__all__ = ["ANONYMOUS", "UserInfo", "airflow_label_value", "dag_id_conflict", "describe_tenants", "resolve_tenant",
           "service_account_user"]


class UserInfo(NamedTuple):
    """Who asked the API server for the change (``request.userInfo``), as Kubernetes authenticated
    it: the one part of a review a pod's author cannot write (docs/security.md). Read off the
    wire by webhook/server/review.py; defined here, where tenancy reads it, so core imports
    nothing of server."""

    username: str = ""
    groups: tuple[str, ...] = ()


#: The requester of a review that carries no ``userInfo`` (offline reviews, old tests).
ANONYMOUS = UserInfo()

_DAG_ID = "dag_id"
_AIRFLOW_MAX_LABEL = 63
_AIRFLOW_UNSAFE = re.compile(r"^[^a-z0-9A-Z]*|[^a-zA-Z0-9_\-\.]|[^a-z0-9A-Z]*$")


def airflow_label_value(value: str) -> str:
    """The label value Airflow makes of ``value``, exactly as its ``make_safe_label_value``
    (apache-airflow-providers-cncf-kubernetes ``pod_generator``): unsafe characters dropped, and
    a value that changed or is too long cut to 53 characters plus ``-`` and 9 hex of its MD5.
    tests/test_tenancy.py checks it against Airflow's own function."""
    safe = _AIRFLOW_UNSAFE.sub("", value)
    if len(safe) > _AIRFLOW_MAX_LABEL or safe != value:
        digest = hashlib.md5(value.encode(), usedforsecurity=False).hexdigest()[:9]
        safe = f"{safe[:_AIRFLOW_MAX_LABEL - len(digest) - 1]}-{digest}"
    return safe


def dag_id_conflict(pod: Mapping[str, Any]) -> Violation | None:
    """A denial when the ``dag_id`` annotation does not give the ``dag_id`` label Airflow would make of it.

    Airflow writes both from the same DAG id (the label cut and hashed); an annotation set by
    hand (KubernetesPodOperator ``annotations=``, an executor ``pod_override``) would otherwise
    choose the tenant, as the annotation wins for long ids.
    """
    note = pod_annotations(pod).get(_DAG_ID)
    if note is None:
        return None
    label = labels(pod).get(_DAG_ID)
    if isinstance(note, str) and isinstance(label, str) and airflow_label_value(note) == label:
        return None
    return Violation(Reason.DAG_ID_MISMATCH,
                     f"annotation dag_id {note!r} and label dag_id {label!r} name different DAGs (Airflow sets "
                     f"the label to {airflow_label_value(note) if isinstance(note, str) else '?'!r} for that "
                     f"annotation), and the DAG id picks the GPU tenant; do not set dag_id in the task's labels or "
                     f"annotations: Airflow sets both")


def service_account_user(reference: str) -> str:
    """``ns/name`` -> the username the API server gives that ServiceAccount's requests."""
    namespace, _, name = reference.partition("/")
    return f"system:serviceaccount:{namespace}:{name}"


def _fits_requester(match: TenantMatch, requester: UserInfo | None) -> bool:
    if not match.reads_requester:
        return True
    if requester is None:
        return False
    if match.serviceAccount is not None and requester.username != service_account_user(match.serviceAccount):
        return False
    if match.username is not None and requester.username != match.username:
        return False
    return match.group is None or match.group in requester.groups


def _fits(match: TenantMatch, namespace: str, pod_labels: Mapping[str, Any], dag_id: str,
          requester: UserInfo | None) -> bool:
    if match.namespace is not None and match.namespace != namespace:
        return False
    if match.podLabels and any(pod_labels.get(k) != v for k, v in match.podLabels.items()):
        return False
    if match.dagIdPrefix and not dag_id.startswith(match.dagIdPrefix):
        return False
    return _fits_requester(match, requester)


def resolve_tenant(pod: Mapping[str, Any], namespace: str, policy: Policy,
                   requester: UserInfo | None = None) -> str | None:
    """The tenant name for the pod, or None when no tenant's match fits.

    ``namespace`` comes from the admission request: on CREATE the pod's own
    ``metadata.namespace`` is often empty. ``requester``: who creates the pod (None: unknown).
    """
    pod_labels = labels(pod)
    dag_id = airflow_dag_id(pod)
    for name, tenant in policy.spec.tenants.items():
        if any(_fits(m, namespace, pod_labels, dag_id, requester) for m in tenant.match):
            return name
    return None


def describe_tenants(policy: Policy) -> str:
    """``vision (namespace ml-jobs | ...), forecasting (...)`` for denial messages."""
    if not policy.spec.tenants:
        return "the policy defines no tenants"
    return ", ".join(
        f"{name} ({' | '.join(m.describe() for m in tenant.match)})"
        for name, tenant in policy.spec.tenants.items())
