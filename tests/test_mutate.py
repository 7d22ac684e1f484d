"""The mutating step on pods built by Airflow: golden patches, behaviour tables, properties."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_gpu_webhook.core.mutate import VALIDATOR_NAME, decide_mutation
from airflow_gpu_webhook.core.policy import load_policy

from conftest import POLICY_FILE, airflow_fixture, airflow_fixture_ids

A100_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
VOID_ENV = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}


def mutated(case_id: str, policy) -> tuple[dict[str, Any], Any]:
    """The fixture's pod after the mutation's patch, and the decision."""
    case = airflow_fixture(case_id)
    decision = decide_mutation(case["pod"], case["namespace"], policy)
    return jsonpatch.apply_patch(case["pod"], list(decision.patch)), decision


def container(pod: dict[str, Any], name: str, field: str = "containers") -> dict[str, Any]:
    return next(c for c in pod["spec"][field] if c["name"] == name)


@pytest.mark.parametrize("case_id", airflow_fixture_ids())
def test_mutation_matches_its_golden_file(case_id, policy, golden):
    case = airflow_fixture(case_id)
    decision = decide_mutation(case["pod"], case["namespace"], policy)
    golden(f"mutate/{case_id}", {
        "allowed": decision.allowed, "reason": decision.reason, "message": decision.message,
        "warnings": list(decision.warnings), "patch": list(decision.patch) if decision.allowed else [],
    })


def test_the_gpu_goes_on_base_only_and_keeps_the_authors_cpu_and_memory(policy):
    pod, decision = mutated("kpo_mig_1g_xcom", policy)
    base = container(pod, "base")
    assert decision.allowed and decision.reason == "mutated"
    assert base["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/mig-1g.10gb": "1"}
    assert base["resources"]["requests"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/mig-1g.10gb": "1"}
    sidecar = container(pod, "airflow-xcom-sidecar")
    assert not any(k.startswith("nvidia.com/") for k in sidecar["resources"].get("requests", {}))
    assert "limits" not in sidecar["resources"]


def test_the_validator_runs_first_with_the_tasks_gpus_and_the_policys_minimums(policy):
    pod, _ = mutated("kpo_h100_count2", policy)
    validator = pod["spec"]["initContainers"][0]
    assert validator["name"] == VALIDATOR_NAME
    assert validator["image"] == policy.spec.driverValidation.image
    assert validator["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert validator["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert validator["args"] == ["validate-driver", "--min-driver-version", "535.104.05", "--min-cuda-version",
                                 "12.2", "--resource", "nvidia.com/gpu", "--count", "2"]


def test_user_init_containers_tolerations_selectors_and_affinity_are_kept(policy):
    case = airflow_fixture("kpo_existing_scheduling")
    pod, decision = mutated("kpo_existing_scheduling", policy)
    original = case["pod"]["spec"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [VALIDATOR_NAME, "fetch-data"]
    assert pod["spec"]["initContainers"][1] == {**original["initContainers"][0], "env": [VOID_ENV]}
    assert pod["spec"]["tolerations"] == original["tolerations"] + [A100_TOLERATION]
    assert pod["spec"]["nodeSelector"] == {**original["nodeSelector"],
                                           "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["spec"]["affinity"] == original["affinity"] and original["affinity"]
    assert decision.warnings == ()


def test_accounting_labels_are_stamped(policy):
    pod, _ = mutated("kpo_podlabel_tenant", policy)
    labels = pod["metadata"]["labels"]
    assert labels["gpu.platform/managed"] == "true"
    assert labels["gpu.platform/tenant"] == "vision"
    assert labels["gpu.platform/profile"] == "a100-mig-1g.10gb"
    assert labels["gpu.platform/count"] == "1"
    assert labels["team"] == "vision"


def test_every_container_without_a_gpu_gets_void_and_the_gpu_holders_do_not(policy):
    pod, _ = mutated("kpo_mig_1g_xcom", policy)
    assert container(pod, "airflow-xcom-sidecar")["env"] == [VOID_ENV]
    assert VOID_ENV not in container(pod, "base").get("env", [])
    assert VOID_ENV not in container(pod, VALIDATOR_NAME, "initContainers")["env"]


def test_a_gpu_reaching_pod_gets_void_everywhere_when_the_policy_says_void():
    from conftest import policy_with

    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    pod["spec"]["tolerations"] = [{"operator": "Exists"}]
    assert decide_mutation(pod, "airflow", policy_with(gpuReachingPods="deny")).patch == ()
    decision = decide_mutation(pod, "airflow", policy_with(gpuReachingPods="void"))
    patched = jsonpatch.apply_patch(pod, list(decision.patch))
    assert decision.reason == "voided" and all(VOID_ENV in c["env"] for c in patched["spec"]["containers"])
    assert decide_mutation(patched, "airflow", policy_with(gpuReachingPods="void")).patch == ()


def test_a_gpu_set_by_hand_is_replaced_by_the_profiles_with_a_warning(policy):
    pod, decision = mutated("kpo_manual_gpu_mismatch", policy)
    limits = container(pod, "base")["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and limits["nvidia.com/mig-1g.10gb"] == "1"
    assert decision.warnings == ("container 'base' asked for nvidia.com/gpu: 1 by hand; the profile "
                                 "a100-mig-1g.10gb gives it nvidia.com/mig-1g.10gb: 1 instead",)


@pytest.mark.parametrize("case_id, reason", [
    ("kpo_cpu_plain", "unlabelled"),
    ("executor_cpu", "unlabelled"),
    ("kpo_unlabelled_gpu", "unlabelled"),
])
def test_pods_without_the_profile_label_pass_untouched(case_id, reason, policy):
    case = airflow_fixture(case_id)
    decision = decide_mutation(case["pod"], case["namespace"], policy)
    assert (decision.allowed, decision.reason, decision.patch) == (True, reason, ())


def test_a_labelled_pod_not_built_by_airflow_passes_untouched(policy):
    pod = airflow_fixture("kpo_h100_count2")["pod"]
    del pod["metadata"]["labels"]["kubernetes_pod_operator"]
    decision = decide_mutation(pod, "ml-jobs", policy)
    assert (decision.allowed, decision.reason, decision.patch) == (True, "not-airflow", ())


@pytest.mark.parametrize("case_id, reason, words", [
    ("kpo_unknown_profile", "unknown-profile", "known profiles: a100-80gb, h100-80gb"),
    ("kpo_count_zero", "invalid-count", "must be a positive whole number (1 to 8"),
    ("kpo_count_not_int", "invalid-count", "'two' must be a positive whole number"),
    ("kpo_count_over_max", "count-over-max", "exceeds maxCount 2 of profile a100-mig-3g.40gb"),
    ("kpo_no_tenant", "no-tenant", "no GPU tenant matches namespace 'analytics', dag_id 'adhoc_query'"),
    ("kpo_nodeselector_conflict", "node-selector-conflict",
     "is 'NVIDIA-H100-80GB-HBM3' on the pod but profile a100-80gb needs 'NVIDIA-A100-SXM4-80GB'"),
    ("kpo_privileged", "privileged-gpu-pod", "container 'base' sets securityContext.privileged: true"),
    ("kpo_env_visible_devices", "forbidden-env", "sets env NVIDIA_VISIBLE_DEVICES='all'"),
    ("kpo_hostpath_dev_nvidia", "host-path", "mounts hostPath '/dev/nvidia0' in a GPU pod"),
])
def test_mutation_denies_early_what_it_already_knows(case_id, reason, words, policy):
    case = airflow_fixture(case_id)
    decision = decide_mutation(case["pod"], case["namespace"], policy)
    assert not decision.allowed and decision.reason == reason
    assert words in decision.message


def _allowed_cases() -> list[str]:
    reference = load_policy(POLICY_FILE)
    return [c for c in airflow_fixture_ids()
            if decide_mutation(airflow_fixture(c)["pod"], airflow_fixture(c)["namespace"], reference).allowed]


@pytest.mark.parametrize("case_id", _allowed_cases())
def test_mutating_an_already_mutated_pod_changes_nothing(case_id, policy):
    pod, first = mutated(case_id, policy)
    assert first.allowed
    second = decide_mutation(pod, airflow_fixture(case_id)["namespace"], policy)
    assert second.patch == () and second.allowed


def test_fields_the_api_server_defaults_on_the_validator_do_not_count_as_a_change(policy):
    pod, _ = mutated("kpo_h100_count2", policy)
    validator = pod["spec"]["initContainers"][0]
    validator["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] = "v1"   # as kube-apiserver stores it
    validator.setdefault("securityContext", {})["seccompProfile"] = {"type": "RuntimeDefault"}
    assert decide_mutation(pod, "ml-jobs", policy).patch == ()
    validator["args"][-1] = "3"
    assert decide_mutation(pod, "ml-jobs", policy).patch != ()


def test_a_look_alike_validator_with_extra_gpus_or_a_restart_policy_is_replaced(policy):
    """Red team (tests/e2e/test_redteam.py): a pod that brings its own copy of the validator,
    made a sidecar (``restartPolicy: Always``) or given another GPU resource, was kept as it is:
    the validator then held GPUs for the pod's whole life, outside the stray-GPU rule."""
    clean, _ = mutated("kpo_h100_count2", policy)
    for change in (lambda v: v.__setitem__("restartPolicy", "Always"),
                   lambda v: v["resources"]["limits"].__setitem__("nvidia.com/mig-3g.40gb", "2"),
                   lambda v: v["resources"]["requests"].__setitem__("nvidia.com/gpu.shared", "1")):
        pod = copy.deepcopy(clean)
        change(pod["spec"]["initContainers"][0])
        decision = decide_mutation(pod, "ml-jobs", policy)
        assert [op["op"] for op in decision.patch] == ["replace"], decision.patch
        fixed = jsonpatch.apply_patch(pod, list(decision.patch))
        assert fixed["spec"]["initContainers"] == clean["spec"]["initContainers"]


