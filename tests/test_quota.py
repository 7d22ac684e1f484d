"""Quota math: effective GPU requests, tenant usage from a PodList, exceeded lines."""

from __future__ import annotations

from decimal import Decimal as D

import jsonpatch
import pytest

from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.core.quota import exceeded_lines, format_quantity, pod_charge, pod_gpu_request, usage_from_pods

from conftest import airflow_fixture


def _pod(containers=(), init=()):
    def c(name, gpus, **extra):
        return {"name": name, "resources": {"limits": gpus}, **extra}
    return {"spec": {"containers": [c(*x) if len(x) == 2 else c(x[0], x[1], **x[2]) for x in containers],
                     "initContainers": [c(*x) if len(x) == 2 else c(x[0], x[1], **x[2]) for x in init]}}


REQUESTS = [
    ("app containers add up", _pod([("a", {"nvidia.com/gpu": "1"}), ("b", {"nvidia.com/gpu": "2"})]),
     {"nvidia.com/gpu": D(3)}),
    ("an init container with the same GPUs adds nothing", _pod([("base", {"nvidia.com/gpu": "2"})],
                                                              [("check", {"nvidia.com/gpu": "2"})]),
     {"nvidia.com/gpu": D(2)}),
    ("a bigger init container sets the peak", _pod([("base", {"nvidia.com/gpu": "1"})],
                                                  [("warm", {"nvidia.com/gpu": "4"})]), {"nvidia.com/gpu": D(4)}),
    ("a sidecar init container adds to the app", _pod([("base", {"nvidia.com/gpu": "1"})],
                                                     [("side", {"nvidia.com/gpu": "1"}, {"restartPolicy": "Always"})]),
     {"nvidia.com/gpu": D(2)}),
    ("zero and unparsable quantities charge nothing", _pod([("a", {"nvidia.com/gpu": "0"}),
                                                          ("b", {"nvidia.com/gpu": "x"})]), {}),
]


@pytest.mark.parametrize("description, pod, expected", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_effective_gpu_request(description, pod, expected):
    assert pod_gpu_request(pod) == expected


def _mutated(case_id, policy, phase=None, name=None):
    case = airflow_fixture(case_id)
    pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], case["namespace"], policy).patch))
    pod["metadata"]["namespace"] = case["namespace"]
    if name:
        pod["metadata"]["name"] = name
    if phase:
        pod["status"] = {"phase": phase}
    return pod


def test_a_mig_pod_charges_its_slices_and_their_gpu_equivalent(policy):
    assert pod_charge(_mutated("kpo_mig_1g_xcom", policy), policy) == {
        "nvidia.com/mig-1g.10gb": D(1), "gpuEquivalent": D("0.125")}


def test_usage_counts_running_managed_pods_per_tenant_and_skips_finished_ones(policy):
    pods = [
        _mutated("kpo_h100_count2", policy, "Running", "a"),
        _mutated("kpo_h100_count2", policy, "Pending", "b"),
        _mutated("kpo_h100_count2", policy, "Succeeded", "c"),
        _mutated("kpo_h100_count2", policy, "Failed", "d"),
        _mutated("kpo_mig_1g_xcom", policy, "Running", "e"),
        _mutated("kpo_nightly_a100", policy, "Running", "f"),
        airflow_fixture("kpo_unlabelled_gpu")["pod"],
    ]
    usage = usage_from_pods(pods, policy)
    assert usage == {
        "vision": {"nvidia.com/gpu": D(4), "nvidia.com/mig-1g.10gb": D(1), "gpuEquivalent": D("4.125")},
        "forecasting": {"nvidia.com/gpu": D(1), "gpuEquivalent": D(1)},
    }


def test_the_pod_under_review_is_not_counted_twice(policy):
    pods = [_mutated("kpo_h100_count2", policy, "Pending", "same")]
    assert usage_from_pods(pods, policy, skip=("ml-jobs", "same")) == {}
    assert usage_from_pods(pods, policy, skip=("ml-jobs", "other")) != {}


