"""What the webhook decided about one pod: the value every pure decision function returns.

The HTTP layer turns a Decision into an AdmissionReview response; nothing here knows HTTP.
Reasons are the members of :class:`Reason`, short stable codes (bounded, so they are safe as
metric labels); messages are for the person who wrote the DAG. ``profile`` and ``tenant`` say whose pod it was, for the
metrics: names from the policy only (never free pod text), ``UNKNOWN`` for a managed pod whose
profile or tenant could not be resolved, empty for a pod the webhook does not manage.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, TypedDict

__all__ = ["UNKNOWN", "Decision", "Reason", "Violation", "Whose"]

Patch = tuple[dict[str, Any], ...]

#: The profile or tenant of a managed pod that names no profile or fits no tenant of the policy.
UNKNOWN = "unknown"


@enum.unique
class Reason(enum.StrEnum):
    """Why a pod was allowed or denied: a short stable code, the same string on the wire, in the
    log and as the ``reason`` label of ``gpu_webhook_admissions_total`` (a bounded set, so safe as a
    metric label). Code branches on the member, never on its text."""

    # Allowed.
    MUTATED = "mutated"
    ALREADY_MUTATED = "already-mutated"
    VOIDED = "voided"
    ALREADY_VOIDED = "already-voided"
    CANNOT_REACH_GPU = "cannot-reach-gpu"
    UNLABELLED = "unlabelled"
    NOT_AIRFLOW = "not-airflow"
    ADMITTED = "admitted"
    EPHEMERAL_ADMITTED = "ephemeral-admitted"
    UPDATE = "update"
    NOT_CREATE = "not-create"
    SUBRESOURCE = "subresource"
    NOT_POD = "not-pod"
    NOT_PLATFORM_TEMPLATE = "not-platform-template"
    PLATFORM_TEMPLATE_OK = "platform-template-ok"
    NOT_PLATFORM_CLAIM = "not-platform-claim"
    PLATFORM_CLAIM_OK = "platform-claim-ok"
    # Denied (one per rule; the first violation's reason is the decision's).
    ACCOUNTING_FIXED = "accounting-fixed"
    COUNT_OVER_MAX = "count-over-max"
    DAG_ID_MISMATCH = "dag-id-mismatch"
    DEVICE_REQUEST_MOUNT = "device-request-mount"
    FORBIDDEN_ENV = "forbidden-env"
    FORGED_STAMP = "forged-stamp"
    GPU_OUTSIDE_TARGET = "gpu-outside-target"
    GPU_REACHING_POD = "gpu-reaching-pod"
    HOST_NAMESPACE = "host-namespace"
    HOST_PATH = "host-path"
    INVALID_COUNT = "invalid-count"
    INVALID_IDENTITY = "invalid-identity"
    INVALID_QUANTITY = "invalid-quantity"
    LEDGER_UNAVAILABLE = "ledger-unavailable"
    NO_CLAIM_TEMPLATE = "no-claim-template"
    NO_NODE_FITS = "no-node-fits"
    NO_TARGET_CONTAINER = "no-target-container"
    NO_TENANT = "no-tenant"
    NODE_SELECTOR_CONFLICT = "node-selector-conflict"
    NOT_AIRFLOW_GPU_POD = "not-airflow-gpu-pod"
    NOT_MUTATED = "not-mutated"
    NOT_VOIDED = "not-voided"
    PRIVILEGED_CAPABILITY = "privileged-capability"
    PLATFORM_TEMPLATE = "platform-template"
    PLATFORM_CLAIM = "platform-claim"
    PRIVILEGED_GPU_POD = "privileged-gpu-pod"
    QUOTA_EXCEEDED = "quota-exceeded"
    RESOURCE_CLAIMS = "resource-claims"
    UNKNOWN_PROFILE = "unknown-profile"
    UNLABELLED_GPU_POD = "unlabelled-gpu-pod"
    USAGE_NOT_SYNCED = "usage-not-synced"
    WATCH_BEHIND = "watch-behind"
    INTERNAL_ERROR = "internal-error"


@dataclass(frozen=True)
class Violation:
    """One rule the pod breaks: a stable reason code and a message a DAG author can act on."""

    reason: Reason
    message: str


class Whose(TypedDict):
    """A decision's metric labels, passed on as ``Decision.deny(..., **whose)``."""

    profile: str
    tenant: str


@dataclass(frozen=True)
class Decision:
    """allow/deny, the JSON patch to apply, warnings, and why."""

    allowed: bool
    reason: Reason
    message: str = ""
    patch: Patch = ()
    warnings: tuple[str, ...] = ()
    code: int = 200
    violations: tuple[Violation, ...] = field(default=(), compare=False)
    #: Metric labels only: they never change what the API server is told, so they do not
    #: take part in equality.
    profile: str = field(default="", compare=False)
    tenant: str = field(default="", compare=False)
    #: Enforcement ``warn`` let this denial through (:meth:`as_warning`); ``reason`` stays the
    #: reason it would have been denied for.
    warned: bool = False

    @classmethod
    def allow(cls, reason: Reason, patch: Patch = (), warnings: tuple[str, ...] = (), *,
              profile: str = "", tenant: str = "") -> Decision:
        if not (patch or warnings or profile or tenant):
            return _plain_allow(reason)
        return cls(True, reason, patch=patch, warnings=warnings, profile=profile, tenant=tenant)

    @classmethod
    def deny(cls, violations: list[Violation] | tuple[Violation, ...], code: int = 403, *,
             profile: str = "", tenant: str = "") -> Decision:
        """A denial listing every violation, so one round trip shows the author all problems."""
        return cls(False, violations[0].reason, "; ".join(v.message for v in violations),
                   code=code, violations=tuple(violations), profile=profile, tenant=tenant)

    @classmethod
    def error(cls, message: str) -> Decision:
        """The webhook itself failed: a denial with code 500 (the pod is never allowed by accident)."""
        return cls(False, Reason.INTERNAL_ERROR, message, code=500)

    def as_warning(self) -> Decision:
        """Enforcement ``warn``: the denial becomes warnings and the pod is allowed unchanged."""
        if self.allowed:
            return self
        texts = tuple(f"[gpu-webhook warn-only] {v.message}" for v in self.violations) or (self.message,)
        return replace(self, allowed=True, message="", code=200, warnings=self.warnings + texts, warned=True)

    @property
    def label(self) -> str:
        """The reason as the log shows it: ``warned:REASON`` for a denial let through by ``warn``."""
        return f"warned:{self.reason}" if self.warned else str(self.reason)


@lru_cache(maxsize=64)
def _plain_allow(reason: Reason) -> Decision:
    """One shared allow per reason (decisions are immutable): most pods the webhook sees are
    CPU pods passing untouched, and building the value was a third of that decision's cost."""
    return Decision(True, reason)