# --- properties: patches always apply, mutation is idempotent, untouched pods get no patch ---

_PROFILES = ["a100-80gb", "h100-80gb", "a100-mig-1g.10gb", "a100-mig-2g.20gb", "a100-mig-3g.40gb"]
_MISSING = object()
_variants = {
    "tolerations": st.sampled_from([_MISSING, None, [], [{"key": "dedicated", "operator": "Equal", "value": "ml"}],
                                    [A100_TOLERATION]]),
    "nodeSelector": st.sampled_from([_MISSING, None, {}, {"topology.kubernetes.io/zone": "a"},
                                     {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}]),
    # A stale validator at every position: first, after a user's, twice, alone.
    "initContainers": st.sampled_from([_MISSING, None, [], [{"name": "fetch", "image": "busybox"}],
                                       [{"name": "fetch", "image": "busybox"}, {"name": VALIDATOR_NAME, "image": "old"}],
                                       [{"name": VALIDATOR_NAME, "image": "old"}],
                                       [{"name": VALIDATOR_NAME, "image": "old"}, {"name": "fetch", "image": "busybox"}],
                                       [{"name": VALIDATOR_NAME, "image": "old"}, {"name": "fetch", "image": "busybox"},
                                        {"name": VALIDATOR_NAME, "image": "older"}]]),
    "resources": st.sampled_from([_MISSING, None, {}, {"limits": None}, {"limits": {"cpu": "1"}},
                                  {"limits": {"nvidia.com/gpu": 2}, "requests": {"nvidia.com/gpu": "2"}},
                                  {"requests": {"nvidia.com/mig-1g.10gb": "1", "memory": "1Gi"}}]),
    "profile": st.sampled_from([None, *_PROFILES]),
    "count": st.sampled_from([None, "1", "2", "3"]),
}


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value is _MISSING:
        target.pop(key, None)
    else:
        target[key] = copy.deepcopy(value)


