"""What the API server sends to the webhooks: the webhook configurations, built from the policy
and from the same rule lists the decisions use, pure.

CPU pods must never wait on the webhook, so the configurations send only what a decision could
deny or patch. A rule added to :mod:`airflow_gpu_webhook.core.rules` without a condition here would be a rule
that never runs; so the CEL ``matchConditions`` are generated from those lists, the shipped
manifests/base/webhook-configurations.yaml is this module's output for manifests/policy.yaml
(``gpu-webhook policy conditions``, and a test fails when they differ), and a property test
evaluates the expressions on hostile pods: whenever a decision would deny, they send.

The validating configuration has a second webhook, for the DRA profiles' ResourceClaimTemplates
(``gpu-platform-<profile>``, :mod:`airflow_gpu_webhook.core.dra`): it is sent the writes of
templates with such a name, except those that store exactly the policy's spec. So the chart,
``gpu-webhook dra templates`` and the webhook's own reconciler can install the right templates
before the webhook answers (a fresh install), while any other spec under such a name is refused,
or blocked while the webhook is down (failurePolicy Fail). A third one is sent the ResourceClaims
that say they are a pod's platform claim (the resourceclaim controller's ``pod-claim-name``
annotation naming a ``gpu-platform-<n>``): every CREATE, and an UPDATE that changes that
annotation or the owner references; the same for every policy.

    >>> print(render(load_policy("manifests/policy.yaml")))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from ..core.dra import ALLOCATION_FINALIZER, CLAIM_PREFIX, POD_CLAIM_ANNOTATION, template_spec
from ..core.mutate import MANAGED_LABEL, STAMP_PREFIX
from ..core.names import GPU_RESOURCE_PREFIX
from ..core.policy import CLAIM_TEMPLATE_PREFIX, Policy, claim_template_name
from ..core.rules import DEVICE_CLASS_RESOURCE_PREFIX, DEVICE_REQUEST_ROOTS, TOOLKIT_ENV

__all__ = ["EXEMPT_LABEL", "WEBHOOK_NAMESPACE", "claim_conditions", "condition_inputs", "configurations",
           "helm_values", "mutating_expression", "render", "template_conditions", "validating_expression"]

#: A namespace carrying this label is never sent (the GPU operator, monitoring agents that
#: tolerate every taint). A tenant with the ``edit`` role cannot label its namespace.
EXEMPT_LABEL = "gpu.platform/exempt"
WEBHOOK_NAMESPACE = "gpu-webhook"
_SYSTEM_NAMESPACES = ("kube-system", WEBHOOK_NAMESPACE)
#: The last path element of the device-request roots: every spelling that cleans to a path under
#: them contains it (cleaning drops ``.``, ``..`` and ``//`` elements, it never joins names).
_DEVICE_REQUEST_NAME = DEVICE_REQUEST_ROOTS[0].rsplit("/", 1)[1]
assert all(root.endswith("/" + _DEVICE_REQUEST_NAME) for root in DEVICE_REQUEST_ROOTS)


#: ``request.subResource`` is left out of the request when empty, and reading a missing key is an
#: error (failurePolicy Fail then refuses the pod): always ask ``has`` first.
_EPHEMERAL = "(has(request.subResource) && request.subResource == 'ephemeralcontainers')"


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _has_label(key: str) -> str:
    return f"(has(object.metadata.labels) && {_quote(key)} in object.metadata.labels)"


def _has_stamp(var: str) -> str:
    return f"(has({var}.metadata.labels) && {var}.metadata.labels.exists(k, k.startsWith({_quote(STAMP_PREFIX)})))"


def _any_container(predicate: str, fields: tuple[str, ...]) -> str:
    return " ||\n  ".join(f"(has(object.spec.{f}) && object.spec.{f}.exists(c, {predicate}))" for f in fields)


def _sends_claims(policy: Policy) -> bool:
    """Pods with DRA claims are judged when user claims are denied, and whenever the policy has claim
    profiles: a claim from a profile's template on a pod the webhook does not manage is refused even
    with ``resourceClaims: allow``. Otherwise only pods with a claim under a ``gpu-platform-`` name
    or template are (:func:`_create`)."""
    return policy.spec.resourceClaims == "deny" or bool(_claim_profiles(policy))


def _container_routes(policy: Policy) -> str:
    """A container asking for a GPU (with user DRA denied, also a DeviceClass's implicit extended
    resource), or setting a toolkit env var or a device-request mount."""
    gpu = f"k.startsWith({_quote(GPU_RESOURCE_PREFIX)})" + (
        f" || k.startsWith({_quote(DEVICE_CLASS_RESOURCE_PREFIX)})" if policy.spec.resourceClaims == "deny" else "")
    parts = [
        f"(has(c.resources) && ((has(c.resources.limits) && c.resources.limits.exists(k, {gpu})) || "
        f"(has(c.resources.requests) && c.resources.requests.exists(k, {gpu}))"
        + (" || has(c.resources.claims)" if _sends_claims(policy) else "") + "))",
        f"(has(c.env) && c.env.exists(e, e.name in {_list(TOOLKIT_ENV)}))",
        f"(has(c.volumeMounts) && c.volumeMounts.exists(m, m.mountPath.contains({_quote(_DEVICE_REQUEST_NAME)})))",
    ]
    return " || ".join(parts)


def _reaching(policy: Policy) -> str:
    """A superset of :func:`airflow_gpu_webhook.core.rules.gpu_reach`: a toleration with no key or a profile's
    taint key, a GPU runtime class, or a node name."""
    tolerations = [t for p in policy.spec.profiles.values() for t in p.tolerations]
    keys = sorted({t.key for t in tolerations if t.key})
    # A profile toleration without a key stands for GPU nodes tainted with any key.
    tolerates = "true" if any(not t.key for t in tolerations) else \
        f"!has(t.key) || t.key == '' || t.key in {_list(keys)}"
    parts = [f"(has(object.spec.tolerations) && object.spec.tolerations.exists(t, {tolerates}))",
             "has(object.spec.nodeName)"]
    if policy.spec.gpuRuntimeClasses:
        parts.append(f"(has(object.spec.runtimeClassName) && object.spec.runtimeClassName in "
                     f"{_list(policy.spec.gpuRuntimeClasses)})")
    return " ||\n  ".join(parts)


def _create(policy: Policy) -> str:
    """A CREATE the validating step could deny: labelled, stamped, a GPU, a toolkit route, DRA,
    or a pod that can reach a GPU node."""
    parts = [_has_label(policy.spec.labels.profile), _has_stamp("object"),
             _any_container(_container_routes(policy), ("containers", "initContainers"))]
    if _sends_claims(policy):
        parts.append("has(object.spec.resourceClaims)")
    else:   # user claims allowed: still the platform's, by name or template (a template an earlier policy left)
        parts.append(f"(has(object.spec.resourceClaims) && object.spec.resourceClaims.exists(c, "
                     f"c.name.startsWith({_quote(CLAIM_PREFIX)}) || (has(c.resourceClaimTemplateName) && "
                     f"c.resourceClaimTemplateName.startsWith({_quote(CLAIM_TEMPLATE_PREFIX)}))))")
    parts.append(_reaching(policy))
    return " ||\n  ".join(parts)


#: An UPDATE that adds tolerations (existing ones cannot be changed, only added to): it may let a
#: pod that holds no GPU reach a GPU node (webhook/core/update.py). Rare, so sent whatever the key.
_TOLERATION_ADDED = ("(has(object.spec.tolerations) && (!has(oldObject.spec.tolerations) || "
                     "object.spec.tolerations.size() > oldObject.spec.tolerations.size()))")


def validating_expression(policy: Policy) -> str:
    """Every ephemeral containers update; an UPDATE of a pod whose old or new labels carry a
    ``gpu.platform/`` key (the accounting stamps cannot be changed) or that adds a toleration;
    a CREATE :func:`_create` sends."""
    return (f"{_EPHEMERAL} ||\n"
            f"(request.operation == 'UPDATE' && ({_has_stamp('object')} || {_has_stamp('oldObject')} ||\n"
            f"  {_TOLERATION_ADDED})) ||\n"
            f"(request.operation == 'CREATE' && (\n  {_create(policy)}))")


def mutating_expression(policy: Policy) -> str:
    """A CREATE with the profile label (and, with ``gpuReachingPods: void``, a pod that can reach a
    GPU node: it gets ``void``); an ephemeral containers update of a managed, GPU or reaching pod."""
    labelled = _has_label(policy.spec.labels.profile)
    create = labelled + (f" ||\n  {_reaching(policy)}" if policy.spec.gpuReachingPods == "void" else "")
    gpu = f"k.startsWith({_quote(GPU_RESOURCE_PREFIX)})"
    holds_gpu = _any_container(f"has(c.resources) && ((has(c.resources.limits) && c.resources.limits.exists(k, {gpu})) "
                               f"|| (has(c.resources.requests) && c.resources.requests.exists(k, {gpu})))",
                               ("containers", "initContainers"))
    ephemeral = " ||\n  ".join([labelled, _has_label(MANAGED_LABEL), holds_gpu,
                                _reaching(policy)])
    return (f"(request.operation == 'CREATE' && (\n  {create})) ||\n"
            f"({_EPHEMERAL} && (\n  {ephemeral}))")


def _literal(value: Any) -> str:
    """A JSON value (maps, lists, strings, whole numbers, booleans) as a CEL literal. The API
    server type-checks literals: a map's values (a list's items) must have one type, so each is
    ``dyn``; the comparison with the object is then made at run time, value by value."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote(k)}: dyn({_literal(v)})" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(f"dyn({_literal(v)})" for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"no CEL literal for {value!r}")


