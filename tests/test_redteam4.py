"""Red team 4, DRA: the platform's ResourceClaims (webhook/core/dra.py ``decide_claim``), pure.

The resourceclaim controller takes a claim as a pod's claim when the pod controls it and its
``resource.kubernetes.io/pod-claim-name`` annotation names the pod's claim entry, whatever its
spec; a namespace's ``edit`` role may create claims and patch their owner references. So a
tenant could plant two GPUs (or every GPU of a node, or another profile's device) as the claim of
its own pod charged one, or hand another pod's allocated claim to its pod
(tests/e2e/test_redteam_dra.py shows both on the real API server, scheduler and controller).
Here: the decision, the CEL that sends these writes, and the pod lookup it relies on.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_gpu_webhook.cli.conditions import claim_conditions, configurations
from airflow_gpu_webhook.cluster.tracker import UsageBook
from airflow_gpu_webhook.core.decision import Reason
from airflow_gpu_webhook.core.dra import ALLOCATION_FINALIZER, POD_CLAIM_ANNOTATION, template_spec
from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.server.admission import validate
from airflow_gpu_webhook.server.review import CLAIM, AdmissionRequest

from conftest import airflow_fixture

POD_UID = "0b9c7a52-8f0e-4c2e-9a43-2d8e5f0c6a11"
OTHER_UID = "7d1e3f0a-1c2b-4d5e-8f90-a1b2c3d4e5f6"


def _spec(dra_policy, profile: str) -> dict[str, Any]:
    return copy.deepcopy(template_spec(dra_policy.spec.profiles[profile])["spec"])


def _whole_gpus(count: int) -> dict[str, Any]:
    return {"devices": {"requests": [{"name": "gpu", "exactly": {
        "deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": count}}]}}


def claim(spec: dict[str, Any], pod_claim: str | None = "gpu-platform-0", owner: str | None = POD_UID,
          controller: bool = True) -> dict[str, Any]:
    """A ResourceClaim as the API server sends it; by default shaped as the resourceclaim
    controller makes one for pod POD_UID's ``gpu-platform-0``."""
    metadata: dict[str, Any] = {"name": "c", "namespace": "ml-jobs", "uid": "cl41m"}
    if pod_claim is not None:
        metadata["annotations"] = {POD_CLAIM_ANNOTATION: pod_claim}
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": owner,
                                        "controller": controller, "blockOwnerDeletion": True}]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": metadata, "spec": spec}


def allocated(obj: dict[str, Any]) -> dict[str, Any]:
    """The claim as allocated: the scheduler's finalizer and status.allocation."""
    return {**obj, "metadata": {**obj["metadata"], "finalizers": [ALLOCATION_FINALIZER]},
            "status": {"allocation": {"devices": {"results": [
                {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "dra-a100-0", "device": "gpu-0"}]}},
                       "reservedFor": [{"resource": "pods", "name": "p", "uid": POD_UID}]}}


def judged(dra_policy, obj: dict[str, Any], old: dict[str, Any] | None = None,
           profiles: dict[tuple[str, str], str] | None = None):
    """The /validate step on a write of ``obj``; ``profiles``: the tracked pods' profiles by
    (namespace, uid), None: not tracked."""
    request = AdmissionRequest("u", "UPDATE" if old is not None else "CREATE", "ml-jobs", "", False, obj, old,
                               kind=CLAIM)
    lookup = None if profiles is None else (lambda namespace, uid: profiles.get((namespace, uid)))
    return validate(request, dra_policy, {}, pod_profiles=lookup)


A100 = {("ml-jobs", POD_UID): "a100-dra"}
MIG = {("ml-jobs", POD_UID): "a100-dra-mig-1g.10gb"}


