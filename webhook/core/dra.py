"""Profiles on Dynamic Resource Allocation, pure: the claims a pod gets, the template they come
from, what they charge, and who may write that template.

A profile with ``dra.form: claim`` gets its GPUs as ResourceClaims. The mutation gives the pod
one ``spec.resourceClaims`` entry per unit (``gpu-platform-0``, ``gpu-platform-1``, ...), each
from the namespace's ResourceClaimTemplate ``gpu-platform-<profile>`` (one device of the
profile's DeviceClass and selector), and lists them in ``resources.claims`` of the target
container and of the driver-validation init container. One claim per unit keeps one template
per profile, whatever the count.

The platform's claims are recognised by name (``gpu-platform-<n>``) *or* by template (a
``gpu-platform-<profile>`` of the policy): either makes an entry the platform's, so a pod cannot
smuggle a profile's template under another name, nor another claim under the platform's name.
Templates are created by the manifests, the chart or ``serve --track-usage``, never by the
mutation (it has no side effects); :func:`decide_template` keeps a namespace's users from
rewriting one, which would hand every later pod more than its charge.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .decision import Decision, Reason, Violation
from .patch import Op, add, insert, pointer, remove
from .pod import as_dict, as_list, spec
from .policy import CLAIM_TEMPLATE_PREFIX, Policy, Profile, claim_template_name, per_policy

__all__ = [
    "CLAIM_PREFIX",
    "MANAGED_BY",
    "claim_entries",
    "claim_list_ops",
    "claim_template",
    "decide_template",
    "desired_templates",
    "dra_capacity_key",
    "dra_request",
    "is_platform_entry",
    "platform_claim_names",
    "template_matches",
    "template_namespaces",
    "template_profiles",
    "template_spec",
]

#: The name of the pod's n-th platform claim is this plus n.
CLAIM_PREFIX = "gpu-platform-"
#: ``app.kubernetes.io/managed-by`` of the templates the platform installs.
MANAGED_BY = "airflow-gpu-webhook"
_REQUEST = "gpu"


@per_policy
def template_profiles(policy: Policy) -> dict[str, str]:
    """Template name -> profile name, for every DRA ``claim`` profile of the policy."""
    return {claim_template_name(name): name for name, profile in policy.spec.profiles.items() if profile.claims}


def is_platform_entry(entry: Any, policy: Policy) -> bool:
    """A ``spec.resourceClaims`` entry that is the platform's: by its name or by its template."""
    if not isinstance(entry, dict):
        return False
    name, template = entry.get("name"), entry.get("resourceClaimTemplateName")
    return ((isinstance(name, str) and name.startswith(CLAIM_PREFIX))
            or (isinstance(template, str) and template.startswith(CLAIM_TEMPLATE_PREFIX)))


def platform_claim_names(pod: Mapping[str, Any], policy: Policy) -> frozenset[str]:
    """The names of the pod's platform claims (what a container lists in ``resources.claims``)."""
    return frozenset(str(e.get("name")) for e in as_list(spec(pod).get("resourceClaims"))
                     if is_platform_entry(e, policy))


def claim_entries(profile_name: str, count: int) -> list[dict[str, Any]]:
    """The pod's platform claims for ``count`` units of a ``claim`` profile."""
    template = claim_template_name(profile_name)
    return [{"name": f"{CLAIM_PREFIX}{i}", "resourceClaimTemplateName": template} for i in range(count)]


def claim_list_ops(parts: tuple[str | int, ...], current: Any, desired: list[dict[str, Any]],
                   ours: Any) -> list[Op]:
    """Operations that make the platform's entries of the list at ``parts`` exactly ``desired``
    (in order, after the others), keeping every other entry; ``ours(entry)`` says which are the
    platform's. Stale ones are removed last first, so the indexes still to remove do not move."""
    if not isinstance(current, list):
        return [add(pointer(*parts), desired)] if desired else []
    mine = [i for i, entry in enumerate(current) if ours(entry)]
    if [current[i] for i in mine] == desired:
        return []
    return ([remove(pointer(*parts, i)) for i in reversed(mine)]
            + [insert(pointer(*parts, "-"), entry) for entry in desired])


def dra_request(pod: Mapping[str, Any], policy: Policy) -> dict[str, Decimal]:
    """The devices the pod's claims from profile templates will get, by the profiles' resource:
    each such claim is one device. Claims from other templates are not the quota's (the rules
    refuse them unless the policy allows user claims)."""
    profiles = template_profiles(policy)
    request: dict[str, Decimal] = {}
    for entry in as_list(spec(pod).get("resourceClaims")):
        name = profiles.get(as_dict(entry).get("resourceClaimTemplateName"))  # type: ignore[arg-type]
        if name is not None:
            resource = policy.spec.profiles[name].resource
            request[resource] = request.get(resource, Decimal(0)) + 1
    return request