def _claim_profiles(policy: Policy) -> dict[str, dict[str, Any]]:
    """Each DRA ``claim`` profile's template inputs: its device class and selector."""
    return {name: profile.dra.model_dump(include={"deviceClassName", "selector"}, exclude_none=True)
            for name, profile in policy.spec.profiles.items() if profile.claims and profile.dra is not None}


#: A write that stores a spec: every CREATE, and an UPDATE that changes it (``resource.k8s.io/v1``
#: makes the spec immutable, so today none does; a metadata update stores nothing new).
_WRITES_SPEC = ("request.operation == 'CREATE' || !has(object.spec) || !has(oldObject.spec) || "
                "object.spec != oldObject.spec")


def template_conditions(policy: Policy) -> list[dict[str, str]]:
    """The template webhook's matchConditions (all must hold to send): a platform name; a write
    of the spec; and, for a policy with DRA claim profiles, not exactly the policy's template
    under its own name. That last one compares with the spec as the API server stores it (its
    defaults, ``allocationMode: ExactCount`` and ``count: 1``, explicit): any other field, value
    or default left out is sent, and :func:`airflow_gpu_webhook.core.dra.decide_template`
    decides; so a template skipped here is one it would allow."""
    conditions = [
        {"name": "platform-template-name",
         "expression": f"object.metadata.name.startsWith({_quote(CLAIM_TEMPLATE_PREFIX)})"},
        {"name": "writes-the-spec", "expression": _WRITES_SPEC},
    ]
    profiles = policy.spec.profiles
    exact = [f"(object.metadata.name == {_quote(claim_template_name(name))} && "
             f"object.spec.spec == {_literal(template_spec(profiles[name])['spec'])})"
             for name in _claim_profiles(policy)]
    if exact:
        conditions.append({"name": "not-the-policys-template", "expression": (
            "!(has(object.spec) && has(object.spec.spec) && (\n  " + " ||\n  ".join(exact) + "))")})
    return conditions


