"""Admission handlers: an AdmissionRequest in, a Decision out. No HTTP, no cluster I/O.

The guard clauses of Kubernetes' own admission plugins come first (not a CREATE, a
subresource: allow untouched; an UPDATE of ``pods/ephemeralcontainers`` goes to its own
decision; a ResourceClaimTemplate goes to :func:`validate_claim_template`, a ResourceClaim to
:func:`validate_claim`, and the mutating step leaves both untouched), then the pure decision,
then the policy's enforcement mode.
A decision that raises becomes a denial with code 500: never an allow by accident.
:func:`review_chain` runs both steps as the API server chains them, for the offline
``gpu-webhook review`` command and for tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import replace

import jsonpatch

from ..core.decision import Decision, Reason, Violation
from ..core.dra import controlling_pod, decide_claim, decide_template
from ..core.mutate import decide_ephemeral_mutation, decide_mutation
from ..core.nodes import NodeOffer
from ..core.policy import Policy
from ..core.quota import ResourceList
from ..core.update import decide_update
from ..core.validate import decide_ephemeral_validation, decide_validation
from .review import CLAIM, POD, AdmissionRequest

__all__ = ["NODES_NOT_SYNCED", "NOT_SYNCED", "PodProfiles", "Usage", "mutate", "review_chain", "validate",
           "validate_claim", "validate_claim_template"]

log = logging.getLogger("gpu_webhook.admission")

#: Per-tenant usage the validating step charges against.
Usage = Mapping[str, ResourceList]
#: (namespace, pod uid) -> the profile of that managed pod, None when not known (tracking only).
PodProfiles = Callable[[str, str], str | None]


#: The subresource that adds containers to a running pod: judged like a new pod's containers.
EPHEMERAL = "ephemeralcontainers"


def _guarded(request: AdmissionRequest, policy: Policy, decide: Callable[[dict], Decision],
             ephemeral: Callable[[dict], Decision],
             on_update: Callable[[dict, dict], Decision] | None = None) -> Decision:
    """CREATE of ``pods``: ``decide`` on the pod; UPDATE of ``pods/ephemeralcontainers``:
    ``ephemeral`` on the pod; UPDATE of ``pods`` (no subresource): ``on_update`` on the old and
    the new pod, for a step that judges updates; anything else: allow untouched."""
    if request.operation == "UPDATE" and request.subresource == EPHEMERAL:
        assert request.object is not None  # parse_review refuses an UPDATE without both pods
        return _judged(request, policy, ephemeral, request.object)
    if request.operation == "UPDATE" and not request.subresource and on_update is not None:
        assert request.object is not None and request.old_object is not None  # parse_review guarantees both
        return _judged(request, policy, on_update, request.old_object, request.object)
    if request.operation != "CREATE":
        return Decision.allow(Reason.NOT_CREATE)
    if request.subresource:
        return Decision.allow(Reason.SUBRESOURCE)
    assert request.object is not None  # parse_review guarantees it for CREATE
    return _judged(request, policy, decide, request.object)


def _judged(request: AdmissionRequest, policy: Policy, decide: Callable[..., Decision], *pods: dict | None) -> Decision:
    try:
        decision = decide(*pods)
    except Exception:  # the API server must get an answer carrying the uid
        log.exception("decision failed uid=%s namespace=%s", request.uid, request.namespace)
        return Decision.error(f"gpu-webhook failed to judge this request (uid {request.uid}); "
                              f"see the webhook's log")
    return decision.as_warning() if policy.spec.enforcement == "warn" else decision


def mutate(request: AdmissionRequest, policy: Policy) -> Decision:
    """The /mutate step: the profile's patch, or an early denial; anything but a pod untouched."""
    if request.kind != POD:
        return Decision.allow(Reason.NOT_POD)
    return _guarded(request, policy, lambda pod: decide_mutation(pod, request.namespace, policy, request.user_info),
                    lambda pod: decide_ephemeral_mutation(pod, policy))


#: The denial for a quota-bound pod while the usage of the cluster is not known yet.
NOT_SYNCED = Violation(Reason.USAGE_NOT_SYNCED, "gpu-webhook has not finished reading the cluster's GPU usage yet, so "
                                                "it cannot check the tenant's quota; this is temporary: retry in a few "
                                                "seconds")


#: The warning for a GPU pod admitted while the node list is not known yet (never a denial).
NODES_NOT_SYNCED = ("gpu-webhook has not finished reading the cluster's nodes, so it did not check that a node "
                    "can hold this pod")


