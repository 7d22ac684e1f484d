"""``gpu-webhook explain PROFILE``: what a task with that GPU label will get, read from the policy.

Nothing is re-derived here. A tiny pod such as Airflow builds (container ``base``, the
``kubernetes_pod_operator`` origin label, the GPU labels) goes through the webhook's own plan
and mutation; the patched pod is then described, and its charge is what the validating step
would count against the tenant. So the answer cannot drift from what the webhook does::

    $ gpu-webhook explain h100-80gb --count 2 --namespace ml-jobs
    profile h100-80gb: 2 x nvidia.com/gpu (maxCount 8; one unit weighs 1 in gpuEquivalent)
    resources   container base: limits and requests nvidia.com/gpu: 2 (every other container:
                NVIDIA_VISIBLE_DEVICES=void)
    ...

A DRA ``claim`` profile is told as the claims the pod gets (their template, its device class and
selector, one device each); an ``extendedResource`` one as the resource above, served by DRA
through its DeviceClass.

Exit codes (:func:`run_explain`): 0 explained, 1 the webhook would refuse such a task (unknown
profile, bad count, no tenant; its message on stderr), 2 bad input (no or invalid policy).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch

from ..core.decision import Decision, Reason
from ..core.dra import is_platform_entry, template_spec
from ..core.mutate import COUNT_LABEL, MANAGED_LABEL, PROFILE_LABEL, TENANT_LABEL, mutation_ops
from ..core.names import GPU_RESOURCE_PREFIX
from ..core.plan import GpuPlan, plan_gpu
from ..core.policy import Policy, PolicyError, load_policy
from ..core.quota import ResourceList, exceeded_lines, format_quantity, pod_charge
from ..core.tenancy import UserInfo, airflow_label_value, service_account_user

__all__ = ["POLICY_ENV", "ExplainError", "explain", "run_explain"]

#: The policy the Airflow side already names (``[gpu_webhook] policy_file``), the default here.
POLICY_ENV = "AIRFLOW__GPU_WEBHOOK__POLICY_FILE"
_INDENT = " " * 12


class ExplainError(ValueError):
    """The webhook would refuse a task with these labels; the message is the webhook's."""


def explain(policy: Policy, profile: str, count: str | int = "1", *, namespace: str | None = None,
            dag_id: str = "", labels: Mapping[str, str] | None = None, requester: UserInfo | None = None) -> str:
    """What a task labelled ``profile`` x ``count`` gets; ``namespace`` None means "not known yet",
    and so does ``requester`` None (who creates the pod, for tenants matched on it)."""
    pod = _airflow_pod(policy, profile, str(count), dag_id, labels or {})
    plan = _plan(pod, namespace, policy, requester)
    ops = mutation_ops(pod, plan, policy).ops
    patched = jsonpatch.apply_patch(pod, ops)
    lines = [_headline(plan, policy), *_resources(patched, plan, namespace, policy), *_placement(patched),
             *_validation(patched), _labels(patched, plan), *_quota(patched, plan, namespace, policy)]
    return "\n".join(lines) + "\n"