def _pod_claim(var: str) -> str:
    """The claim's ``pod-claim-name`` annotation, '' when it has none."""
    ann = _quote(POD_CLAIM_ANNOTATION)
    return f"(has({var}.metadata.annotations) && {ann} in {var}.metadata.annotations ? " \
           f"{var}.metadata.annotations[{ann}] : '')"


def claim_conditions() -> list[dict[str, str]]:
    """The claim webhook's matchConditions: a ResourceClaim whose ``pod-claim-name`` annotation
    names a platform claim (before or after the write): every CREATE, and an UPDATE that changes the
    annotation or the owner references, or drops the allocation's finalizer while the claim is
    allocated (the scheduler adds it, and the controller drops it after deallocating: neither
    waits on the webhook); :func:`airflow_gpu_webhook.core.dra.decide_claim` decides."""
    platform = f".startsWith({_quote(CLAIM_PREFIX)})"
    owners = ("has(object.metadata.ownerReferences) != has(oldObject.metadata.ownerReferences) || "
              "(has(object.metadata.ownerReferences) && "
              "object.metadata.ownerReferences != oldObject.metadata.ownerReferences)")
    finalizer = _quote(ALLOCATION_FINALIZER)
    dropped = (f"(has(oldObject.status) && has(oldObject.status.allocation) && has(oldObject.metadata.finalizers) && "
               f"{finalizer} in oldObject.metadata.finalizers && "
               f"!(has(object.metadata.finalizers) && {finalizer} in object.metadata.finalizers))")
    return [{"name": "platform-claim", "expression": (
        f"request.operation == 'CREATE' ? {_pod_claim('object')}{platform} :\n"
        f"({_pod_claim('object')}{platform} || {_pod_claim('oldObject')}{platform}) &&\n"
        f"({_pod_claim('object')} != {_pod_claim('oldObject')} || {owners} ||\n{dropped})")}]