def validate(request: AdmissionRequest, policy: Policy, usage: Usage | None,
             nodes: Sequence[NodeOffer] | None = None, nodes_synced: bool = True,
             templates: Container[tuple[str, str]] | None = None, pod_profiles: PodProfiles | None = None) -> Decision:
    """The /validate step on the final pod: rules, node capacity, claim templates and quota.

    ``usage`` is None while the cluster's usage is not known yet (the pod watch has not
    synced): then a pod that would be charged to a tenant is denied with a retryable message
    (fail closed), and every other pod is judged as usual. ``nodes`` None: no capacity check;
    with ``nodes_synced`` false (the node watch is not there yet), a warning, never a denial.
    ``templates``: the (namespace, name) of the platform's claim templates in place (None: not
    known, no check), webhook/cluster/templates.py.
    A ResourceClaimTemplate: :func:`validate_claim_template`; a ResourceClaim: :func:`validate_claim`
    (``pod_profiles``: the tracked managed pods' profiles, None without tracking).
    """
    if request.kind == CLAIM:
        return validate_claim(request, policy, pod_profiles)
    if request.kind != POD:
        return validate_claim_template(request, policy)

    def decide(pod: dict) -> Decision:
        decision = decide_validation(pod, request.namespace, policy, usage or {}, nodes, request.user_info,
                                     templates)
        if usage is None and decision.allowed and decision.reason == Reason.ADMITTED:
            return Decision.deny([NOT_SYNCED], code=503, profile=decision.profile, tenant=decision.tenant)
        if not nodes_synced and decision.allowed and decision.reason == Reason.ADMITTED:
            return replace(decision, warnings=decision.warnings + (NODES_NOT_SYNCED,))
        return decision

    return _guarded(request, policy, decide, lambda pod: decide_ephemeral_validation(pod, policy),
                    lambda old, new: decide_update(old, new, policy))


def validate_claim_template(request: AdmissionRequest, policy: Policy) -> Decision:
    """A write to a ResourceClaimTemplate: a CREATE, or an UPDATE that changes the spec, stores a
    spec every later claim from the template gets, so it is :func:`decide_template`'s (a platform
    template must hold the policy's spec). Anything else stores no new spec and is allowed
    untouched: a DELETE (the namespace's own loss, recreated by the platform), an UPDATE of the
    metadata only (``resource.k8s.io/v1`` makes the spec immutable, so that is every update today;
    a stale template is replaced by deleting it, never by an update)."""
    if request.operation not in ("CREATE", "UPDATE"):
        return Decision.allow(Reason.NOT_CREATE)
    if request.subresource:
        return Decision.allow(Reason.SUBRESOURCE)
    assert request.object is not None  # parse_review guarantees it for CREATE and UPDATE
    if request.operation == "UPDATE" and request.old_object is not None and \
            request.object.get("spec") == request.old_object.get("spec"):
        return Decision.allow(Reason.UPDATE)
    return _judged(request, policy, lambda template: decide_template(template, policy), request.object)


def validate_claim(request: AdmissionRequest, policy: Policy, pod_profiles: PodProfiles | None = None) -> Decision:
    """A CREATE or UPDATE of a ResourceClaim (the configuration sends those that name a platform
    claim in their ``pod-claim-name`` annotation): :func:`decide_claim`, with the profile of the pod
    that controls the claim when the webhook tracks the managed pods. Anything else passes."""
    if request.operation not in ("CREATE", "UPDATE"):
        return Decision.allow(Reason.NOT_CREATE)
    if request.subresource:
        return Decision.allow(Reason.SUBRESOURCE)
    assert request.object is not None  # parse_review guarantees it for CREATE and UPDATE
    uid = controlling_pod(request.object)
    profile = pod_profiles(request.namespace, uid) if pod_profiles is not None and uid else None
    return _judged(request, policy, lambda claim, old: decide_claim(claim, old, policy, profile,
                                                                    tracked=pod_profiles is not None),
                   request.object, request.old_object)


def review_chain(request: AdmissionRequest, policy: Policy, usage: Usage) -> Decision:
    """Mutation, then validation of the mutated pod, as the API server would chain them.

    The result carries the mutation's patch and both steps' warnings, or the first denial.
    """
    mutated = mutate(request, policy)
    if not mutated.allowed or request.object is None:
        return mutated
    final = jsonpatch.apply_patch(request.object, list(mutated.patch)) if mutated.patch else request.object
    checked = validate(request._replace(object=final), policy, usage)
    if not checked.allowed:
        return checked
    return Decision(True, checked.reason if not mutated.patch else mutated.reason, patch=mutated.patch,
                    warnings=mutated.warnings + checked.warnings)
