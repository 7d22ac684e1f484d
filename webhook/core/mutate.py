"""The mutating step, pure: a managed pod -> the JSON patch that gives it its GPU profile.

For a managed pod (see :mod:`airflow_gpu_webhook.core.plan`) the patch
- puts ``count`` units of the profile's resource in limits and requests of the target
  container only, replacing any GPU resource set there by hand (with a warning); a DRA
  ``claim`` profile instead gives the pod ``count`` claims from the profile's
  ResourceClaimTemplate and lists them on the target container (:mod:`.dra`);
- merges the profile's tolerations and nodeSelector into the pod's (a nodeSelector key the
  pod already sets to another value is a conflict, and a denial naming both values);
- inserts the driver-validation init container first, with the same GPU resources (or claims);
- gives every other container (sidecars, user init containers) ``NVIDIA_VISIBLE_DEVICES=void``,
  so the container toolkit gives it no GPU (a CUDA image would otherwise get every GPU);
- stamps the accounting labels.
A pod that holds no GPU but can reach a GPU node gets ``void`` on every container when the
policy says ``gpuReachingPods: void`` (else the validating step denies it).
New ephemeral containers of managed or GPU-reaching pods get ``void`` too
(:func:`decide_ephemeral_mutation`).
Every operation is computed against what is there, so a second pass emits nothing.
Every other pod passes untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .decision import UNKNOWN, Decision, Reason, Violation, Whose
from .dra import CLAIM_PREFIX, claim_entries, claim_list_ops, is_platform_entry
from .patch import Op, add, insert, pointer, remove, replace, set_entries
from .plan import GpuPlan, Scope, plan_gpu, scope_of
from .pod import (
    CONTAINER_FIELDS,
    all_containers,
    as_dict,
    as_list,
    container_gpu_resources,
    gpu_containers,
    gpu_entries,
    gpu_quantity,
    labels,
    metadata,
    safe_label_value,
    spec,
)
from .policy import Policy
from .rules import VISIBLE_DEVICES, VOID, gpu_reach, is_void, security_violations
from .tenancy import resolve_tenant

if TYPE_CHECKING:
    from .tenancy import UserInfo

__all__ = ["COUNT_LABEL", "MANAGED_LABEL", "PROFILE_LABEL", "STAMP_PREFIX", "TENANT_LABEL", "VALIDATOR_NAME",
           "Mutation", "decide_ephemeral_mutation", "decide_mutation", "mutation_ops", "unplanned_labels", "void_ops"]

VALIDATOR_NAME = "gpu-driver-validation"
#: Every label under this prefix is the platform's own: the webhook stamps them, and after
#: admission no update may touch one (webhook/core/update.py).
STAMP_PREFIX = "gpu.platform/"
MANAGED_LABEL = STAMP_PREFIX + "managed"
TENANT_LABEL = STAMP_PREFIX + "tenant"
#: Stamped even when the policy reads the profile/count from other label keys, so accounting
#: (kube-state-metrics ``kube_pod_labels``, ``gpu-webhook usage``) always finds them here.
PROFILE_LABEL = STAMP_PREFIX + "profile"
COUNT_LABEL = STAMP_PREFIX + "count"

#: Small, fixed resources for the validator: it loads NVML and libcuda, nothing else.
_VALIDATOR_CPU_MEMORY = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def _desired_resources(plan: GpuPlan) -> dict[str, str]:
    """The extended resources the target container gets: none when the GPUs come as DRA claims."""
    return {} if plan.profile.claims else {plan.profile.resource: str(plan.count)}


def _desired_claims(plan: GpuPlan) -> list[dict[str, Any]]:
    """The target container's (and the validator's) ``resources.claims``: every platform claim."""
    return [{"name": e["name"]} for e in claim_entries(plan.profile_name, plan.count)] if plan.profile.claims else []


def _gives(plan: GpuPlan) -> str:
    what = f"{plan.count} DRA claim(s) of {plan.profile.resource}" if plan.profile.claims else plan.profile.resource
    return what if plan.profile.claims else f"{what}: {plan.count}"


def _is_platform_claim(entry: Any) -> bool:
    """A container's ``resources.claims`` entry naming a platform claim."""
    return isinstance(entry, dict) and str(entry.get("name", "")).startswith(CLAIM_PREFIX)