def _rule(operations: list[str], resources: list[str], group: str = "") -> dict[str, Any]:
    return {"apiGroups": [group], "apiVersions": ["v1"], "operations": operations, "resources": resources,
            "scope": "Namespaced"}


_NAMESPACES = {"matchExpressions": [
    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": list(_SYSTEM_NAMESPACES)},
    {"key": EXEMPT_LABEL, "operator": "DoesNotExist"},
]}


def configurations(policy: Policy) -> list[dict[str, Any]]:
    """The MutatingWebhookConfiguration and the ValidatingWebhookConfiguration (pods, the
    platform's ResourceClaimTemplates, and the ResourceClaims made from them).

    Only ``v1`` of ``resource.k8s.io``: with ``matchPolicy: Equivalent`` the API server converts
    a write made through a beta version it serves to ``v1`` and sends that (a rule listing the
    beta too would be sent the beta's shape as is); the DRA profiles need a ``v1`` API server
    (Kubernetes 1.34 or later) anyway."""
    common = {"admissionReviewVersions": ["v1"], "failurePolicy": "Fail", "timeoutSeconds": 5,
              "matchPolicy": "Equivalent", "namespaceSelector": _NAMESPACES}

    def service(path: str) -> dict[str, Any]:
        return {"service": {"name": "gpu-webhook", "namespace": WEBHOOK_NAMESPACE, "path": path, "port": 443}}

    mutating = {
        "name": "mutate.gpu.platform", **common, "clientConfig": service("/mutate"),
        "rules": [_rule(["CREATE"], ["pods"]), _rule(["UPDATE"], ["pods/ephemeralcontainers"])],
        "sideEffects": "None", "reinvocationPolicy": "IfNeeded",
        "matchConditions": [{"name": "gpu-profile-or-reach", "expression": mutating_expression(policy)}],
    }
    validating = {
        "name": "validate.gpu.platform", **common, "clientConfig": service("/validate"),
        "rules": [_rule(["CREATE", "UPDATE"], ["pods"]), _rule(["UPDATE"], ["pods/ephemeralcontainers"])],
        # Quota reservations are written to the ledger, never for dry runs (docs/quota.md).
        "sideEffects": "NoneOnDryRun",
        "matchConditions": [{"name": "gpu-or-device-route", "expression": validating_expression(policy)}],
    }
    templates = {
        "name": "claim-templates.gpu.platform", **common, "clientConfig": service("/validate"),
        "rules": [_rule(["CREATE", "UPDATE"], ["resourceclaimtemplates"], "resource.k8s.io")],
        "sideEffects": "None",
        "matchConditions": template_conditions(policy),
    }
    claims = {
        "name": "claims.gpu.platform", **common, "clientConfig": service("/validate"),
        "rules": [_rule(["CREATE", "UPDATE"], ["resourceclaims"], "resource.k8s.io")],
        "sideEffects": "None",
        "matchConditions": claim_conditions(),
    }
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "gpu-webhook"}, "webhooks": [mutating]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "gpu-webhook"}, "webhooks": [validating, templates, claims]},
    ]


