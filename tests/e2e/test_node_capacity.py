"""Requests no node can meet, against the real API server and the simulated pools: the webhook
watches the nodes and refuses a GPU pod no node could ever hold, naming the largest offer; a pool
that scales from zero gets a warning instead; a node added after start-up counts at once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml
from kubernetes.client.rest import ApiException

from .conftest import RegisteredWebhook, airflow_pod, registered_webhook
from .controlplane import KWOK_NODE_ANNOTATION, ControlPlane
from conftest import POLICY_FILE

pytestmark = pytest.mark.e2e

H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.fixture(scope="module")
def capacity(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegisteredWebhook]:
    """A tracked webhook whose policy allows up to 16 H100s a pod (nodes hold 8) and has two
    profiles for hardware the cluster lacks: one scaling from zero, one not."""
    tmp = tmp_path_factory.mktemp("capacity")
    data = yaml.safe_load(POLICY_FILE.read_text())
    profiles = data["spec"]["profiles"]
    profiles["h100-80gb"]["maxCount"] = 16
    gpu = {"resource": "nvidia.com/gpu", "maxCount": 8, "tolerations": profiles["h100-80gb"]["tolerations"]}
    profiles["b200-autoscaled"] = {**gpu, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-B200"}, "scaleFromZero": True}
    profiles["gh200-missing"] = {**gpu, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-GH200-480GB"}}
    data["spec"]["tenants"]["vision"]["quota"] = {"nvidia.com/gpu": 100, "gpuEquivalent": 100}
    (tmp / "policy.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    yield from registered_webhook(controlplane, tmp, "--track-usage", "--kubeconfig", str(controlplane.kubeconfig),
                                  "--ledger-namespace", "default", policy=tmp / "policy.yaml")


def _pod(profile: str, count: str) -> dict:
    pod = airflow_pod("kpo_h100_count2", f"cap-{uuid.uuid4().hex[:6]}", complete_after="0s")
    pod["metadata"]["labels"].update({"gpu.platform/profile": profile, "gpu.platform/count": count})
    return pod


def _create(webhook: RegisteredWebhook, pod: dict) -> str:
    try:
        webhook.core.create_namespaced_pod("ml-jobs", pod)
        return "admitted"
    except ApiException as err:
        return json.loads(err.body)["message"]


def test_a_satisfiable_request_is_admitted(capacity):
    assert _create(capacity, _pod("h100-80gb", "8")) == "admitted"


def test_more_gpus_than_any_node_has_is_refused_naming_the_largest_offer(capacity):
    assert _create(capacity, _pod("h100-80gb", "9")).endswith(
        f"no node offers 9 x nvidia.com/gpu with nvidia.com/gpu.product={H100}; the largest offers 8; ask for fewer "
        f"or another profile")


def test_hardware_the_cluster_lacks_is_refused_unless_its_pool_scales_from_zero(capacity):
    assert "no node matches that selector and tolerations at all" in _create(capacity, _pod("gh200-missing", "1"))
    waiting = _pod("b200-autoscaled", "1")
    _, _, headers = capacity.core.create_namespaced_pod_with_http_info("ml-jobs", waiting)   # admitted ...
    assert "no node matches nvidia.com/gpu.product=NVIDIA-B200 yet; the pool scales from zero" in headers["Warning"]
    capacity.core.delete_namespaced_pod(waiting["metadata"]["name"], "ml-jobs", grace_period_seconds=0)


def test_a_node_added_after_start_up_counts_at_once(capacity, controlplane):
    big = {"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": f"h100-big-{uuid.uuid4().hex[:4]}", "annotations": dict([KWOK_NODE_ANNOTATION]),
                        "labels": {"nvidia.com/gpu.product": H100, "type": "kwok"}},
           "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
           "status": {"allocatable": {"nvidia.com/gpu": "16", "cpu": "192", "memory": "2Ti", "pods": "110"},
                      "capacity": {"nvidia.com/gpu": "16", "cpu": "192", "memory": "2Ti", "pods": "110"}}}
    capacity.core.create_node(big)
    try:
        deadline = time.monotonic() + 15
        while (outcome := _create(capacity, pod := _pod("h100-80gb", "12"))) != "admitted":
            assert time.monotonic() < deadline, f"the new node was never taken into account: {outcome}"
            time.sleep(0.5)
        bound = controlplane.wait_for_pod("ml-jobs", pod["metadata"]["name"], lambda p: bool(p.spec.node_name), 30)
        assert bound.spec.node_name == big["metadata"]["name"]
        # Finished before its node goes: a pod stranded on a deleted node would hold 12 GPUs of
        # tenant vision for the rest of the session.
        controlplane.wait_for_pod("ml-jobs", pod["metadata"]["name"], lambda p: p.status.phase == "Succeeded", 30)
    finally:
        capacity.core.delete_node(big["metadata"]["name"])