def _resource_ops(container: Mapping[str, Any], index: int, plan: GpuPlan) -> tuple[list[Op], list[str]]:
    """Make the target container ask for exactly the profile's GPUs: ``count`` of its extended
    resource, or (DRA claims) the platform's claims and no extended GPU resource."""
    desired = _desired_resources(plan)
    claims = _desired_claims(plan)
    base = ("spec", "containers", index, "resources")
    by_hand = container_gpu_resources(container)
    warnings = [
        f"container {container.get('name')!r} asked for {name}: {value} by hand; the profile "
        f"{plan.profile_name} gives it {_gives(plan)} instead"
        for name, value in sorted(by_hand.items())
        if name not in desired or gpu_quantity(value) != plan.count
    ]
    resources = container.get("resources")
    if not isinstance(resources, dict):
        whole = ({"limits": dict(desired), "requests": dict(desired)} if desired else {}) | (
            {"claims": claims} if claims else {})
        return ([add(pointer(*base), whole)] if whole else []), warnings
    ops: list[Op] = []
    for section in ("limits", "requests"):
        current = resources.get(section)
        current = current if isinstance(current, dict) else None
        for name in sorted(by_hand):
            if current is not None and name in current and name not in desired:
                ops.append(remove(pointer(*base, section, name)))
        if desired and (current is None or gpu_quantity(current.get(plan.profile.resource)) != plan.count):
            ops += set_entries(base + (section,), current, desired)
    ops += claim_list_ops(base + ("claims",), resources.get("claims"), claims, _is_platform_claim)
    return ops, warnings


def _pod_claim_ops(pod: Mapping[str, Any], plan: GpuPlan, policy: Policy) -> list[Op]:
    """The pod's platform claims: one per unit from the profile's template (DRA claims), none
    otherwise; every other claim is left to the rules."""
    desired = claim_entries(plan.profile_name, plan.count) if plan.profile.claims else []
    return claim_list_ops(("spec", "resourceClaims"), spec(pod).get("resourceClaims"), desired,
                          lambda entry: is_platform_entry(entry, policy))


def _toleration_ops(pod: Mapping[str, Any], plan: GpuPlan) -> list[Op]:
    """Append the profile's tolerations the pod does not have yet (user ones are kept)."""
    current = spec(pod).get("tolerations")
    existing = [_normal(t) for t in current] if isinstance(current, list) else []
    missing = [t for t in plan.profile.pod_tolerations if _normal(t) not in existing]
    if not missing:
        return []
    if not isinstance(current, list):
        return [add(pointer("spec", "tolerations"), list(missing))]
    return [insert(pointer("spec", "tolerations", "-"), t) for t in missing]


def _normal(toleration: Any) -> dict[str, Any]:
    """A toleration with defaults made explicit and empty fields dropped, for comparison."""
    if not isinstance(toleration, dict):
        return {}
    normal = {k: v for k, v in toleration.items() if v not in (None, "")}
    normal.setdefault("operator", "Equal")
    return normal


def _node_selector(pod: Mapping[str, Any], plan: GpuPlan) -> tuple[list[Op], list[Violation]]:
    current = spec(pod).get("nodeSelector")
    conflicts = [
        Violation(Reason.NODE_SELECTOR_CONFLICT,
                  f"nodeSelector {key} is {current[key]!r} on the pod but profile {plan.profile_name} "
                  f"needs {value!r}; remove it from the pod or choose a profile for that hardware")
        for key, value in plan.profile.nodeSelector.items()
        if isinstance(current, dict) and key in current and current[key] != value
    ]
    if conflicts:
        return [], conflicts
    return set_entries(("spec", "nodeSelector"), current, plan.profile.nodeSelector), []


