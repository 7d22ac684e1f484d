"""The UPDATE decision: a pod's accounting facts cannot change after admission; Airflow's own
later updates pass."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from airflow_gpu_webhook.core.update import decide_update, fixed_label_keys

from conftest import airflow_fixture, policy_with


def managed_pod() -> dict[str, Any]:
    """The h100 fixture as the API server stored it: mutated, stamped, with Airflow's dag_id annotation."""
    pod = copy.deepcopy(airflow_fixture("kpo_h100_count2")["pod"])
    pod["metadata"]["labels"].update({"gpu.platform/managed": "true", "gpu.platform/tenant": "vision",
                                      "team": "vision"})
    pod["metadata"]["annotations"] = {"dag_id": "detect_objects"}
    return pod


def cpu_pod() -> dict[str, Any]:
    return copy.deepcopy(airflow_fixture("kpo_cpu_plain")["pod"])


def relabelled(pod: dict[str, Any], labels: Mapping[str, str | None] = MappingProxyType({}),
               notes: Mapping[str, str | None] = MappingProxyType({})) -> dict:
    """``pod`` with labels/annotations set (None: removed), as a merge patch would leave it."""
    new = copy.deepcopy(pod)
    for field, changes in (("labels", labels), ("annotations", notes)):
        target = new["metadata"].setdefault(field, {})
        for key, value in changes.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return new


REFUSED = [
    ("removing the managed stamp is refused", managed_pod, {"gpu.platform/managed": None}, {},
     "removes label gpu.platform/managed (was 'true', would be absent)"),
    ("changing the tenant stamp is refused", managed_pod, {"gpu.platform/tenant": "forecasting"}, {},
     "changes label gpu.platform/tenant (was 'vision', would be 'forecasting')"),
    ("changing the count label is refused", managed_pod, {"gpu.platform/count": "1"}, {},
     "changes label gpu.platform/count"),
    ("changing the team label a tenant match reads is refused", managed_pod, {"team": "forecasting"}, {},
     "changes label team (was 'vision', would be 'forecasting')"),
    ("removing the team label of a managed pod is refused", managed_pod, {"team": None}, {}, "removes label team"),
    ("changing the dag_id label of a managed pod is refused", managed_pod, {"dag_id": "nightly_x"}, {},
     "changes label dag_id"),
    ("changing the dag_id annotation of a managed pod is refused", managed_pod, {}, {"dag_id": "nightly_x"},
     "changes annotation dag_id (was 'detect_objects', would be 'nightly_x')"),
    ("adding a tenant stamp to a CPU pod is refused", cpu_pod, {"gpu.platform/tenant": "vision"}, {},
     "adds label gpu.platform/tenant (was absent, would be 'vision')"),
    ("adding the managed stamp to a CPU pod is refused", cpu_pod, {"gpu.platform/managed": "true"}, {},
     "adds label gpu.platform/managed"),
    ("adding an unknown gpu.platform label to a CPU pod is refused", cpu_pod, {"gpu.platform/anything": "x"}, {},
     "adds label gpu.platform/anything"),
]


