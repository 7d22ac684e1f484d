"""The validating step, pure: judge the FINAL pod, after every mutating webhook has run.

Mutation may be reinvoked and other webhooks may change the pod after ours, so enforcement
lives here, as the Kubernetes webhook good practices advise: the security rules, the GPU
rules (a managed pod must look exactly as the mutation left it: re-planning it yields no
operation), and the tenant's quota, charged on the pod as it will really run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .decision import Decision, Violation
from .mutate import MANAGED_LABEL, TENANT_LABEL, VALIDATOR_NAME, mutation_ops, unplanned_labels
from .nodes import NodeOffer, capacity_verdict
from .plan import GpuPlan, Scope, plan_gpu, scope_of
from .pod import GpuContainer, gpu_containers, gpu_quantity, labels
from .policy import Policy
from .quota import ResourceList, charge, exceeded_lines, gpu_request
from .rules import security_violations

if TYPE_CHECKING:
    from .review import UserInfo

__all__ = ["decide_validation"]


def _quantity_violations(containers: list[GpuContainer]) -> list[Violation]:
    return [
        Violation("invalid-quantity", f"container {c.get('name')!r} asks for {name}: {value!r}, "
                                      f"which is not a whole number of devices")
        for _, c, resources in containers for name, value in resources.items()
        if gpu_quantity(value) is None
    ]


def _unmanaged_gpu(scope: Scope, policy: Policy, names: list[str]) -> list[Violation]:
    """A GPU request the webhook does not manage would bypass quota and placement."""
    label = policy.spec.labels.profile
    if scope is Scope.NOT_AIRFLOW:
        return [Violation("not-airflow-gpu-pod",
                          f"the pod carries {label} but was not built by Airflow (no kubernetes_pod_operator=True "
                          f"or kubernetes_executor=True label), and GPUs here are managed only for Airflow pods; "
                          f"launch it from Airflow or remove its GPU resources")]
    if policy.spec.unlabelledGpuPods == "deny":
        return [Violation("unlabelled-gpu-pod",
                          f"{', '.join(names)} asks for a GPU without the {label} label; GPU pods must choose a "
                          f"profile: add the label {label} with one of: {', '.join(policy.spec.profiles)}")]
    return []


def _forged_stamps(pod: Mapping[str, Any]) -> list[Violation]:
    """The accounting stamps on a pod the webhook does not manage: only the mutation sets them."""
    pod_labels = labels(pod)
    return [
        Violation("forged-stamp", f"the pod carries label {key}={pod_labels[key]!r}, but only gpu-webhook stamps it, "
                                  f"on the GPU pods it manages (quota is charged by it); remove the label")
        for key in (MANAGED_LABEL, TENANT_LABEL) if key in pod_labels
    ]


def _stray_gpu(plan: GpuPlan, policy: Policy, containers: list[GpuContainer]) -> list[Violation]:
    """GPU resources on any container but the target (and the validator, checked by re-planning)."""
    target = policy.spec.targetContainer
    return [
        Violation("gpu-outside-target", f"container {c.get('name')!r} asks for {', '.join(sorted(res))}; only "
                                        f"container {target!r} gets the GPU of profile {plan.profile_name}")
        for field, c, res in containers
        if not (field == "containers" and c.get("name") == target)
        and not (field == "initContainers" and c.get("name") == VALIDATOR_NAME)
    ]


def _drift(pod: Mapping[str, Any], plan: GpuPlan, policy: Policy) -> list[Violation]:
    ops, _, conflicts = mutation_ops(pod, plan, policy)
    if conflicts or not ops:
        return conflicts
    paths = ", ".join(op["path"] for op in ops[:3]) + (", ..." if len(ops) > 3 else "")
    return [Violation("not-mutated",
                      f"the pod does not carry what GPU profile {plan.profile_name} requires (differs at {paths}); "
                      f"the mutating webhook was skipped or another webhook changed the pod after it")]


def decide_validation(pod: Mapping[str, Any], namespace: str, policy: Policy,
                      usage: Mapping[str, ResourceList], nodes: Sequence[NodeOffer] | None = None,
                      requester: UserInfo | None = None) -> Decision:
    """Allow or deny the final pod; ``usage`` is what each tenant already holds, ``nodes`` the
    cluster's nodes when they are known (None: no capacity check), ``requester`` who creates it."""
    scope = scope_of(pod, policy)
    containers = gpu_containers(pod)
    problems = security_violations(pod, gpu_pod=scope is not Scope.UNLABELLED or bool(containers))
    problems += _quantity_violations(containers)
    if scope is not Scope.MANAGED:
        if containers:
            problems += _unmanaged_gpu(scope, policy, [f"container {c.get('name')!r}" for _, c, _ in containers])
        problems += _forged_stamps(pod)
        return Decision.deny(problems) if problems else Decision.allow(scope.value)
    plan = plan_gpu(pod, namespace, policy, requester)
    if isinstance(plan, list):
        return Decision.deny(problems + plan, **unplanned_labels(pod, namespace, policy, requester))
    whose = {"profile": plan.profile_name, "tenant": plan.tenant}
    problems += _drift(pod, plan, policy) + _stray_gpu(plan, policy, containers)
    warnings: tuple[str, ...] = ()
    if nodes is not None and not problems:
        no_fit, warning = capacity_verdict(pod, plan.profile.resource, plan.count, nodes, plan.profile.scaleFromZero)
        problems += [no_fit] if no_fit else []
        warnings = (warning,) if warning else ()
    if problems:
        return Decision.deny(problems, **whose)
    quota = policy.spec.tenants[plan.tenant].quota
    requested = charge(gpu_request(containers), plan.profile, policy)
    exceeded = exceeded_lines(plan.tenant, quota, requested, usage.get(plan.tenant, {}))
    if exceeded:
        return Decision.deny([Violation("quota-exceeded", e.message()) for e in exceeded], **whose)
    return Decision.allow("admitted", warnings=warnings, **whose)