def _airflow_pod(policy: Policy, profile: str, count: str, dag_id: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The smallest pod the webhook manages: what KubernetesPodOperator builds, less the noise."""
    pod_labels = {**labels, "kubernetes_pod_operator": "True", policy.spec.labels.profile: profile,
                  policy.spec.labels.count: count}
    if dag_id:
        pod_labels["dag_id"] = airflow_label_value(dag_id)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"labels": pod_labels, "annotations": {"dag_id": dag_id} if dag_id else {}},
            "spec": {"containers": [{"name": policy.spec.targetContainer}]}}


def _plan(pod: dict[str, Any], namespace: str | None, policy: Policy, requester: UserInfo | None) -> GpuPlan:
    """The webhook's plan; without a namespace (or a requester, where a tenant is matched on
    it) the tenant is unknown, not missing."""
    plan = plan_gpu(pod, namespace or "", policy, requester)
    if isinstance(plan, GpuPlan):
        return plan
    unknown = namespace is None or (requester is None and policy.reads_requester)
    problems = [v for v in plan if not unknown or v.reason != Reason.NO_TENANT]
    if problems:
        raise ExplainError(Decision.deny(problems).message)
    labels = pod["metadata"]["labels"]
    name = labels[policy.spec.labels.profile]
    return GpuPlan(name, policy.spec.profiles[name], int(labels[policy.spec.labels.count]), "", 0)


def _headline(plan: GpuPlan, policy: Policy) -> str:
    profile = plan.profile
    each = "s of one device each" if plan.count > 1 else " of one device"
    what = f"{plan.count} DRA claim{each}, counted as {profile.resource}" if profile.claims else \
        f"{plan.count} x {profile.resource}"
    return (f"profile {plan.profile_name}: {what} (maxCount {profile.maxCount}; "
            f"one unit weighs {format_quantity(policy.weight(profile.resource, profile))} in gpuEquivalent)")


def _row(title: str, text: str) -> str:
    return f"{title:<{len(_INDENT)}}{text}"


_OTHERS = "(every other container: NVIDIA_VISIBLE_DEVICES=void)"


def _resources(pod: Mapping[str, Any], plan: GpuPlan, namespace: str | None, policy: Policy) -> list[str]:
    container = pod["spec"]["containers"][plan.target_index]
    if plan.profile.claims:
        return _claims(pod, container, plan, namespace, policy)
    limits = container["resources"]["limits"]
    granted = ", ".join(f"{name}: {value}" for name, value in sorted(limits.items()))
    rows = [_row("resources", f"container {container['name']}: limits and requests {granted} {_OTHERS}")]
    if plan.profile.dra is not None:   # DRA's extendedResource form
        rows.append(_INDENT + f"served by DRA, not a device plugin: the scheduler allocates {plan.profile.resource} "
                              f"from DeviceClass {plan.profile.dra.deviceClassName} (its extendedResourceName), "
                              f"whose selectors choose the devices")
    return rows


def _claims(pod: Mapping[str, Any], container: Mapping[str, Any], plan: GpuPlan, namespace: str | None,
            policy: Policy) -> list[str]:
    """The pod's platform claims, their template and what each gets (one device of the class)."""
    entries = [e for e in pod["spec"]["resourceClaims"] if is_platform_entry(e, policy)]
    names = ", ".join(e["name"] for e in entries)
    templates = ", ".join(sorted({e["resourceClaimTemplateName"] for e in entries}))
    where = f"namespace {namespace}" if namespace is not None else "the pod's namespace"
    exactly = template_spec(plan.profile)["spec"]["devices"]["requests"][0]["exactly"]
    many = len(entries) > 1
    devices = "one device" if exactly["count"] == 1 else f"{exactly['count']} devices"
    rows = [_row("resources", f"{len(entries)} ResourceClaim{'s' if many else ''} ({names}) from ResourceClaimTemplate "
                              f"{templates} of {where} (kept by serve --track-usage, or made by the chart or "
                              f"gpu-webhook dra templates): "
                              f"{'each ' if many else ''}{devices} of DeviceClass {exactly['deviceClassName']}")]
    rows += [_INDENT + f"selector {s['cel']['expression']}" for s in exactly.get("selectors", [])]
    claimed = ", ".join(c["name"] for c in container["resources"]["claims"])
    rows.append(_INDENT + f"container {container['name']}: resources.claims {claimed} {_OTHERS}")
    return rows


def _placement(pod: Mapping[str, Any]) -> list[str]:
    spec = pod["spec"]
    rows = [f"nodeSelector {key}={value}" for key, value in sorted(spec.get("nodeSelector", {}).items())]
    rows += ["toleration " + " ".join(f"{k}={v}" for k, v in t.items()) for t in spec.get("tolerations", [])]
    rows = rows or ["the profile adds no nodeSelector or toleration"]
    return [_row("placement", rows[0]), *(_INDENT + row for row in rows[1:])]


def _validation(pod: Mapping[str, Any]) -> list[str]:
    init = pod["spec"]["initContainers"][0]
    limits = init["resources"]["limits"]
    gpus = ", ".join(f"{k}: {v}" for k, v in sorted(limits.items()) if k.startswith(GPU_RESOURCE_PREFIX))
    if claims := init["resources"].get("claims"):
        gpus = "claims " + ", ".join(c["name"] for c in claims)
    return [_row("validation", f"init container {init['name']} runs first, on the same GPUs ({gpus})"),
            _INDENT + f"image {init['image']}",
            _INDENT + " ".join(init["command"] + init["args"])]


