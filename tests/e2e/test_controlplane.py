"""Proofs that the testbed behaves like the production peers the webhook meets.

Real kube-scheduler placement against the simulated GPU pools, kwok's pod lifecycle in the
order Airflow's KubernetesPodOperator waits for it, and a webhook at an https://127.0.0.1 URL
actually called by the real API server.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import StubWebhook, denying
from .controlplane import COMPLETE_AFTER_LABEL, POOL_LABEL, CertificateAuthority, ControlPlane, node_objects
from .dra_cluster import DRA_NODES_FILE

pytestmark = pytest.mark.e2e

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod(name: str, namespace: str, *, resources: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
        tolerate: bool = False, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod shaped like Airflow's (main container `base`), asking for `resources` as limits."""
    spec: dict[str, Any] = {
        "containers": [{"name": "base", "image": "busybox", "resources": {"limits": resources or {}}}],
        "restartPolicy": "Never",
    }
    if tolerate:
        spec["tolerations"] = [GPU_TOLERATION]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                            "labels": labels or {}}, "spec": spec}


def scheduled_condition(cp: ControlPlane, namespace: str, name: str) -> Any:
    """Wait for the scheduler's verdict: the PodScheduled condition, True or False."""
    pod = cp.wait_for_pod(namespace, name, lambda p: any(
        c.type == "PodScheduled" for c in (p.status.conditions or [])), timeout=20)
    return next(c for c in pod.status.conditions if c.type == "PodScheduled")


def test_node_pools_have_gpu_capacity_labels_and_taints(controlplane: ControlPlane) -> None:
    core = client.CoreV1Api(controlplane.api_client())
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert set(nodes) == {n["metadata"]["name"] for n in node_objects() + node_objects(DRA_NODES_FILE)}
    mig = nodes["a100-mig-mixed-0"]
    assert mig.status.allocatable["nvidia.com/mig-1g.10gb"] == "28"
    assert mig.status.allocatable["nvidia.com/mig-3g.40gb"] == "4"
    assert "nvidia.com/gpu" not in mig.status.allocatable
    assert mig.metadata.labels["nvidia.com/mig.strategy"] == "mixed"
    h100 = nodes["h100-0"]
    assert h100.status.capacity["nvidia.com/gpu"] == "8"
    assert h100.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    for n in nodes.values():
        gpu = n.metadata.labels[POOL_LABEL] != "cpu"
        assert [(t.key, t.effect) for t in n.spec.taints or []] == ([("nvidia.com/gpu", "NoSchedule")] if gpu else [])
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)


def test_gpu_pod_without_toleration_stays_pending(controlplane: ControlPlane, namespace: str) -> None:
    controlplane.apply(pod("no-toleration", namespace, resources={"nvidia.com/gpu": 1}))
    cond = scheduled_condition(controlplane, namespace, "no-toleration")
    assert (cond.status, cond.reason) == ("False", "Unschedulable")
    # GPU pools (device plugin and DRA) refuse on the taint, CPU nodes on the missing resource. As
    # NVIDIA's chart maps nvidia.com/gpu to its gpu.nvidia.com DeviceClass (KEP-5004), a node that
    # does not advertise it is tried through DRA and fails there, not on "Insufficient".
    nodes = client.CoreV1Api(controlplane.api_client()).list_node().items
    tainted = sum(1 for n in nodes if n.spec.taints)
    assert f"{tainted} node(s) had untolerated taint(s)" in cond.message, cond.message
    assert f"{len(nodes) - tainted} cannot allocate all claims" in cond.message, cond.message
    client.CoreV1Api(controlplane.api_client()).delete_namespaced_pod("no-toleration", namespace)


def test_tolerating_pod_binds_to_its_pool_runs_and_succeeds(controlplane: ControlPlane, namespace: str) -> None:
    controlplane.apply(pod(
        "h100-task", namespace, resources={"nvidia.com/gpu": 2}, labels={COMPLETE_AFTER_LABEL: "2s"},
        tolerate=True, node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}))
    running = controlplane.wait_for_pod(namespace, "h100-task", lambda p: p.status.phase == "Running")
    assert running.spec.node_name.startswith("h100-")
    assert running.status.container_statuses[0].state.running is not None
    done = controlplane.wait_for_pod(namespace, "h100-task", lambda p: p.status.phase != "Running")
    # What KubernetesPodOperator needs: base terminated with exit 0 in the same update as Succeeded.
    assert done.status.phase == "Succeeded"
    base = next(s for s in done.status.container_statuses if s.name == "base")
    assert base.state.terminated.exit_code == 0
    assert {c.type for c in done.status.conditions} >= {"PodScheduled", "Ready"}