def _validator_container(plan: GpuPlan, policy: Policy) -> dict[str, Any]:
    """The driver-validation init container: same GPUs as the task, the policy's minimums."""
    check = policy.spec.driverValidation
    resource, count = plan.profile.resource, str(plan.count)
    gpus, claims = _desired_resources(plan), _desired_claims(plan)
    return {
        "name": VALIDATOR_NAME,
        "image": check.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["gpu-webhook"],
        "args": ["validate-driver", "--min-driver-version", check.minDriverVersion,
                 "--min-cuda-version", check.minCudaVersion, "--resource", resource, "--count", count],
        # The termination-log line then names the node, so a bad node is found from the task log.
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "resources": {
            "requests": {**_VALIDATOR_CPU_MEMORY["requests"], **gpus},
            "limits": {**_VALIDATOR_CPU_MEMORY["limits"], **gpus},
            **({"claims": claims} if claims else {}),
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _contains(actual: Any, desired: Any) -> bool:
    """True when ``actual`` has every field of ``desired``, at every depth.

    The API server defaults what the webhook left out (``fieldRef.apiVersion``,
    ``terminationMessagePath``, ...), so a reinvocation must accept extra fields, not equality.
    A list of objects (``env``) may hold extra entries too, in any place, as long as the desired
    ones are there in order: another webhook that appends an env var to every container must not
    make ours replace the validator again and again. A list of scalars (``args``) must match
    item for item.
    """
    if actual == desired:
        return True
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in desired.items())
    if isinstance(desired, list) and isinstance(actual, list):
        if desired and all(isinstance(d, dict) for d in desired):
            rest = iter(actual)
            return all(any(_contains(a, d) for a in rest) for d in desired)
        return len(actual) == len(desired) and all(_contains(a, d) for a, d in zip(actual, desired, strict=True))
    return False


def _is_validator(actual: Any, desired: dict[str, Any]) -> bool:
    """``actual`` is the desired validator: every field of it (:func:`_contains`: the API server's
    defaults and other webhooks' env entries are extra), but no GPU resource beyond the desired
    ones and no ``restartPolicy``. A pod may come with a look-alike validator first: extra GPUs
    on it would escape the stray-GPU rule, and ``restartPolicy: Always`` would make it a sidecar
    holding its GPUs for the pod's whole life."""
    if not isinstance(actual, dict) or not _contains(actual, desired) or actual.get("restartPolicy") is not None:
        return False

    def gpus(container: Mapping[str, Any]) -> set[tuple[str, str]]:
        return {(section, name) for section, name, _ in gpu_entries(container)}

    def claims(container: Mapping[str, Any]) -> list[Any]:
        return as_list(as_dict(container.get("resources")).get("claims"))

    return gpus(actual) == gpus(desired) and claims(actual) == claims(desired)


def _init_container_ops(pod: Mapping[str, Any], desired: dict[str, Any]) -> list[Op]:
    """Exactly one validator, first; user init containers keep their order after it.

    A validator already first is replaced in place when stale (``replace``, never ``insert``,
    which would put a second one beside it); validators anywhere else are removed, last first,
    so the indexes of the ones still to remove do not move.
    """
    current = spec(pod).get("initContainers")
    if not isinstance(current, list) or not current:
        return [add(pointer("spec", "initContainers"), [desired])]
    ours = [i for i, c in enumerate(current) if isinstance(c, dict) and c.get("name") == VALIDATOR_NAME]
    first = ours[:1] == [0]
    ops = [remove(pointer("spec", "initContainers", i)) for i in reversed(ours) if i != 0 or not first]
    if first:
        stale = not _is_validator(current[0], desired)
        return ops + ([replace(pointer("spec", "initContainers", 0), desired)] if stale else [])
    return ops + [insert(pointer("spec", "initContainers", 0), desired)]


def _needs_void(field: str, container: Mapping[str, Any], target: str | None) -> bool:
    """Whether a container must carry ``void``: all but the target and the validator."""
    name = container.get("name")
    return not ((field == "containers" and name == target) or (field == "initContainers" and name == VALIDATOR_NAME))


def void_ops(pod: Mapping[str, Any], target: str | None, fields: tuple[str, ...] | None = None) -> list[Op]:
    """``NVIDIA_VISIBLE_DEVICES=void`` on every container that holds no GPU (all of them when
    ``target`` is None), only in ``fields`` when given. Computed on the pod's own indexes:
    the patch applies them before the validator is inserted."""
    ops = []
    for field, index, container in all_containers(pod, CONTAINER_FIELDS):
        if (fields is not None and field not in fields) or not _needs_void(field, container, target):
            continue
        env = container.get("env")
        if not isinstance(env, list):
            ops.append(add(pointer("spec", field, index, "env"), [{"name": VISIBLE_DEVICES, "value": VOID}]))
        elif not any(is_void(e) for e in env):
            ops.append(insert(pointer("spec", field, index, "env", "-"), {"name": VISIBLE_DEVICES, "value": VOID}))
    return ops


def _label_ops(pod: Mapping[str, Any], plan: GpuPlan) -> list[Op]:
    wanted = {
        MANAGED_LABEL: "true",
        TENANT_LABEL: safe_label_value(plan.tenant),
        PROFILE_LABEL: safe_label_value(plan.profile_name),
        COUNT_LABEL: str(plan.count),
    }
    return set_entries(("metadata", "labels"), metadata(pod).get("labels"), wanted)


class Mutation(NamedTuple):
    """The patch for a planned pod, its warnings, and the conflicts that forbid it."""

    ops: list[Op]
    warnings: list[str]
    conflicts: list[Violation]
    #: The part of ``ops`` that voids the containers without a GPU (:func:`void_ops`), for the
    #: validating step, which reports those apart.
    voids: list[Op]


def mutation_ops(pod: Mapping[str, Any], plan: GpuPlan, policy: Policy) -> Mutation:
    """The patch for a planned pod, its warnings, and conflicts that forbid it."""
    container = spec(pod)["containers"][plan.target_index]
    resource_ops, warnings = _resource_ops(container, plan.target_index, plan)
    selector_ops, conflicts = _node_selector(pod, plan)
    voids = void_ops(pod, policy.spec.targetContainer)
    ops = (_pod_claim_ops(pod, plan, policy) + resource_ops + _toleration_ops(pod, plan) + selector_ops + voids
           + _init_container_ops(pod, _validator_container(plan, policy)) + _label_ops(pod, plan))
    return Mutation(ops, warnings, conflicts, voids)


def unplanned_labels(pod: Mapping[str, Any], namespace: str, policy: Policy,
                     requester: UserInfo | None = None) -> Whose:
    """The metric labels of a managed pod that got no plan: its profile and tenant where they
    name ones of the policy, else ``unknown`` (never the pod's own text: bounded cardinality).

    Only denials come here, so the second look at the labels costs the hot path nothing.
    """
    profile = labels(pod).get(policy.spec.labels.profile)
    return {"profile": profile if isinstance(profile, str) and profile in policy.spec.profiles else UNKNOWN,
            "tenant": resolve_tenant(pod, namespace, policy, requester) or UNKNOWN}


def decide_mutation(pod: Mapping[str, Any], namespace: str, policy: Policy,
                    requester: UserInfo | None = None) -> Decision:
    """Allow with the patch, allow untouched, or deny early with every reason known now.

    Quota is left to the validating step, which sees the final pod exactly once.
    """
    scope = scope_of(pod, policy)
    if scope is not Scope.MANAGED:
        if policy.spec.gpuReachingPods == "void" and not gpu_containers(pod) and gpu_reach(pod, policy):
            ops = void_ops(pod, None)
            return Decision.allow(Reason.VOIDED if ops else Reason.ALREADY_VOIDED, tuple(ops))
        return Decision.allow(scope.reason)
    problems = security_violations(pod, policy, gpu_pod=True)
    plan = plan_gpu(pod, namespace, policy, requester)
    if isinstance(plan, list):
        return Decision.deny(problems + plan, **unplanned_labels(pod, namespace, policy, requester))
    ops, warnings, conflicts, _ = mutation_ops(pod, plan, policy)
    if problems or conflicts:
        # The patch rides along so that enforcement "warn" can still apply it.
        return dataclasses.replace(Decision.deny(problems + conflicts, profile=plan.profile_name, tenant=plan.tenant),
                       patch=tuple(ops), warnings=tuple(warnings))
    return Decision.allow(Reason.MUTATED if ops else Reason.ALREADY_MUTATED, tuple(ops), tuple(warnings),
                          profile=plan.profile_name, tenant=plan.tenant)


def decide_ephemeral_mutation(pod: Mapping[str, Any], policy: Policy) -> Decision:
    """``void`` on the ephemeral containers of a labelled, GPU or GPU-reaching pod (they never
    hold a GPU: the API server refuses resources on them); every other pod passes untouched.
    The same pods as :func:`airflow_gpu_webhook.core.validate.decide_ephemeral_validation` checks."""
    if scope_of(pod, policy) is Scope.UNLABELLED and not gpu_containers(pod) and not gpu_reach(pod, policy):
        return Decision.allow(Reason.CANNOT_REACH_GPU)
    ops = void_ops(pod, None, ("ephemeralContainers",))
    return Decision.allow(Reason.VOIDED if ops else Reason.ALREADY_VOIDED, tuple(ops))
