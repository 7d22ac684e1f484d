"""The validating step, pure: judge the FINAL pod, after every mutating webhook has run.

Mutation may be reinvoked and other webhooks may change the pod after ours, so enforcement
lives here, as the Kubernetes webhook good practices advise: the security rules, the GPU
rules (a managed pod must look exactly as the mutation left it: re-planning it yields no
operation, ``NVIDIA_VISIBLE_DEVICES=void`` on every container without a GPU included), the
pods that hold no GPU but can reach one (denied, or checked for ``void``), and the tenant's
quota, charged on the pod as it will really run. :func:`decide_ephemeral_validation` judges
a ``pods/ephemeralcontainers`` update by the same rules.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .decision import Decision, Reason, Violation, Whose
from .dra import dra_capacity_key, dra_request, platform_claim_names
from .mutate import MANAGED_LABEL, TENANT_LABEL, VALIDATOR_NAME, mutation_ops, unplanned_labels, void_ops
from .nodes import NodeOffer, capacity_verdict
from .patch import Op
from .plan import GpuPlan, Scope, plan_gpu, scope_of
from .pod import GpuContainer, all_containers, as_dict, as_list, gpu_containers, gpu_entries, gpu_quantity, labels
from .policy import Policy, claim_template_name
from .quota import ResourceList, add, charge, exceeded_lines, gpu_request
from .rules import VISIBLE_DEVICES, VOID, gpu_reach, security_violations

if TYPE_CHECKING:
    from .tenancy import UserInfo

__all__ = ["decide_ephemeral_validation", "decide_validation", "reaching_violations"]


def _quantity_violations(containers: list[GpuContainer]) -> list[Violation]:
    """Every GPU quantity, in limits and in requests (a bad request hides behind a good limit)."""
    return [
        Violation(Reason.INVALID_QUANTITY, f"container {c.get('name')!r} asks for {name}: {value!r} in {section}, "
                                           f"which is not a whole number of devices; "
                                           f"write the count as plain digits, such as '1'")
        for _, c, _ in containers for section, name, value in gpu_entries(c) if gpu_quantity(value) is None
    ]


def reaching_violations(pod: Mapping[str, Any], policy: Policy, routes: list[str],
                        fields: tuple[str, ...] | None = None) -> list[Violation]:
    """A pod without a GPU that can reach a GPU node: denied, or every container ``void``
    (also used for an UPDATE that adds a toleration, webhook/core/update.py)."""
    if policy.spec.gpuReachingPods == "deny" and fields is None:
        return [Violation(Reason.GPU_REACHING_POD,
                          f"the pod holds no GPU but can reach a GPU node through {'; '.join(routes)}; remove it "
                          f"(GPU nodes are for pods that get a GPU through the {policy.spec.labels.profile} label "
                          f"on a pod built by Airflow)")]
    return _unvoided(void_ops(pod, None, fields), f"can reach a GPU node through {'; '.join(routes)}")


def _unvoided(voids: list[Op], why: str) -> list[Violation]:
    """The containers that ``voids`` (operations of :func:`void_ops`) would still void."""
    paths = [op["path"].removesuffix("/-").removesuffix("/env") for op in voids]
    if not paths:
        return []
    return [Violation(Reason.NOT_VOIDED,
                      f"the pod {why}, so the containers at {', '.join(paths)} must carry env "
                      f"{VISIBLE_DEVICES}={VOID}; the mutating webhook was skipped or another webhook removed it")]


def _unmanaged_gpu(scope: Scope, policy: Policy, names: list[str]) -> list[Violation]:
    """A GPU request the webhook does not manage would bypass quota and placement."""
    label = policy.spec.labels.profile
    if scope is Scope.NOT_AIRFLOW:
        return [Violation(Reason.NOT_AIRFLOW_GPU_POD,
                          f"the pod carries {label} but was not built by Airflow (no kubernetes_pod_operator=True "
                          f"or kubernetes_executor=True label), and GPUs here are managed only for Airflow pods; "
                          f"launch it from Airflow or remove its GPU resources")]
    if policy.spec.unlabelledGpuPods == "deny":
        return [Violation(Reason.UNLABELLED_GPU_POD,
                          f"{', '.join(names)} asks for a GPU without the {label} label; GPU pods must choose a "
                          f"profile: add the label {label} with one of: {', '.join(policy.spec.profiles)}")]
    return []


def _forged_stamps(pod: Mapping[str, Any]) -> list[Violation]:
    """The accounting stamps on a pod the webhook does not manage: only the mutation sets them."""
    pod_labels = labels(pod)
    return [
        Violation(Reason.FORGED_STAMP, f"the pod carries label {key}={pod_labels[key]!r}, but only gpu-webhook stamps "
                                       f"it, on the GPU pods it manages (quota is charged by it); remove the label")
        for key in (MANAGED_LABEL, TENANT_LABEL) if key in pod_labels
    ]


def _stray_gpu(pod: Mapping[str, Any], plan: GpuPlan, policy: Policy,
               containers: list[GpuContainer]) -> list[Violation]:
    """GPU resources or platform claims on any container but the target (and the validator,
    checked by re-planning)."""
    target = policy.spec.targetContainer
    ours = platform_claim_names(pod, policy)
    claimed = [(field, c, {f"claim {n}" for e in as_list(as_dict(c.get("resources")).get("claims"))
                           if (n := as_dict(e).get("name")) in ours})
               for field, _, c in all_containers(pod)] if ours else []   # device-plugin pods: nothing to walk
    return [
        Violation(Reason.GPU_OUTSIDE_TARGET, f"container {c.get('name')!r} asks for {', '.join(sorted(res))}; only "
                                             f"container {target!r} gets the GPU of profile {plan.profile_name}")
        for field, c, res in [*containers, *(h for h in claimed if h[2])]
        if not (field == "containers" and c.get("name") == target)
        and not (field == "initContainers" and c.get("name") == VALIDATOR_NAME)
    ]


def _unmanaged_claims(pod: Mapping[str, Any], policy: Policy) -> list[Violation]:
    """The platform's claims (a profile's template, or a ``gpu-platform-`` name) on a pod the
    webhook does not manage: whatever ``resourceClaims`` says, they are quota-charged GPUs."""
    names = sorted(platform_claim_names(pod, policy))
    return [Violation(Reason.RESOURCE_CLAIMS,
                      f"the pod claims {', '.join(names)} from the GPU platform's templates (or under its claim "
                      f"names), which only the webhook gives, to pods with the {policy.spec.labels.profile} label "
                      f"built by Airflow; remove them and use the label")] if names else []


def _missing_template(plan: GpuPlan, namespace: str, templates: Container[tuple[str, str]] | None) -> list[Violation]:
    """A DRA claim profile's template must be in the pod's namespace, else the pod would sit
    Pending (``templates`` None: not known, no check)."""
    if templates is None or not plan.profile.claims:
        return []
    name = claim_template_name(plan.profile_name)
    if (namespace, name) in templates:
        return []
    return [Violation(Reason.NO_CLAIM_TEMPLATE,
                      f"namespace {namespace!r} has no ResourceClaimTemplate {name!r} for DRA profile "
                      f"{plan.profile_name} (or it differs from the policy's), so the pod would never be scheduled; "
                      f"the platform team installs it (the chart, or gpu-webhook serve --track-usage)")]


def _capacity(pod: Mapping[str, Any], plan: GpuPlan,
              nodes: Sequence[NodeOffer]) -> tuple[list[Violation], tuple[str, ...]]:
    """The node-capacity verdict, where a DRA profile's units are counted from ResourceSlices."""
    profile = plan.profile
    keys = (profile.resource,) if profile.dra is None else (
        (dra_capacity_key(plan.profile_name),) if profile.claims
        else (profile.resource, dra_capacity_key(plan.profile_name)))
    no_fit, warning = capacity_verdict(pod, profile.resource, plan.count, nodes, profile.scaleFromZero, keys)
    return ([no_fit] if no_fit else []), ((warning,) if warning else ())