def _cases(dra_policy) -> list[tuple[str, dict[str, Any], dict[str, Any] | None, Any, bool]]:
    a100, mig = _spec(dra_policy, "a100-dra"), _spec(dra_policy, "a100-dra-mig-1g.10gb")
    owned_by_other = claim(a100, owner=OTHER_UID)
    return [
        ("the controller's claim from the pod's template passes", claim(a100), None, A100, True),
        ("... and without tracking", claim(a100), None, None, True),
        ("the other claim profile's template passes without tracking (no pod to read)", claim(mig), None, None, True),
        ("two GPUs for a pod charged one are refused", claim(_whole_gpus(2)), None, A100, False),
        ("... also without tracking", claim(_whole_gpus(2)), None, None, False),
        ("every GPU of a node is refused", claim({"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": "gpu.nvidia.com", "allocationMode": "All"}}]}}), None, A100, False),
        ("a whole GPU for a pod charged a MIG slice is refused", claim(a100), None, MIG, False),
        ("a claim for a pod the webhook does not know is refused (the controller retries)", claim(a100), None, {},
         False),
        ("a pod in another namespace with that uid does not count", claim(a100), None,
         {("airflow", POD_UID): "a100-dra"}, False),
        ("the template with a constraint added is refused", claim({**a100, "devices": {
            **a100["devices"], "constraints": [{"matchAttribute": "gpu.nvidia.com/productName"}]}}), None, A100, False),
        ("a claim no pod controls passes (nobody takes it)", claim(_whole_gpus(2), controller=False), None, A100, True),
        ("a claim without owner passes", claim(_whole_gpus(2), owner=None), None, A100, True),
        ("a claim under another entry name passes", claim(_whole_gpus(2), pod_claim="gpu"), None, A100, True),
        ("an update that hands a platform claim to another pod is refused", owned_by_other, claim(a100), A100, False),
        ("an update that makes the pod the controller is refused", claim(_whole_gpus(2)),
         claim(_whole_gpus(2), controller=False), A100, False),
        ("an update adding the platform annotation is refused", claim(_whole_gpus(2)),
         claim(_whole_gpus(2), pod_claim=None), A100, False),
        ("an update moving the annotation to another entry is refused", claim(a100, pod_claim="gpu-platform-1"),
         claim(a100), A100, False),
        ("an update removing the annotation is refused", claim(a100, pod_claim=None), claim(a100), A100, False),
        ("an update dropping the controlling pod passes (the garbage collector orphaning it)",
         claim(a100, owner=None), claim(a100), A100, True),
        ("an update of the finalizers passes", {**claim(a100), "metadata": {
            **claim(a100)["metadata"], "finalizers": ["resource.kubernetes.io/delete-protection"]}}, claim(a100), A100,
         True),
        ("an update of an unrelated claim's owner passes", claim(a100, pod_claim="gpu", owner=OTHER_UID),
         claim(a100, pod_claim="gpu"), A100, True),
        ("dropping the allocation's finalizer while allocated is refused", claim(a100), allocated(claim(a100)),
         A100, False),
        ("... also alongside other changes", {**claim(a100), "metadata": {**claim(a100)["metadata"],
                                                                           "finalizers": ["example.com/keep"]}},
         allocated(claim(a100)), A100, False),
        ("the controller dropping it after deallocating passes", claim(a100),
         {**allocated(claim(a100)), "status": {}}, A100, True),
        ("the scheduler adding it at allocation passes", allocated(claim(a100)),
         {**allocated(claim(a100)), "metadata": claim(a100)["metadata"]}, A100, True),
        ("an unrelated claim's finalizer is not the platform's business", claim(a100, pod_claim="gpu"),
         allocated(claim(a100, pod_claim="gpu")), A100, True),
    ]


def test_the_platforms_claims_hold_what_the_controller_makes_of_the_pods_template(dra_policy):
    for description, obj, old, profiles, allowed in _cases(dra_policy):
        decision = judged(dra_policy, obj, old, profiles)
        assert decision.allowed is allowed, (description, decision)
        if not allowed:
            assert decision.reason == Reason.PLATFORM_CLAIM, description
            assert decision.violations and "resourceclaim controller" in decision.violations[0].message


def test_the_refusal_names_the_profile_and_its_spec(dra_policy):
    decision = judged(dra_policy, claim(_spec(dra_policy, "a100-dra")), None, MIG)
    message = decision.violations[0].message
    assert f"GPU platform claim gpu-platform-0 of pod {POD_UID}" in message
    assert "the template spec of its profile a100-dra-mig-1g.10gb" in message and "1g.10gb" in message