def test_pod_without_completion_label_keeps_running(controlplane: ControlPlane, namespace: str) -> None:
    controlplane.apply(pod("cpu-service", namespace, resources={"cpu": "1"}))
    p = controlplane.wait_for_pod(namespace, "cpu-service", lambda p: p.status.phase == "Running")
    assert p.spec.node_name.startswith("cpu-")


def test_mig_request_larger_than_any_node_stays_pending(controlplane: ControlPlane, namespace: str) -> None:
    controlplane.apply(pod(
        "mig-overask", namespace, resources={"nvidia.com/mig-3g.40gb": 5}, tolerate=True,
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig.strategy": "mixed"}))
    cond = scheduled_condition(controlplane, namespace, "mig-overask")
    assert (cond.status, cond.reason) == ("False", "Unschedulable")
    assert "2 Insufficient nvidia.com/mig-3g.40gb" in cond.message, cond.message
    client.CoreV1Api(controlplane.api_client()).delete_namespaced_pod("mig-overask", namespace)


@pytest.mark.parametrize(("resources", "selector", "pool"), [
    ({"nvidia.com/gpu": 8}, {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, "a100-whole"),
    ({"nvidia.com/mig-1g.10gb": 7},
     {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig.strategy": "mixed"}, "a100-mig-mixed"),
    ({"nvidia.com/gpu": 1}, {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "h100"),
], ids=["a100-80gb", "a100-mig-1g.10gb", "h100-80gb"])
def test_policy_selectors_land_on_their_pool(controlplane: ControlPlane, namespace: str, resources: dict[str, int],
                                             selector: dict[str, str], pool: str) -> None:
    """The reference policy's nodeSelectors + toleration reach exactly one pool (the plain A100
    product never lands on the MIG "single" node, whose GFD product name differs)."""
    controlplane.apply(pod("placed", namespace, resources=resources, labels={COMPLETE_AFTER_LABEL: "1s"},
                           tolerate=True, node_selector=selector))
    p = controlplane.wait_for_pod(namespace, "placed", lambda p: p.status.phase == "Succeeded")
    node = client.CoreV1Api(controlplane.api_client()).read_node(p.spec.node_name)
    assert node.metadata.labels[POOL_LABEL] == pool


def test_pod_in_kube_system_creates(controlplane: ControlPlane) -> None:
    controlplane.apply(pod("system-agent", "kube-system", labels={COMPLETE_AFTER_LABEL: "0s"}))
    p = controlplane.wait_for_pod("kube-system", "system-agent", lambda p: p.status.phase == "Succeeded")
    assert p.spec.node_name.startswith("cpu-")


# ------------------------------------------------------------------------ webhook over loopback
@pytest.fixture
def denying_webhook(tmp_path: Path) -> Iterator[tuple[int, bytes, list[dict[str, Any]]]]:
    """An https stub on 127.0.0.1 that denies every AdmissionReview; yields (port, CA PEM, reviews)."""
    ca = CertificateAuthority.create("stub-webhook-ca")
    crt, key = ca.issue("stub-webhook", hosts=["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(crt)
    (tmp_path / "tls.key").write_bytes(key)
    stub = StubWebhook(denying("denied by the testbed stub"), tmp_path / "tls.crt", tmp_path / "tls.key")
    try:
        yield stub.port, ca.pem, stub.reviews
    finally:
        stub.stop()


def test_apiserver_calls_webhook_at_loopback_url(
    controlplane: ControlPlane, namespace: str, denying_webhook: tuple[int, bytes, list[dict[str, Any]]]
) -> None:
    port, ca_pem, reviews = denying_webhook
    name = f"testbed-stub-{namespace}"
    controlplane.apply({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "stub.testbed.gpu.platform",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate",
                             "caBundle": base64.b64encode(ca_pem).decode()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 5,
        }],
    })
    adm = client.AdmissionregistrationV1Api(controlplane.api_client())
    try:
        core = client.CoreV1Api(controlplane.api_client())
        body = pod("denied", namespace)
        with pytest.raises(ApiException) as exc:
            # A new webhook configuration takes effect within about a second: retry until denied.
            for _ in range(50):
                core.create_namespaced_pod(namespace, body, dry_run="All")
                time.sleep(0.1)
        assert exc.value.status == 403
        assert json.loads(exc.value.body)["message"] == (
            'admission webhook "stub.testbed.gpu.platform" denied the request: denied by the testbed stub')
        assert reviews and reviews[-1]["request"]["dryRun"] is True
        assert reviews[-1]["request"]["object"]["metadata"]["name"] == "denied"
    finally:
        adm.delete_validating_webhook_configuration(name)