def _drift(pod: Mapping[str, Any], plan: GpuPlan, policy: Policy) -> list[Violation]:
    mutation = mutation_ops(pod, plan, policy)   # void_ops once: the patch's own void part
    if mutation.conflicts or not mutation.ops:
        return mutation.conflicts
    unvoided = _unvoided(mutation.voids, f"holds GPUs of profile {plan.profile_name}")
    ops = [op for op in mutation.ops if op not in mutation.voids]
    if not ops:
        return unvoided
    paths = ", ".join(op["path"] for op in ops[:3]) + (", ..." if len(ops) > 3 else "")
    return unvoided + [Violation(Reason.NOT_MUTATED,
                      f"the pod does not carry what GPU profile {plan.profile_name} requires (differs at {paths}); "
                      f"the mutating webhook was skipped or another webhook changed the pod after it")]


def decide_validation(pod: Mapping[str, Any], namespace: str, policy: Policy,
                      usage: Mapping[str, ResourceList], nodes: Sequence[NodeOffer] | None = None,
                      requester: UserInfo | None = None,
                      templates: Container[tuple[str, str]] | None = None) -> Decision:
    """Allow or deny the final pod; ``usage`` is what each tenant already holds, ``nodes`` the
    cluster's nodes when they are known (None: no capacity check), ``requester`` who creates it,
    ``templates`` the (namespace, name) of the platform's claim templates in place (None: not known)."""
    scope = scope_of(pod, policy)
    containers = gpu_containers(pod)
    gpu_pod = scope is not Scope.UNLABELLED or bool(containers)
    # Only a pod that holds a GPU is exempt from the reach check: a labelled pod that is not
    # managed (not built by Airflow) gets no GPU and no void, so it must not reach a GPU node.
    routes = [] if scope is Scope.MANAGED or containers else gpu_reach(pod, policy)
    problems = security_violations(pod, policy, gpu_pod, reaching=bool(routes))
    problems += _quantity_violations(containers)
    if scope is not Scope.MANAGED:
        if containers:
            problems += _unmanaged_gpu(scope, policy, [f"container {c.get('name')!r}" for _, c, _ in containers])
        problems += _forged_stamps(pod) + _unmanaged_claims(pod, policy)
        if routes:
            problems += reaching_violations(pod, policy, routes)
        return Decision.deny(problems) if problems else Decision.allow(scope.reason)
    plan = plan_gpu(pod, namespace, policy, requester)
    if isinstance(plan, list):
        return Decision.deny(problems + plan, **unplanned_labels(pod, namespace, policy, requester))
    whose: Whose = {"profile": plan.profile_name, "tenant": plan.tenant}
    problems += (_drift(pod, plan, policy) + _stray_gpu(pod, plan, policy, containers)
                 + _missing_template(plan, namespace, templates))
    warnings: tuple[str, ...] = ()
    if nodes is not None and not problems:
        no_fit, warnings = _capacity(pod, plan, nodes)
        problems += no_fit
    if problems:
        return Decision.deny(problems, **whose)
    quota = policy.spec.tenants[plan.tenant].quota
    requested = charge(add(gpu_request(containers), dra_request(pod, policy)), plan.profile, policy)
    exceeded = exceeded_lines(plan.tenant, quota, requested, usage.get(plan.tenant, {}))
    if exceeded:
        return Decision.deny([Violation(Reason.QUOTA_EXCEEDED, e.message()) for e in exceeded], **whose)
    return Decision.allow(Reason.ADMITTED, warnings=warnings, **whose)


def decide_ephemeral_validation(pod: Mapping[str, Any], policy: Policy) -> Decision:
    """A ``pods/ephemeralcontainers`` update: the pod with its new ephemeral containers, judged
    by the same security rules; on a managed or GPU-reaching pod they must carry ``void``."""
    scope = scope_of(pod, policy)
    gpu_pod = scope is not Scope.UNLABELLED or bool(gpu_containers(pod))
    routes = [] if gpu_pod else gpu_reach(pod, policy)
    problems = security_violations(pod, policy, gpu_pod, reaching=bool(routes))
    if gpu_pod:
        problems += _unvoided(void_ops(pod, None, ("ephemeralContainers",)), "is labelled for a GPU or holds one")
    elif routes:
        problems += reaching_violations(pod, policy, routes, ("ephemeralContainers",))
    return Decision.deny(problems) if problems else Decision.allow(Reason.EPHEMERAL_ADMITTED)
