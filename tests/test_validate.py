"""The validating step on FINAL pods: what later webhooks changed, GPU rules, and quota."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.core.policy import load_policy, parse_policy
from airflow_gpu_webhook.core.validate import decide_validation

from conftest import airflow_fixture, policy_with

D = Decimal


def final_pod(case_id: str, policy, change: Callable[[dict[str, Any]], Any] = lambda pod: None) -> dict[str, Any]:
    """The pod after our mutation, then after ``change`` (another webhook, or a hand-made pod)."""
    case = airflow_fixture(case_id)
    decision = decide_mutation(case["pod"], case["namespace"], policy)
    pod = jsonpatch.apply_patch(case["pod"], list(decision.patch))
    change(pod)
    return pod


def _base(pod):
    return pod["spec"]["containers"][0]


def _sidecar(pod):
    return pod["spec"]["containers"][1]


CASES = [
    # (description, fixture, namespace, change, usage, allowed, reason, words in the message)
    ("a pod our mutation produced is admitted",
     "kpo_mig_1g_xcom", "airflow", lambda p: None, {}, True, "admitted", ""),
    ("a KubernetesExecutor worker our mutation produced is admitted",
     "executor_gpu_override", "airflow", lambda p: None, {}, True, "admitted", ""),
    ("a toleration removed by a later webhook is caught",
     "kpo_h100_count2", "ml-jobs", lambda p: p["spec"].update(tolerations=[]), {}, False, "not-mutated",
     "/spec/tolerations"),
    ("the validator init container removed by a later webhook is caught",
     "kpo_h100_count2", "ml-jobs", lambda p: p["spec"].update(initContainers=[]), {}, False, "not-mutated",
     "/spec/initContainers"),
    ("a GPU count raised on base after mutation is caught",
     "kpo_h100_count2", "ml-jobs", lambda p: _base(p)["resources"]["limits"].update({"nvidia.com/gpu": "8"}),
     {}, False, "not-mutated", "differs at /spec/containers/0/resources/limits"),
    ("a node selector changed after mutation is a conflict naming both values",
     "kpo_nightly_a100", "airflow",
     lambda p: p["spec"]["nodeSelector"].update({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
     {}, False, "node-selector-conflict", "'NVIDIA-H100-80GB-HBM3' on the pod but profile a100-80gb needs"),
    ("a GPU put on the xcom sidecar after mutation is refused",
     "kpo_mig_1g_xcom", "airflow",
     lambda p: _sidecar(p)["resources"].update(limits={"nvidia.com/mig-1g.10gb": "1"}),
     {}, False, "gpu-outside-target", "container 'airflow-xcom-sidecar' asks for nvidia.com/mig-1g.10gb"),
    ("an env var added by a later webhook is refused",
     "kpo_nightly_a100", "airflow",
     lambda p: _base(p).setdefault("env", []).append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}),
     {}, False, "forbidden-env", "NVIDIA_VISIBLE_DEVICES"),
    ("void removed from the xcom sidecar by a later webhook is caught",
     "kpo_mig_1g_xcom", "airflow", lambda p: _sidecar(p).update(env=[]), {}, False, "not-voided",
     "containers at /spec/containers/1 must carry env NVIDIA_VISIBLE_DEVICES=void"),
    ("void changed to all on a user init container is refused",
     "kpo_existing_scheduling", "airflow",
     lambda p: p["spec"]["initContainers"][1].update(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]),
     {}, False, "forbidden-env", "init container 'fetch-data' sets env NVIDIA_VISIBLE_DEVICES='all'"),
    ("a quota line the pod would exceed is named with requested, used and limit",
     "kpo_h100_count2", "ml-jobs", lambda p: None, {"vision": {"nvidia.com/gpu": D(3), "gpuEquivalent": D(3)}},
     False, "quota-exceeded", "exceeded quota: tenant vision, nvidia.com/gpu, requested: 2, used: 3, limited: 4"),
    ("a pod that fills the quota exactly is admitted",
     "kpo_h100_count2", "ml-jobs", lambda p: None, {"vision": {"nvidia.com/gpu": D(2), "gpuEquivalent": D(2)}},
     True, "admitted", ""),
    ("MIG slices weigh 0.125 in the gpuEquivalent line",
     "kpo_mig_1g_xcom", "airflow", lambda p: None, {"vision": {"gpuEquivalent": D("5.9")}},
     False, "quota-exceeded", "gpuEquivalent, requested: 0.125, used: 5.9, limited: 6"),
    ("the forecasting tenant's usage does not count against vision",
     "kpo_h100_count2", "ml-jobs", lambda p: None, {"forecasting": {"nvidia.com/gpu": D(2)}}, True, "admitted", ""),
    ("a quota of 4 GPUs refuses a 5-GPU pod even with nothing running",
     "kpo_quota_breaker", "ml-jobs", lambda p: None, {}, False, "quota-exceeded", "requested: 5, used: 0, limited: 4"),
]


@pytest.mark.parametrize("description, case_id, namespace, change, usage, allowed, reason, words", CASES,
                         ids=[c[0] for c in CASES])
def test_final_pod(description, case_id, namespace, change, usage, allowed, reason, words, policy):
    decision = decide_validation(final_pod(case_id, policy, change), namespace, policy, usage)
    assert (decision.allowed, decision.reason) == (allowed, reason), decision.message
    assert words in decision.message


UNMANAGED = [
    ("a CPU pod passes", "kpo_cpu_plain", "airflow", {}, True, "unlabelled", ""),
    ("a GPU without the profile label is denied and the profiles are listed", "kpo_unlabelled_gpu", "ml-jobs", {},
     False, "unlabelled-gpu-pod", "add the label gpu.platform/profile with one of: a100-80gb, h100-80gb"),
    ("a GPU without the profile label passes when the policy allows it", "kpo_unlabelled_gpu", "ml-jobs",
     {"unlabelledGpuPods": "allow"}, True, "unlabelled", ""),
    ("NVIDIA_VISIBLE_DEVICES on a CPU pod is denied", "kpo_cpu_env_visible_devices", "ml-jobs", {},
     False, "forbidden-env", "NVIDIA_VISIBLE_DEVICES"),
]


@pytest.mark.parametrize("description, case_id, namespace, changes, allowed, reason, words", UNMANAGED,
                         ids=[c[0] for c in UNMANAGED])
def test_pods_the_webhook_does_not_manage(description, case_id, namespace, changes, allowed, reason, words):
    policy = policy_with(**changes)
    decision = decide_validation(airflow_fixture(case_id)["pod"], namespace, policy, {})
    assert (decision.allowed, decision.reason) == (allowed, reason), decision.message
    assert words in decision.message


FORGED = [
    ("a CPU pod carrying the managed stamp is refused", {"gpu.platform/managed": "true"}, False,
     "label gpu.platform/managed='true', but only gpu-webhook stamps it"),
    ("a CPU pod carrying a tenant stamp is refused", {"gpu.platform/tenant": "vision"}, False,
     "label gpu.platform/tenant='vision'"),
    ("a CPU pod carrying only a profile stamp value is judged as usual", {"gpu.platform/count": "2"}, True, ""),
]


@pytest.mark.parametrize("description, stamps, allowed, words", FORGED, ids=[f[0] for f in FORGED])
def test_forged_stamps_on_a_pod_the_webhook_does_not_manage(description, stamps, allowed, words, policy):
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    pod["metadata"]["labels"].update(stamps)
    decision = decide_validation(pod, "airflow", policy, {})
    assert decision.allowed is allowed and words in decision.message
    assert decision.allowed or decision.reason == "forged-stamp"


def test_the_stamps_of_a_managed_pod_are_its_own(policy):
    assert decide_validation(final_pod("kpo_h100_count2", policy), "ml-jobs", policy, {}).allowed


def _reaching(pod):
    pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    return pod


REACHING = [
    ("a pod tolerating the GPU taint is denied, naming the toleration", {}, lambda p: None, False,
     "gpu-reaching-pod", "can reach a GPU node through toleration {key: nvidia.com/gpu, operator: Exists}"),
    ("in void mode it is denied while its containers lack void", {"gpuReachingPods": "void"}, lambda p: None, False,
     "not-voided", "/spec/containers/0 must carry env NVIDIA_VISIBLE_DEVICES=void"),
    ("in void mode it is admitted with void on every container", {"gpuReachingPods": "void"},
     lambda p: _base(p).update(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]), True, "unlabelled", ""),
    ("a labelled pod not built by Airflow (no GPU, no void) is denied too", {},
     lambda p: (p["metadata"]["labels"].pop("kubernetes_pod_operator"),
                p["metadata"]["labels"].update({"gpu.platform/profile": "a100-80gb"})), False,
     "gpu-reaching-pod", "can reach a GPU node through toleration"),
    ("a privileged container in it is denied whatever the mode", {"gpuReachingPods": "void"},
     lambda p: _base(p).update(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}],
                               securityContext={"privileged": True}), False, "privileged-gpu-pod", "privileged"),
]


@pytest.mark.parametrize("description, changes, change, allowed, reason, words", REACHING, ids=[r[0] for r in REACHING])
def test_pods_that_can_reach_a_gpu_node(description, changes, change, allowed, reason, words):
    pod = _reaching(airflow_fixture("kpo_cpu_plain")["pod"])
    change(pod)
    decision = decide_validation(pod, "airflow", policy_with(**changes), {})
    assert (decision.allowed, decision.reason) == (allowed, reason), decision.message
    assert words in decision.message


def _debug(env=(), **security):
    return {"name": "debug", "image": "busybox", "env": list(env), **({"securityContext": security} if security else {})}


VOID = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}
EPHEMERAL = [
    ("a debug container with void on a managed pod is admitted", "kpo_h100_count2", _debug([VOID]), True,
     "ephemeral-admitted", ""),
    ("a debug container without void on a managed pod is refused", "kpo_h100_count2", _debug(), False, "not-voided",
     "/spec/ephemeralContainers/0"),
    ("NVIDIA_VISIBLE_DEVICES=all in a debug container is refused", "kpo_h100_count2",
     _debug([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]), False, "forbidden-env",
     "ephemeral container 'debug' sets env NVIDIA_VISIBLE_DEVICES='all'"),
    ("a privileged debug container on a managed pod is refused", "kpo_h100_count2", _debug([VOID], privileged=True),
     False, "privileged-gpu-pod", "ephemeral container 'debug' sets securityContext.privileged: true"),
    ("a debug container on a CPU pod needs no void", "kpo_cpu_plain", _debug(), True, "ephemeral-admitted", ""),
]


@pytest.mark.parametrize("description, case_id, debug, allowed, reason, words", EPHEMERAL, ids=[e[0] for e in EPHEMERAL])
def test_ephemeral_containers_are_judged_by_the_same_rules(description, case_id, debug, allowed, reason, words, policy):
    from airflow_gpu_webhook.core.validate import decide_ephemeral_validation

    pod = final_pod(case_id, policy) if case_id != "kpo_cpu_plain" else airflow_fixture(case_id)["pod"]
    pod["spec"]["ephemeralContainers"] = [debug]
    decision = decide_ephemeral_validation(pod, policy)
    assert (decision.allowed, decision.reason) == (allowed, reason), decision.message
    assert words in decision.message


def _not_airflow(pod):
    pod["metadata"]["labels"].pop("kubernetes_pod_operator")
    pod["metadata"]["labels"]["gpu.platform/profile"] = "a100-80gb"
    return pod


DEBUGGED = [
    ("a managed pod", lambda policy: final_pod("kpo_h100_count2", policy), {}),
    ("a labelled pod not built by Airflow", lambda policy: _not_airflow(airflow_fixture("kpo_cpu_plain")["pod"]), {}),
    ("an unlabelled GPU pod", lambda policy: airflow_fixture("kpo_unlabelled_gpu")["pod"], {}),
    ("a reaching pod in void mode", lambda policy: _reaching(airflow_fixture("kpo_cpu_plain")["pod"]),
     {"gpuReachingPods": "void"}),
    ("a CPU pod", lambda policy: airflow_fixture("kpo_cpu_plain")["pod"], {}),
]


@pytest.mark.parametrize("description, make, changes", DEBUGGED, ids=[d[0] for d in DEBUGGED])
def test_a_plain_debug_container_the_mutation_saw_is_admitted_on(description, make, changes):
    from airflow_gpu_webhook.core.mutate import decide_ephemeral_mutation
    from airflow_gpu_webhook.core.validate import decide_ephemeral_validation

    policy = policy_with(**changes)
    pod = make(policy)
    pod["spec"]["ephemeralContainers"] = [_debug()]
    pod = jsonpatch.apply_patch(pod, list(decide_ephemeral_mutation(pod, policy).patch))
    decision = decide_ephemeral_validation(pod, policy)
    assert decision.allowed, decision.message


def test_ld_preload_is_only_refused_on_gpu_pods(policy):
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    _base(pod)["env"] = [{"name": "LD_PRELOAD", "value": "/usr/lib/libjemalloc.so"}]
    assert decide_validation(pod, "airflow", policy, {}).allowed
    gpu = final_pod("kpo_nightly_a100", policy, lambda p: _base(p)["env"].append(
        {"name": "LD_PRELOAD", "value": "/tmp/x.so"}))
    assert decide_validation(gpu, "airflow", policy, {}).reason == "forbidden-env"


def test_a_labelled_gpu_pod_not_built_by_airflow_is_refused(policy):
    pod = final_pod("kpo_h100_count2", policy, lambda p: p["metadata"]["labels"].pop("kubernetes_pod_operator"))
    decision = decide_validation(pod, "ml-jobs", policy, {})
    assert (decision.allowed, decision.reason) == (False, "not-airflow-gpu-pod")
    assert "was not built by Airflow" in decision.message


@pytest.mark.parametrize("quantity", ["500m", "NaN", "Infinity", "1e3", "2.0", "-1", 2.5, True])
def test_a_gpu_quantity_that_is_not_a_canonical_whole_number_is_refused(quantity):
    pod = airflow_fixture("kpo_unlabelled_gpu")["pod"]
    _base(pod)["resources"]["limits"]["nvidia.com/gpu"] = quantity
    decision = decide_validation(pod, "ml-jobs", policy_with(unlabelledGpuPods="allow"), {})
    assert (decision.allowed, decision.reason) == (False, "invalid-quantity")
    assert f"container 'base' asks for nvidia.com/gpu: {quantity!r} in limits, which is not" in decision.message


def test_every_violation_is_reported_in_one_denial(policy):
    pod = final_pod("kpo_nightly_a100", policy, lambda p: (
        _base(p)["env"].append({"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"}),
        _base(p).update(securityContext={"privileged": True})))
    decision = decide_validation(pod, "airflow", policy, {})
    assert [v.reason for v in decision.violations] == ["forbidden-env", "privileged-gpu-pod"]
    assert "NVIDIA_DRIVER_CAPABILITIES" in decision.message and "privileged" in decision.message


def test_a_pod_no_node_can_hold_is_refused_and_a_fitting_one_admitted(policy):
    from airflow_gpu_webhook.core.nodes import NodeOffer

    four_gpu_h100 = NodeOffer("h100-0", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                              ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},),
                              {"nvidia.com/gpu": 4})
    pod = final_pod("kpo_h100_count2", policy)
    assert decide_validation(pod, "ml-jobs", policy, {}, [four_gpu_h100]).reason == "admitted"
    four_gpu_h100 = NodeOffer(four_gpu_h100.name, four_gpu_h100.labels, four_gpu_h100.taints, {"nvidia.com/gpu": 1})
    decision = decide_validation(pod, "ml-jobs", policy, {}, [four_gpu_h100])
    assert (decision.allowed, decision.reason) == (False, "no-node-fits")
    assert "the largest offers 1" in decision.message
    assert decide_validation(pod, "ml-jobs", policy, {}, None).reason == "admitted", "no nodes known: no check"


# ------------------------------------------------------------------------------ DRA claim profiles
DRA_POLICY_FILE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "policy-dra.yaml"
MIG_DRA = "a100-dra-mig-1g.10gb"
MIG_TEMPLATE = ("airflow", "gpu-platform-" + MIG_DRA)


def dra_pod(change: Callable[[dict[str, Any]], Any] = lambda pod: None, count: str = "2",
            profile: str = MIG_DRA) -> dict[str, Any]:
    """kpo_mig_1g_xcom (tenant vision, namespace airflow) relabelled to a DRA profile, mutated, then changed."""
    policy = load_policy(DRA_POLICY_FILE)

    def relabel(pod: dict[str, Any]) -> dict[str, Any]:
        pod["metadata"]["labels"].update({"gpu.platform/profile": profile, "gpu.platform/count": count})
        return pod

    case = airflow_fixture("kpo_mig_1g_xcom")
    pod = relabel(case["pod"])
    pod = jsonpatch.apply_patch(pod, list(decide_mutation(pod, "airflow", policy).patch))
    change(pod)
    return pod


def _add_claim(pod: dict[str, Any], entry: dict[str, Any], on: str | None = None) -> None:
    pod["spec"]["resourceClaims"].append(entry)
    if on is not None:
        holder = next(c for c in pod["spec"]["containers"] if c["name"] == on)
        holder.setdefault("resources", {}).setdefault("claims", []).append({"name": entry["name"]})


DRA_CASES = [
    # (description, pod change, templates known, usage of tenant vision, allowed, reason, words)
    ("a DRA pod our mutation produced is admitted", lambda p: None, {MIG_TEMPLATE}, {}, True, "admitted", ""),
    ("templates not known yet: no template check", lambda p: None, None, {}, True, "admitted", ""),
    ("no template in the namespace: refused, never left Pending", lambda p: None, set(), {}, False,
     "no-claim-template", "no ResourceClaimTemplate 'gpu-platform-a100-dra-mig-1g.10gb'"),
    ("the template is in another namespace only", lambda p: None, {("ml-jobs", MIG_TEMPLATE[1])}, {}, False,
     "no-claim-template", "namespace 'airflow'"),
    ("a third platform claim added after the mutation",
     lambda p: _add_claim(p, {"name": "gpu-platform-2", "resourceClaimTemplateName": MIG_TEMPLATE[1]}, "base"),
     {MIG_TEMPLATE}, {}, False, "not-mutated", "/spec/resourceClaims"),
    ("the sidecar lists a platform claim", lambda p: p["spec"]["containers"][1].setdefault("resources", {}).update(
        claims=[{"name": "gpu-platform-0"}]), {MIG_TEMPLATE}, {}, False, "gpu-outside-target",
     "'airflow-xcom-sidecar' asks for claim gpu-platform-0"),
    ("a user claim beside the platform's", lambda p: _add_claim(p, {"name": "more", "resourceClaimName": "big"}, "base"),
     {MIG_TEMPLATE}, {}, False, "resource-claims", "spec.resourceClaims"),
    ("a platform claim pointed at a claim of the tenant's own",
     lambda p: p["spec"]["resourceClaims"][0].update(resourceClaimName="mine", resourceClaimTemplateName=None),
     {MIG_TEMPLATE}, {}, False, "not-mutated", ""),
    ("the claims of base removed by a later webhook",
     lambda p: p["spec"]["containers"][0]["resources"].pop("claims"), {MIG_TEMPLATE}, {}, False, "not-mutated",
     "/spec/containers/0/resources/claims"),
    ("quota counts the claims: 13 of 14 MIG slices used, 2 more asked",
     lambda p: None, {MIG_TEMPLATE}, {"nvidia.com/mig-1g.10gb": D(13)}, False, "quota-exceeded",
     "nvidia.com/mig-1g.10gb, requested: 2, used: 13, limited: 14"),
    ("quota counts the claims: 12 of 14 used, 2 more fit", lambda p: None, {MIG_TEMPLATE},
     {"nvidia.com/mig-1g.10gb": D(12)}, True, "admitted", ""),
]


@pytest.mark.parametrize(("description", "change", "templates", "usage", "allowed", "reason", "words"), DRA_CASES,
                         ids=[c[0] for c in DRA_CASES])
def test_a_final_dra_pod(description, change, templates, usage, allowed, reason, words):
    policy = load_policy(DRA_POLICY_FILE)
    decision = decide_validation(dra_pod(change), "airflow", policy, {"vision": usage}, templates=templates)
    assert (decision.allowed, decision.reason) == (allowed, reason), decision.message
    assert words in decision.message


UNMANAGED_CLAIMS = [
    # (description, resourceClaims policy, claims, allowed)
    ("a profile template on an unlabelled pod", "deny",
     [{"name": "gpu", "resourceClaimTemplateName": MIG_TEMPLATE[1]}], False),
    ("a profile template on an unlabelled pod, user claims allowed", "allow",
     [{"name": "gpu", "resourceClaimTemplateName": MIG_TEMPLATE[1]}], False),
    ("a platform claim name on an unlabelled pod, user claims allowed", "allow",
     [{"name": "gpu-platform-0", "resourceClaimName": "mine"}], False),
    ("a user's own claim, user claims allowed", "allow", [{"name": "scratch", "resourceClaimName": "mine"}], True),
    ("a user's own claim, user claims denied", "deny", [{"name": "scratch", "resourceClaimName": "mine"}], False),
]


@pytest.mark.parametrize(("description", "mode", "claims", "allowed"), UNMANAGED_CLAIMS,
                         ids=[c[0] for c in UNMANAGED_CLAIMS])
def test_only_the_webhook_gives_the_platforms_claims(description, mode, claims, allowed):
    import yaml

    data = yaml.safe_load(DRA_POLICY_FILE.read_text())
    data["spec"]["resourceClaims"] = mode
    policy = parse_policy(data, "dra")
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    pod["spec"]["resourceClaims"] = claims
    pod["spec"]["containers"][0].setdefault("resources", {})["claims"] = [{"name": c["name"]} for c in claims]
    decision = decide_validation(pod, "airflow", policy, {})
    assert decision.allowed is allowed, decision.message
    if not allowed:
        assert decision.reason == "resource-claims"


def test_dra_capacity_is_read_under_the_profiles_own_key():
    from airflow_gpu_webhook.core.dra import dra_capacity_key
    from airflow_gpu_webhook.core.nodes import NodeOffer

    policy = load_policy(DRA_POLICY_FILE)
    taint = ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},)
    pod = dra_pod(count="2")

    def offer(counts: dict[str, int]) -> list[NodeOffer]:
        return [NodeOffer("dra-a100-0", {}, taint, counts)]

    def verdict(counts: dict[str, int]) -> str:
        return decide_validation(pod, "airflow", policy, {}, offer(counts), templates={MIG_TEMPLATE}).reason

    assert verdict({dra_capacity_key(MIG_DRA): 7}) == "admitted"
    assert verdict({dra_capacity_key(MIG_DRA): 1}) == "no-node-fits"
    assert verdict({"nvidia.com/mig-1g.10gb": 7}) == "no-node-fits", "device-plugin slices do not serve claims"
    er_pod = dra_pod(count="1", profile="a100-mig-1g.10gb-er")
    for counts, reason in (({dra_capacity_key("a100-mig-1g.10gb-er"): 1}, "admitted"),
                           ({"nvidia.com/mig-1g.10gb": 1}, "admitted"), ({}, "no-node-fits")):
        assert decide_validation(er_pod, "airflow", policy, {}, offer(counts)).reason == reason, counts
