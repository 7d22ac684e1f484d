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

The claims themselves are made by kube-controller-manager's resourceclaim controller, which
finds a pod's claim again by its controller owner (the pod) and its annotation
``resource.kubernetes.io/pod-claim-name`` (the pod's claim entry) and then uses it *whatever its
spec*. A namespace's ``edit`` role may create claims and patch their owner references, so
:func:`decide_claim` keeps the platform's claims what the controller makes of the template:
a claim that says it is a pod's ``gpu-platform-<n>`` must hold that pod's profile's template
spec, and no update may hand such a claim to another pod.
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
    "ALLOCATION_FINALIZER",
    "CLAIM_PREFIX",
    "MANAGED_BY",
    "POD_CLAIM_ANNOTATION",
    "claim_entries",
    "claim_list_ops",
    "claim_template",
    "controlling_pod",
    "decide_claim",
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
#: What the resourceclaim controller annotates a claim it makes from a pod's template with: the
#: name of the pod's claim entry (kubernetes pkg/controller/resourceclaim, ``findPodResourceClaim``).
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
#: The finalizer the scheduler puts on a claim it allocates; the controller removes it once the
#: claim is deallocated. Without it a deleted claim vanishes at once, and with it its hold on the
#: devices: the scheduler hands them out again while the pod still runs on them.
ALLOCATION_FINALIZER = "resource.kubernetes.io/delete-protection"
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


def _holds_profile_spec(claim_spec: Any, profile: Profile) -> bool:
    """``{"spec": <a ResourceClaimSpec>}`` asks exactly what the profile's template asks, the API
    server's defaults aside (a template's ``spec``, or a claim's spec wrapped so)."""
    return bool(_normal_requests(claim_spec) == _normal_requests(template_spec(profile)))


def template_matches(template: Mapping[str, Any], policy: Policy) -> bool:
    """True when ``template`` is a DRA claim profile's template (by its name) and holds that
    profile's spec, the API server's defaults aside: what :func:`decide_template` lets be
    written there, and what a pod of the profile may be admitted to claim from."""
    name = as_dict(template.get("metadata")).get("name")
    profile_name = template_profiles(policy).get(name) if isinstance(name, str) else None
    return profile_name is not None and _holds_profile_spec(template.get("spec"), policy.spec.profiles[profile_name])


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


def _pod_claim_name(claim: Mapping[str, Any]) -> str | None:
    value = as_dict(as_dict(claim.get("metadata")).get("annotations")).get(POD_CLAIM_ANNOTATION)
    return value if isinstance(value, str) else None


def controlling_pod(claim: Mapping[str, Any]) -> str | None:
    """The uid of the pod that controls the claim (an owner reference ``v1``/``Pod`` with
    ``controller: true``), or None: the only owner the resourceclaim controller and the scheduler
    accept as "the claim is this pod's" (``resourceclaim.IsForPod``, the controller's owner index)."""
    for owner in as_list(as_dict(claim.get("metadata")).get("ownerReferences")):
        owner = as_dict(owner)
        if owner.get("controller") is True and owner.get("kind") == "Pod" and owner.get("apiVersion") == "v1":
            uid = owner.get("uid")
            return uid if isinstance(uid, str) else ""
    return None


def _drops_allocation_finalizer(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    def finalizers(claim: Mapping[str, Any]) -> list[Any]:
        return as_list(as_dict(claim.get("metadata")).get("finalizers"))

    allocated = as_dict(old.get("status")).get("allocation") is not None
    return allocated and ALLOCATION_FINALIZER in finalizers(old) and ALLOCATION_FINALIZER not in finalizers(new)


def _platform(pod_claim: str | None) -> bool:
    return pod_claim is not None and pod_claim.startswith(CLAIM_PREFIX)


def decide_claim(claim: Mapping[str, Any], old: Mapping[str, Any] | None, policy: Policy,
                 owner_profile: str | None = None, tracked: bool = False) -> Decision:
    """A write to a ResourceClaim whose ``pod-claim-name`` annotation names a platform claim
    (``gpu-platform-<n>``), before or after: the resourceclaim controller takes such a claim, when
    the pod controls it, as the pod's claim, whatever its spec.

    - An UPDATE (``old``) may not change the annotation nor give the claim a controlling pod other
      than the one it had (removing it is allowed: no pod takes the claim then). The controller
      sets both when it creates the claim and never changes them; a changed owner hands the claim,
      allocated or not, to another pod, which then shares that pod's devices. Nor may it drop the
      allocation's finalizer (:data:`ALLOCATION_FINALIZER`) while the claim is allocated: the
      controller drops it only after deallocating, and a claim deleted without it frees devices a
      pod still runs on.
    - A CREATE controlled by a pod must hold exactly the template spec of that pod's profile:
      ``owner_profile``, the profile stamped on the pod with that uid in this namespace when the
      webhook tracks the managed pods (``tracked``; None: no such pod known, yet), else (no
      tracking) the template spec of any DRA claim profile of the policy.
    Every other write passes untouched."""
    name = _pod_claim_name(claim)
    if old is not None:
        before, owner = _pod_claim_name(old), controlling_pod(old)
        if not (_platform(before) or _platform(name)):
            return Decision.allow(Reason.NOT_PLATFORM_CLAIM)
        if _drops_allocation_finalizer(old, claim):
            return Decision.deny([Violation(
                Reason.PLATFORM_CLAIM, f"this update removes the finalizer {ALLOCATION_FINALIZER} from an allocated "
                                       f"GPU platform claim; deleted without it, the claim would free devices its pod "
                                       f"still runs on, and the scheduler would hand them to another pod; the "
                                       f"resourceclaim controller removes it once the pod is done")])
        if name == before and controlling_pod(claim) in (None, owner):
            return Decision.allow(Reason.UPDATE)
        return Decision.deny([Violation(
            Reason.PLATFORM_CLAIM, f"this update changes the {POD_CLAIM_ANNOTATION} annotation (was {before!r}, would "
                                   f"be {name!r}) or the controlling pod of a GPU platform claim; the resourceclaim "
                                   f"controller sets both when it makes the claim from the pod's template, and a claim "
                                   f"handed to another pod gives that pod devices it is not charged for; leave them")])
    if not _platform(name):
        return Decision.allow(Reason.NOT_PLATFORM_CLAIM)
    uid = controlling_pod(claim)
    if uid is None:
        return Decision.allow(Reason.NOT_PLATFORM_CLAIM)   # no pod takes a claim it does not control
    profiles = sorted(template_profiles(policy).values())
    if tracked:
        if owner_profile is None:
            return Decision.deny([Violation(
                Reason.PLATFORM_CLAIM, f"the claim says it is GPU platform claim {name} of pod {uid}, but gpu-webhook "
                                       f"knows no managed DRA pod with that uid in this namespace (yet: the "
                                       f"resourceclaim controller retries); only the resourceclaim controller makes "
                                       f"these claims, from the pod's template")])
        candidates = [owner_profile] if owner_profile in profiles else []
        wanted = (f"the template spec of its profile {owner_profile} "
                  f"({template_spec(policy.spec.profiles[owner_profile])['spec']})" if candidates
                  else f"none: the pod's profile {owner_profile} gets no DRA claims")
    else:
        candidates = profiles
        wanted = f"the template spec of a DRA claim profile ({', '.join(profiles) or 'none'})"
    if any(_holds_profile_spec({"spec": claim.get("spec")}, policy.spec.profiles[p]) for p in candidates):
        return Decision.allow(Reason.PLATFORM_CLAIM_OK)
    return Decision.deny([Violation(
        Reason.PLATFORM_CLAIM, f"the claim says it is GPU platform claim {name} of pod {uid}, so the resourceclaim "
                               f"controller would give it to that pod whatever it asks for; its spec must be {wanted}, "
                               f"since the pod is charged one device per claim; only the resourceclaim controller "
                               f"makes these claims, from the pod's template")])
