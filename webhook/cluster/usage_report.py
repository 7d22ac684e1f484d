"""`gpu-webhook usage`: each tenant's quota lines, what is used, and the pods holding it.

Pure formatting over a :class:`~airflow_gpu_webhook.cluster.tracker.UsageBook`; the CLI fills the book from one
list of the cluster's managed pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from ..core.policy import Policy
from ..core.quota import format_quantity
from .tracker import UsageBook
from .wiring import TOP_HOLDERS

__all__ = ["TOP_HOLDERS", "usage_table"]


def _charge_text(charge: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{line} {format_quantity(q)}" for line, q in charge.items())


def usage_table(policy: Policy, book: UsageBook, tenant: str | None = None, top: int = TOP_HOLDERS) -> str:
    """One block per tenant: its quota lines (used / limit) and its ``top`` largest holders."""
    usage = book.usage()
    names = [tenant] if tenant else list(policy.spec.tenants)
    blocks = []
    for name in names:
        lines = [f"tenant {name}"]
        for line, limit in policy.spec.tenants[name].quota.items():
            used = usage.get(name, {}).get(line, Decimal(0))
            lines.append(f"  {line:<24} {format_quantity(used):>8} / {format_quantity(limit):<6}"
                         f" ({used / limit:.0%})")
        holders = book.holders(name)
        lines.append(f"  holders ({len(holders)} pods)" + (":" if holders else ": none"))
        lines += [f"    {r.holder}: {_charge_text(r.charge)}" for r in holders[:top]]
        if len(holders) > top:
            lines.append(f"    ... and {len(holders) - top} more")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