def test_a_pod_of_a_device_plugin_profile_gets_no_platform_claim(dra_policy):
    decision = judged(dra_policy, claim(_spec(dra_policy, "a100-dra")), None, {("ml-jobs", POD_UID): "a100-80gb"})
    assert not decision.allowed and "the pod's profile a100-80gb gets no DRA claims" in decision.violations[0].message


def test_without_claim_profiles_no_platform_claim_passes(policy, dra_policy):
    decision = judged(policy, claim(_spec(dra_policy, "a100-dra")))
    assert not decision.allowed and "a DRA claim profile (none)" in decision.violations[0].message


def test_enforcement_warn_turns_the_refusal_into_a_warning(dra_policy):
    warn = dra_policy.model_copy(update={"spec": dra_policy.spec.model_copy(update={"enforcement": "warn"})})
    decision = judged(warn, claim(_whole_gpus(2)), None, A100)
    assert decision.allowed and decision.warnings


# ------------------------------------------------------------------ who the claim's pod is
def _dra_pod(dra_policy, profile: str, uid: str, namespace: str = "ml-jobs", phase: str = "Running") -> dict:
    case = airflow_fixture("kpo_h100_count2")
    case["pod"]["metadata"]["labels"].update({"gpu.platform/profile": profile, "gpu.platform/count": "1"})
    pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], namespace, dra_policy).patch))
    pod["metadata"].update(uid=uid, namespace=namespace, name=f"p-{uid[:6]}")
    pod["status"] = {"phase": phase}
    return pod


def test_the_usage_book_knows_each_charged_pods_profile_by_namespace_and_uid(dra_policy):
    book = UsageBook(dra_policy)
    book.apply("ADDED", _dra_pod(dra_policy, "a100-dra-mig-1g.10gb", POD_UID))
    assert book.profile("ml-jobs", POD_UID) == "a100-dra-mig-1g.10gb"
    assert book.profile("airflow", POD_UID) is None, "a uid is looked up in the claim's namespace only"
    assert book.profile("ml-jobs", OTHER_UID) is None
    book.apply("MODIFIED", _dra_pod(dra_policy, "a100-dra-mig-1g.10gb", POD_UID, phase="Succeeded"))
    assert book.profile("ml-jobs", POD_UID) is None, "a finished pod gets no new claim"


# ------------------------------------------------------------------ what the API server sends
_ENV = celpy.Environment()
_PROGRAMS = [_ENV.program(_ENV.compile(c["expression"])) for c in claim_conditions()]


def sent(obj: dict[str, Any], old: dict[str, Any] | None = None) -> bool:
    request = {"operation": "UPDATE" if old is not None else "CREATE"}
    activation = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                  "request": celpy.json_to_cel(request)}
    results = [program.evaluate(activation) for program in _PROGRAMS]
    assert all(isinstance(r, celpy.celtypes.BoolType) for r in results), results   # an error is never a "no"
    return all(bool(r) for r in results)


def test_the_claim_webhook_is_configured_for_every_policy(policy, dra_policy):
    for p in (policy, dra_policy):
        hooks = {w["name"]: w for d in configurations(p) for w in d["webhooks"]}
        claims = hooks["claims.gpu.platform"]
        assert claims["rules"] == [{"apiGroups": ["resource.k8s.io"], "apiVersions": ["v1"],
                                    "operations": ["CREATE", "UPDATE"], "resources": ["resourceclaims"],
                                    "scope": "Namespaced"}]
        assert claims["failurePolicy"] == "Fail" and claims["clientConfig"]["service"]["path"] == "/validate"