@st.composite
def airflow_variants(draw) -> tuple[dict[str, Any], str]:
    case = airflow_fixture(draw(st.sampled_from(["kpo_mig_1g_xcom", "kpo_existing_scheduling",
                                                 "executor_gpu_override", "kpo_cpu_plain", "kpo_nightly_a100"])))
    pod, spec = case["pod"], case["pod"]["spec"]
    for field in ("tolerations", "nodeSelector", "initContainers"):
        _set(spec, field, draw(_variants[field]))
    _set(spec["containers"][0], "resources", draw(_variants["resources"]))
    labels = pod["metadata"]["labels"]
    for label, key in (("gpu.platform/profile", "profile"), ("gpu.platform/count", "count")):
        value = draw(_variants[key])
        labels.pop(label, None) if value is None else labels.__setitem__(label, value)
    return pod, case["namespace"]


def _foreign_webhook(pod: dict[str, Any], index: int) -> None:
    """Another mutating webhook: an env var appended to every container, or the validator's
    image changed (it is then stale, wherever it is)."""
    for field in ("initContainers", "containers"):
        for c in pod["spec"].get(field) or []:
            if index == 0:
                c.setdefault("env", []).append({"name": "FOREIGN", "value": "1"})
            elif c["name"] == VALIDATOR_NAME:
                c["image"] = "foreign"