def dra_capacity_key(profile_name: str) -> str:
    """The key under which a node offer counts the DRA devices that a profile can get there
    (filled from ResourceSlices by the cluster's device book)."""
    return f"dra.gpu.platform/{profile_name}"


def template_spec(profile: Profile) -> dict[str, Any]:
    """The template's ``spec``: one device of the profile's class, matching its selector."""
    assert profile.dra is not None, "only DRA profiles have a claim template"
    exactly: dict[str, Any] = {"deviceClassName": profile.dra.deviceClassName, "allocationMode": "ExactCount",
                               "count": 1}
    if profile.dra.selector:
        exactly["selectors"] = [{"cel": {"expression": profile.dra.selector}}]
    return {"spec": {"devices": {"requests": [{"name": _REQUEST, "exactly": exactly}]}}}


def claim_template(profile_name: str, profile: Profile, namespace: str) -> dict[str, Any]:
    """The whole ResourceClaimTemplate object for one namespace."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": claim_template_name(profile_name), "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "gpu.platform/profile": profile_name}},
        "spec": template_spec(profile),
    }


_DEFAULTS = {"allocationMode": "ExactCount", "count": 1, "adminAccess": False}


def _normal_requests(template_spec_: Any) -> Any:
    """The device requests with the API server's defaults made explicit, for comparison; the
    rest of the spec (constraints, config) must be absent, as in the platform's template."""
    inner = as_dict(as_dict(template_spec_).get("spec"))
    devices = as_dict(inner.get("devices"))
    extra = {k: v for k, v in inner.items() if k != "devices" and v} | {
        k: v for k, v in devices.items() if k != "requests" and v}
    requests = []
    for request in as_list(devices.get("requests")):
        exactly = as_dict(as_dict(request).get("exactly"))
        normal = {k: v for k, v in {**_DEFAULTS, **exactly}.items() if v not in (None, [], {})}
        if normal.get("adminAccess") is False:
            del normal["adminAccess"]
        requests.append({"name": as_dict(request).get("name"), "exactly": normal,
                         **{k: v for k, v in as_dict(request).items() if k not in ("name", "exactly") and v}})
    return {"requests": requests, **extra}


def template_matches(template: Mapping[str, Any], policy: Policy) -> bool:
    """True when ``template`` is a DRA claim profile's template (by its name) and holds that
    profile's spec, the API server's defaults aside: what :func:`decide_template` lets be
    written there, and what a pod of the profile may be admitted to claim from."""
    name = as_dict(template.get("metadata")).get("name")
    profile_name = template_profiles(policy).get(name) if isinstance(name, str) else None
    return profile_name is not None and _normal_requests(template.get("spec")) == _normal_requests(
        template_spec(policy.spec.profiles[profile_name]))


def template_namespaces(policy: Policy) -> tuple[str, ...]:
    """The namespaces the tenants' match entries name, sorted: where the platform installs its
    claim templates (a tenant matched only by labels, dag_id or requester names none)."""
    return tuple(sorted({m.namespace for t in policy.spec.tenants.values() for m in t.match if m.namespace}))


def desired_templates(policy: Policy) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> the template the platform keeps there: every DRA claim profile's, in
    every namespace of :func:`template_namespaces`. A fresh dict each call (the caller may keep it)."""
    return {(namespace, template): claim_template(profile_name, policy.spec.profiles[profile_name], namespace)
            for template, profile_name in sorted(template_profiles(policy).items())
            for namespace in template_namespaces(policy)}


def decide_template(template: Mapping[str, Any], policy: Policy, deleting: bool = False) -> Decision:
    """A write to a ResourceClaimTemplate named ``gpu-platform-<profile>``: only the policy's own
    spec may be stored there, since every later pod of that profile claims from it and is
    charged one device per claim. Every other template passes untouched; deleting one is the
    namespace's own loss (its pods are then refused), so it is allowed."""
    name = as_dict(template.get("metadata")).get("name")
    if not isinstance(name, str) or not name.startswith(CLAIM_TEMPLATE_PREFIX) or deleting:
        return Decision.allow(Reason.NOT_PLATFORM_TEMPLATE)
    profile_name = template_profiles(policy).get(name)
    if profile_name is None:
        return Decision.deny([Violation(
            Reason.PLATFORM_TEMPLATE, f"ResourceClaimTemplate names starting {CLAIM_TEMPLATE_PREFIX!r} are the GPU "
                                      f"platform's, and {name!r} is no DRA profile's template; choose another name")])
    if not template_matches(template, policy):
        desired = template_spec(policy.spec.profiles[profile_name])
        return Decision.deny([Violation(
            Reason.PLATFORM_TEMPLATE, f"ResourceClaimTemplate {name!r} is the GPU platform's template of profile "
                                      f"{profile_name}; its spec must be the policy's ({desired['spec']}), since "
                                      f"each claim from it is charged as one device")])
    return Decision.allow(Reason.PLATFORM_TEMPLATE_OK)