@pytest.mark.parametrize("description, make, labels, notes, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_an_accounting_fact_cannot_change(description, make, labels, notes, words, policy):
    old = make()
    decision = decide_update(old, relabelled(old, labels, notes), policy)
    assert not decision.allowed and decision.reason == "accounting-fixed"
    assert words in decision.message
    assert "relaunch the task" in decision.message


ALLOWED = [
    ("KubernetesPodOperator's already_checked label passes", managed_pod, {"already_checked": "True"}, {}),
    ("the executor's airflow-worker adoption label passes", managed_pod, {"airflow-worker": "42"}, {}),
    ("an unrelated annotation on a managed pod passes", managed_pod, {}, {"note": "hi"}),
    ("a team label on a CPU pod may change", cpu_pod, {"team": "forecasting"}, {}),
    ("a dag_id label on a CPU pod may change", cpu_pod, {"dag_id": "anything"}, {}),
    ("an update that changes no label passes", managed_pod, {}, {}),
]


@pytest.mark.parametrize("description, make, labels, notes", ALLOWED, ids=[a[0] for a in ALLOWED])
def test_other_updates_pass(description, make, labels, notes, policy):
    old = make()
    assert decide_update(old, relabelled(old, labels, notes), policy).allowed


def test_every_change_is_named_in_one_denial(policy):
    old = managed_pod()
    decision = decide_update(old, relabelled(old, {"gpu.platform/managed": None, "team": "x"}), policy)
    assert [v.message.split(" (")[0] for v in decision.violations] == [
        "this update removes label gpu.platform/managed", "this update changes label team"]


def test_the_fixed_keys_follow_the_policy():
    policy = policy_with(labels={"profile": "example.com/gpu", "count": "example.com/n"},
                         tenants={"a": {"match": [{"podLabels": {"squad": "a", "gpu.platform/x": "1"}}]}})
    assert fixed_label_keys(policy) == {"dag_id", "example.com/gpu", "example.com/n", "squad"}


def test_a_label_map_that_is_not_a_mapping_reads_as_empty(policy):
    old = managed_pod()
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = ["not", "a", "map"]
    assert "removes label gpu.platform/managed" in decide_update(old, new, policy).message


# --- red team: a toleration added by UPDATE must not take a pod holding no GPU onto a GPU node ---
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def tolerating(pod: dict[str, Any], *tolerations: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(pod)
    new["spec"]["tolerations"] = [*(new["spec"].get("tolerations") or []), *tolerations]
    return new


def test_a_toleration_added_to_a_cpu_pod_that_lets_it_reach_a_gpu_node_is_refused(policy):
    decision = decide_update(cpu_pod(), tolerating(cpu_pod(), GPU_TOLERATION), policy)
    assert not decision.allowed
    assert "can reach a GPU node through toleration {key: nvidia.com/gpu" in decision.message
    keyless = decide_update(cpu_pod(), tolerating(cpu_pod(), {"operator": "Exists"}), policy)
    assert not keyless.allowed


def test_in_void_mode_an_added_gpu_toleration_needs_void_already_there():
    void_policy = policy_with(gpuReachingPods="void")
    refused = decide_update(cpu_pod(), tolerating(cpu_pod(), GPU_TOLERATION), void_policy)
    assert not refused.allowed and "must carry env NVIDIA_VISIBLE_DEVICES=void" in refused.message
    voided = cpu_pod()
    for c in voided["spec"]["containers"]:
        c["env"] = [*(c.get("env") or []), {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]
    assert decide_update(voided, tolerating(voided, GPU_TOLERATION), void_policy).allowed
    # void does not stop a privileged container or a hostPath of / on a GPU node
    privileged = copy.deepcopy(voided)
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    refused = decide_update(privileged, tolerating(privileged, GPU_TOLERATION), void_policy)
    assert not refused.allowed and "privileged: true in a pod that can reach a GPU node" in refused.message
    host = copy.deepcopy(voided)
    host["spec"]["volumes"] = [{"name": "root", "hostPath": {"path": "/"}}]
    refused = decide_update(host, tolerating(host, GPU_TOLERATION), void_policy)
    assert not refused.allowed and "mounts hostPath '/'" in refused.message


def test_harmless_toleration_updates_pass(policy):
    other = {"key": "pool", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}
    assert decide_update(cpu_pod(), tolerating(cpu_pod(), other), policy).allowed
    not_ready = {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300}
    assert decide_update(cpu_pod(), tolerating(cpu_pod(), not_ready), policy).allowed
    # A managed pod holds its GPUs and is voided already: more tolerations change nothing.
    assert decide_update(managed_pod(), tolerating(managed_pod(), GPU_TOLERATION), policy).allowed


def test_the_fixed_label_keys_are_computed_once_per_policy(policy):
    from airflow_gpu_webhook.core.update import fixed_label_keys

    assert fixed_label_keys(policy) is fixed_label_keys(policy) and "dag_id" in fixed_label_keys(policy)
