"""What the webhook decided about one pod: the value every pure decision function returns.

The HTTP layer turns a Decision into an AdmissionReview response; nothing here knows HTTP.
Reasons are short stable codes (bounded, so they are safe as metric labels); messages are
for the person who wrote the DAG. ``profile`` and ``tenant`` say whose pod it was, for the
metrics: names from the policy only (never free pod text), ``UNKNOWN`` for a managed pod whose
profile or tenant could not be resolved, empty for a pod the webhook does not manage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, TypedDict

__all__ = ["UNKNOWN", "Decision", "Violation", "Whose"]

Patch = tuple[dict[str, Any], ...]

#: The profile or tenant of a managed pod that names no profile or fits no tenant of the policy.
UNKNOWN = "unknown"


class Whose(TypedDict):
    """A decision's metric labels, passed on as ``Decision.deny(..., **whose)``."""

    profile: str
    tenant: str


@dataclass(frozen=True)
class Violation:
    """One rule the pod breaks: a stable reason code and a message a DAG author can act on."""

    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """allow/deny, the JSON patch to apply, warnings, and why."""

    allowed: bool
    reason: str
    message: str = ""
    patch: Patch = ()
    warnings: tuple[str, ...] = ()
    code: int = 200
    violations: tuple[Violation, ...] = field(default=(), compare=False)
    #: Metric labels only: they never change what the API server is told, so they do not
    #: take part in equality.
    profile: str = field(default="", compare=False)
    tenant: str = field(default="", compare=False)

    @classmethod
    def allow(cls, reason: str, patch: Patch = (), warnings: tuple[str, ...] = (), *,
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
        return cls(False, "internal-error", message, code=500)

    def as_warning(self) -> Decision:
        """Enforcement ``warn``: the denial becomes warnings and the pod is allowed unchanged."""
        if self.allowed:
            return self
        texts = tuple(f"[gpu-webhook warn-only] {v.message}" for v in self.violations) or (self.message,)
        return replace(self, allowed=True, message="", code=200, warnings=self.warnings + texts,
                       reason=f"warned:{self.reason}")


@lru_cache(maxsize=64)
def _plain_allow(reason: str) -> Decision:
    """One shared allow per reason (decisions are immutable): most pods the webhook sees are
    CPU pods passing untouched, and building the value was a third of that decision's cost."""
    return Decision(True, reason)