def _labels(pod: Mapping[str, Any], plan: GpuPlan) -> str:
    labels = pod["metadata"]["labels"]
    shown = [f"{key}={labels[key]}" for key in (MANAGED_LABEL, PROFILE_LABEL, COUNT_LABEL)]
    shown.insert(1, f"{TENANT_LABEL}={labels[TENANT_LABEL] if plan.tenant else '<its tenant>'}")
    return _row("labels", " ".join(shown))


def _quota(pod: Mapping[str, Any], plan: GpuPlan, namespace: str | None, policy: Policy) -> list[str]:
    charge = pod_charge(pod, policy)
    if not plan.tenant:
        charged = ", ".join(f"{line} {format_quantity(q)}" for line, q in charge.items())
        return [_row("quota", f"charges {charged} to its tenant; give --namespace (and --dag-id) to see which "
                              f"tenant and its limits")]
    quota = policy.spec.tenants[plan.tenant].quota
    if not quota:
        return [_row("quota", f"tenant {plan.tenant} (namespace {namespace}) has no quota lines: not limited")]
    rows = [_row("quota", f"tenant {plan.tenant} (namespace {namespace}); this pod charges, of each limit:")]
    rows += [_INDENT + f"  {line}: {_charged(charge, line)} of {format_quantity(limit)}"
             for line, limit in quota.items()]
    rows += [_INDENT + f"refused even when the tenant uses nothing: {e.message()}"
             for e in exceeded_lines(plan.tenant, quota, charge, {})]
    return rows


def _charged(charge: ResourceList, line: str) -> str:
    return format_quantity(charge[line]) if line in charge else "0"


# --- command line ---------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-webhook explain", description="what a task with the GPU profile label will get, from the policy")
    parser.add_argument("profile", help="the value of the profile label, e.g. h100-80gb")
    parser.add_argument("--count", default="1", help="the value of the count label (default 1)")
    parser.add_argument("--namespace", help="where the pod runs: picks the tenant and its quota lines")
    parser.add_argument("--dag-id", default="", help="the DAG id, for tenants matched by dag_id prefix")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="another pod label, for tenants matched by pod labels (repeatable)")
    parser.add_argument("--service-account", metavar="NAMESPACE/NAME",
                        help="the ServiceAccount that creates the pod, for tenants matched on it")
    parser.add_argument("--user", help="the username that creates the pod, for tenants matched on it")
    parser.add_argument("--group", action="append", default=[], help="a group of the pod's creator (repeatable)")
    parser.add_argument("--policy", default=os.environ.get(POLICY_ENV),
                        help=f"the policy file (default: ${POLICY_ENV}, the file Airflow's parse-time check reads)")
    return parser


def _fail(message: str, code: int) -> int:
    print(f"gpu-webhook explain: {message}", file=sys.stderr)
    return code


def _requester(args: argparse.Namespace) -> UserInfo | None:
    """Who creates the pod, from ``--service-account`` or ``--user`` and ``--group``; None if not given."""
    if args.service_account is None and args.user is None and not args.group:
        return None
    username = service_account_user(args.service_account) if args.service_account else args.user or ""
    return UserInfo(username, tuple(args.group))


def run_explain(argv: Sequence[str]) -> int:
    """The ``gpu-webhook explain`` command: 0 explained, 1 refused by the webhook, 2 bad input."""
    args = _parser().parse_args(list(argv))
    if not args.policy:
        return _fail(f"no policy file: pass --policy FILE or set {POLICY_ENV}", 2)
    labels = dict(label.partition("=")[::2] for label in args.label)
    if any("=" not in label for label in args.label):
        return _fail("--label takes KEY=VALUE", 2)
    try:
        policy = load_policy(args.policy)
    except PolicyError as err:
        return _fail(f"invalid policy:\n{err}", 2)
    try:
        text = explain(policy, args.profile, args.count, namespace=args.namespace, dag_id=args.dag_id, labels=labels,
                       requester=_requester(args))
    except ExplainError as err:
        return _fail(f"the webhook would refuse this task: {err}", 1)
    sys.stdout.write(text)
    return 0