def _one_validator_first_and_void_elsewhere(pod: dict[str, Any]) -> None:
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert names[0] == VALIDATOR_NAME and names.count(VALIDATOR_NAME) == 1, names
    for field in ("initContainers", "containers"):
        for c in pod["spec"][field]:
            holds_gpu = c["name"] == VALIDATOR_NAME if field == "initContainers" else c["name"] == "base"
            assert (VOID_ENV in (c.get("env") or [])) != holds_gpu, (field, c["name"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(airflow_variants(), st.sampled_from([None, 0, 1]))
def test_patches_apply_and_a_second_pass_changes_nothing(policy, variant, foreign):
    pod, namespace = variant
    decision = decide_mutation(pod, namespace, policy)
    if "gpu.platform/profile" not in pod["metadata"]["labels"]:
        assert decision.allowed and decision.patch == ()
        return
    if not decision.allowed:
        return
    patched = jsonpatch.apply_patch(pod, list(decision.patch))  # raises if an op does not apply
    _one_validator_first_and_void_elsewhere(patched)
    if foreign is not None:  # reinvoked after another webhook changed the pod
        _foreign_webhook(patched, foreign)
        patched = jsonpatch.apply_patch(patched, list(decide_mutation(patched, namespace, policy).patch))
        _one_validator_first_and_void_elsewhere(patched)
    again = decide_mutation(patched, namespace, policy)
    assert again.allowed and again.patch == (), again.patch


# ------------------------------------------------------------------------------ DRA claim profiles
DRA_POLICY_FILE = POLICY_FILE.parent.parent / "docs" / "examples" / "policy-dra.yaml"
DRA_CASES = [
    # (fixture, profile, count): Airflow-built pods relabelled to a DRA profile
    ("kpo_mig_1g_xcom", "a100-dra-mig-1g.10gb", "2"),
    ("kpo_h100_count2", "a100-dra", "2"),
    ("executor_gpu_override", "a100-dra", None),
    ("kpo_manual_gpu_mismatch", "a100-dra-mig-1g.10gb", None),
    ("kpo_mig_1g_xcom", "a100-mig-1g.10gb-er", None),
]


def dra_case(case_id: str, profile: str, count: str | None) -> dict[str, Any]:
    case = airflow_fixture(case_id)
    pod_labels = case["pod"]["metadata"]["labels"]
    pod_labels["gpu.platform/profile"] = profile
    pod_labels.pop("gpu.platform/count", None)
    if count is not None:
        pod_labels["gpu.platform/count"] = count
    return case


@pytest.fixture(scope="module")
def dra_policy():
    return load_policy(DRA_POLICY_FILE)


@pytest.mark.parametrize(("case_id", "profile", "count"), DRA_CASES)
def test_a_dra_pods_mutation_matches_its_golden_file(case_id, profile, count, dra_policy, golden):
    case = dra_case(case_id, profile, count)
    decision = decide_mutation(case["pod"], case["namespace"], dra_policy)
    golden(f"mutate-dra/{case_id}-{profile}", {
        "allowed": decision.allowed, "reason": decision.reason, "warnings": list(decision.warnings),
        "patch": list(decision.patch)})
    pod = jsonpatch.apply_patch(case["pod"], list(decision.patch))
    assert decide_mutation(pod, case["namespace"], dra_policy).patch == ()


def test_a_dra_claim_pod_gets_its_claims_on_base_and_the_validator_and_no_extended_gpu(dra_policy):
    case = dra_case("kpo_mig_1g_xcom", "a100-dra-mig-1g.10gb", "2")
    pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], case["namespace"], dra_policy).patch))
    names = [{"name": "gpu-platform-0"}, {"name": "gpu-platform-1"}]
    assert pod["spec"]["resourceClaims"] == [
        {"name": f"gpu-platform-{i}", "resourceClaimTemplateName": "gpu-platform-a100-dra-mig-1g.10gb"}
        for i in range(2)]
    for holder in (container(pod, "base"), container(pod, VALIDATOR_NAME, "initContainers")):
        assert holder["resources"]["claims"] == names
        assert not [k for s in ("limits", "requests") for k in holder["resources"].get(s, {}) if "nvidia" in k]
    assert "claims" not in container(pod, "airflow-xcom-sidecar").get("resources", {})


def test_a_gpu_set_by_hand_on_a_dra_pod_is_removed_with_a_warning(dra_policy):
    case = dra_case("kpo_manual_gpu_mismatch", "a100-dra-mig-1g.10gb", None)
    decision = decide_mutation(case["pod"], case["namespace"], dra_policy)
    pod = jsonpatch.apply_patch(case["pod"], list(decision.patch))
    assert not [k for s in ("limits", "requests") for k in container(pod, "base")["resources"].get(s, {})
                if k.startswith("nvidia.com/")]
    assert any("1 DRA claim(s) of nvidia.com/mig-1g.10gb" in w for w in decision.warnings)


def test_a_pod_moved_from_a_dra_profile_to_a_device_plugin_one_loses_the_platforms_claims(dra_policy):
    case = dra_case("kpo_mig_1g_xcom", "a100-dra-mig-1g.10gb", "2")
    pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], case["namespace"], dra_policy).patch))
    pod["metadata"]["labels"]["gpu.platform/profile"] = "a100-mig-1g.10gb"
    pod["metadata"]["labels"].pop("gpu.platform/count")
    again = jsonpatch.apply_patch(pod, list(decide_mutation(pod, case["namespace"], dra_policy).patch))
    assert again["spec"]["resourceClaims"] == []
    assert "claims" not in {k for k, v in container(again, "base")["resources"].items() if v}
    assert container(again, "base")["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
