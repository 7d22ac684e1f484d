"""What the webhook decided about one pod: the value every pure decision function returns.

The HTTP layer turns a Decision into an AdmissionReview response; nothing here knows HTTP.
Reasons are short stable codes (bounded, so they are safe as metric labels); messages are
for the person who wrote the DAG.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Decision", "Violation"]

Patch = tuple[dict[str, Any], ...]


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

    @classmethod
    def allow(cls, reason: str, patch: Patch = (), warnings: tuple[str, ...] = ()) -> Decision:
        return cls(True, reason, patch=patch, warnings=warnings)

    @classmethod
    def deny(cls, violations: list[Violation] | tuple[Violation, ...], code: int = 403) -> Decision:
        """A denial listing every violation, so one round trip shows the author all problems."""
        return cls(False, violations[0].reason, "; ".join(v.message for v in violations),
                   code=code, violations=tuple(violations))

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