def test_exceeded_lines_are_reported_in_policy_order_with_their_numbers():
    quota = {"nvidia.com/gpu": D(4), "nvidia.com/mig-1g.10gb": D(14), "gpuEquivalent": D(6)}
    broken = exceeded_lines("vision", quota, {"nvidia.com/gpu": D(2), "gpuEquivalent": D(2)},
                            {"nvidia.com/gpu": D(3), "gpuEquivalent": D("4.5")})
    assert [e.message() for e in broken] == [
        "exceeded quota: tenant vision, nvidia.com/gpu, requested: 2, used: 3, limited: 4",
        "exceeded quota: tenant vision, gpuEquivalent, requested: 2, used: 4.5, limited: 6",
    ]


def test_a_line_the_pod_does_not_ask_for_is_never_reported():
    assert exceeded_lines("t", {"nvidia.com/gpu": D(1)}, {"nvidia.com/mig-1g.10gb": D(1)},
                          {"nvidia.com/gpu": D(5)}) == []


def test_eight_mig_slices_make_exactly_one_gpu():
    assert sum([D("0.125")] * 8) == D(1) and format_quantity(D("1.000")) == "1"


def _restamped(**changes):
    def change(pod):
        for key, value in changes.items():
            if value is None:
                pod["metadata"]["labels"].pop(key, None)
            else:
                pod["metadata"]["labels"][key] = value
        return pod
    return change


OFFLINE = [
    ("the tenant comes from the stamp, not the pod's current labels",
     _restamped(team="forecasting", dag_id="nightly_x"), {"vision"}),
    ("a pod whose managed stamp was removed is not charged", _restamped(**{"gpu.platform/managed": None}), set()),
    ("a pod without a tenant stamp is not charged", _restamped(**{"gpu.platform/tenant": None}), set()),
    ("a tenant stamp no tenant has is charged to the stamp, which has no quota line",
     _restamped(**{"gpu.platform/tenant": "ghost-team"}), {"ghost-team"}),
]


@pytest.mark.parametrize("description, change, tenants", OFFLINE, ids=[o[0] for o in OFFLINE])
def test_offline_usage_reads_the_same_stamped_record_as_the_tracker(policy, description, change, tenants):
    pod = change(_mutated("kpo_h100_count2", policy, "Running", "a"))
    assert set(usage_from_pods([pod], policy)) == tenants


def test_the_stamp_to_tenant_map_is_built_once_per_policy(policy):
    from airflow_gpu_webhook.core.quota import _tenant_by_stamp

    assert _tenant_by_stamp(policy) is _tenant_by_stamp(policy) and _tenant_by_stamp(policy)["vision"] == "vision"


def test_dra_claims_and_device_plugin_gpus_of_a_tenant_are_counted_together():
    from pathlib import Path

    from airflow_gpu_webhook.core.policy import load_policy

    policy = load_policy(Path(__file__).resolve().parent.parent / "docs" / "examples" / "policy-dra.yaml")

    def admitted(profile: str, count: str, name: str) -> dict:
        case = airflow_fixture("kpo_mig_1g_xcom")
        case["pod"]["metadata"]["labels"].update({"gpu.platform/profile": profile, "gpu.platform/count": count})
        case["pod"]["metadata"].update(name=name, namespace="airflow", uid=name)
        return jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], "airflow", policy).patch))

    pods = [admitted("a100-dra-mig-1g.10gb", "3", "dra"), admitted("a100-mig-1g.10gb", "2", "plugin"),
            admitted("a100-dra", "1", "whole")]
    assert pod_charge(pods[0], policy) == {"nvidia.com/mig-1g.10gb": D(3), "gpuEquivalent": D("0.375")}
    assert usage_from_pods(pods, policy) == {"vision": {
        "nvidia.com/mig-1g.10gb": D(5), "nvidia.com/gpu": D(1), "gpuEquivalent": D("1.625")}}