def test_only_claims_that_name_a_platform_claim_are_sent(dra_policy):
    a100 = _spec(dra_policy, "a100-dra")
    finalized = {**claim(a100), "metadata": {**claim(a100)["metadata"], "finalizers": ["x"]}}
    assert sent(claim(a100)), "every platform claim the controller creates"
    assert not sent(claim(a100, pod_claim="gpu")), "a user's claim"
    assert not sent(claim(a100, pod_claim=None, owner=None)), "a claim without annotations"
    assert sent(claim(a100, owner=OTHER_UID), claim(a100)), "another owner"
    assert sent(claim(a100), claim(a100, pod_claim=None)), "the annotation added"
    assert sent(claim(a100, pod_claim=None), claim(a100)), "the annotation removed"
    assert not sent(finalized, claim(a100)), "a finalizer added waits on nothing"
    assert not sent(allocated(claim(a100)), {**allocated(claim(a100)), "metadata": claim(a100)["metadata"]}), \
        "the scheduler adding the allocation's finalizer"
    assert not sent(claim(a100), {**allocated(claim(a100)), "status": {}}), "the controller dropping it, deallocated"
    assert sent(claim(a100), allocated(claim(a100))), "the allocation's finalizer dropped while allocated"
    assert not sent(claim(a100, pod_claim="gpu", owner=OTHER_UID), claim(a100, pod_claim="gpu")), "a user's claim"


_annotation = st.sampled_from([None, "gpu-platform-0", "gpu-platform-1", "gpu", "gpu-platform"])
_owner = st.sampled_from([None, (POD_UID, True), (POD_UID, False), (OTHER_UID, True)])
_claims = st.builds(
    lambda annotation, owner, count, state: state(claim(_whole_gpus(count), annotation, *(owner or (None, True)))),
    _annotation, _owner, st.sampled_from([1, 2]),
    st.sampled_from([lambda c: c, allocated, lambda c: {**allocated(c), "status": {}}]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(obj=_claims, old=st.none() | _claims, tracked=st.sampled_from([None, A100, MIG, {}]))
def test_whenever_the_validating_step_would_refuse_a_claim_write_the_conditions_send_it(obj, old, tracked,
                                                                                      dra_policy):
    if not judged(dra_policy, obj, old, tracked).allowed:
        assert sent(obj, old)


# ------------------------------------------------------------------ resourceClaims: allow, no claim profile
def _leftover_claim_pod(entry: dict[str, Any]) -> dict[str, Any]:
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    pod["spec"]["resourceClaims"] = [entry]
    pod["spec"]["containers"][0].setdefault("resources", {})["claims"] = [{"name": entry["name"]}]
    return pod


@pytest.mark.parametrize("entry", [
    pytest.param({"name": "gpu", "resourceClaimTemplateName": "gpu-platform-a100-dra"},
                 id="a template left by a policy that had the profile"),
    pytest.param({"name": "gpu-platform-0", "resourceClaimName": "mine"}, id="the platform's claim name"),
])
def test_with_user_claims_allowed_and_no_claim_profile_a_platform_claim_is_still_sent(entry):
    """Policy: the reference one (no DRA claim profile) with ``resourceClaims: allow``. A template
    ``gpu-platform-<profile>`` can be left in a namespace by an earlier policy that had the profile
    (the reconciler leaves such templates alone, docs/dra.md). The validating step refuses a pod
    claiming from it (or under a ``gpu-platform-`` name) on any policy, but the conditions do not
    sent the pod, so the API server admitted it. Not a GPU by itself: user claims are allowed
    anyway under ``allow``, and the pod must still tolerate the GPU nodes' taint, which is sent and
    refused; but "no pod is admitted to claim from them" did not hold. Now such pods are sent
    (only those: other claims still never wait on the webhook)."""
    from airflow_gpu_webhook.cli.conditions import validating_expression
    from airflow_gpu_webhook.core.validate import decide_validation

    from conftest import policy_with

    policy = policy_with(resourceClaims="allow")
    pod = _leftover_claim_pod(entry)
    assert not decide_validation(pod, "ml-jobs", policy, {}).allowed
    program = _ENV.program(_ENV.compile(validating_expression(policy)))

    def sends(pod: dict[str, Any]) -> bool:
        return bool(program.evaluate({"object": celpy.json_to_cel(pod), "oldObject": celpy.json_to_cel(None),
                                      "request": celpy.json_to_cel({"operation": "CREATE"})}))

    assert sends(pod)
    assert not sends(_leftover_claim_pod({"name": "nic", "resourceClaimTemplateName": "team-nics"}))