_HEADER = """\
# GENERATED by `gpu-webhook policy conditions manifests/policy.yaml`: do not edit by hand
# (tests/test_conditions.py fails when this file differs). Source: webhook/cli/conditions.py.
#
# Both pod webhooks are scoped so the API server calls them only for pods they must judge: CPU
# pods never wait on the webhook, and an outage of the webhook never blocks them. The CEL
# matchConditions are built from the policy (profile label, the profiles' taint keys,
# gpuRuntimeClasses) and from webhook/core/rules.py's lists (toolkit env vars, device-request
# mounts); a property test checks they send every pod a decision would deny. The third webhook,
# claim-templates.gpu.platform, judges writes of the ResourceClaimTemplates named gpu-platform-*
# (the DRA profiles' templates), except those that store exactly the policy's spec (those need
# no webhook, so they can be installed before it runs). The fourth, claims.gpu.platform, judges
# ResourceClaims that say they are a pod's platform claim (pod-claim-name: gpu-platform-<n>): the
# resourceclaim controller adopts such a claim whatever its spec.
# Namespaces kube-system, gpu-webhook and any labelled gpu.platform/exempt are never sent.
#
# No caBundle here on purpose: an overlay sets it (manifests/overlays/self-managed from the CA of
# `gpu-webhook certs generate`; manifests/overlays/cert-manager through cert-manager's CA
# injector), or `gpu-webhook certs inject`. An empty caBundle in applied manifests would be owned
# by the applier and reset on every (server-side) apply, undoing the injector's work.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the CEL expressions) as ``|`` blocks, so the file reads like source;
    values two webhooks share written out in each, never as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(policy: Policy) -> str:
    """The text of manifests/base/webhook-configurations.yaml for ``policy``."""
    body = "---\n".join(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120) for doc in configurations(policy))
    return _HEADER + body


def condition_inputs(policy: Policy) -> dict[str, Any]:
    """What of the policy the expressions depend on. The Helm chart recomputes it from its policy
    value (charts/airflow-gpu-webhook/templates/_helpers.tpl) and refuses to render conditions
    generated for other inputs, so a policy change never leaves a rule without its condition."""
    keys = sorted({t.key or "" for p in policy.spec.profiles.values() for t in p.tolerations})
    inputs: dict[str, Any] = {
        "profileLabel": policy.spec.labels.profile, "tolerationKeys": keys,
        "gpuRuntimeClasses": list(policy.spec.gpuRuntimeClasses), "resourceClaims": policy.spec.resourceClaims,
        "gpuReachingPods": policy.spec.gpuReachingPods}
    if claims := _claim_profiles(policy):   # absent without DRA claim profiles: older values stay valid
        inputs["claimTemplates"] = claims
    return inputs


def helm_values(policy: Policy) -> str:
    """The chart's ``webhooks.matchConditions`` value for ``policy`` (``-f`` file text); with the
    reference policy, the chart's files/match-conditions.yaml holds the same conditions."""
    mutating, validating = (doc["webhooks"][0]["matchConditions"] for doc in configurations(policy))
    conditions = {"for": condition_inputs(policy), "mutating": mutating, "validating": validating,
                  "templates": template_conditions(policy), "claims": claim_conditions()}
    header = ("# GENERATED by `gpu-webhook policy conditions --helm-values`: the chart's webhooks.matchConditions\n"
              f"# for policy {policy.metadata.name}. Source: webhook/cli/conditions.py.\n")
    return header + yaml.dump({"webhooks": {"matchConditions": conditions}}, Dumper=_Dumper, sort_keys=False,
                              width=120)
