"""DRA profiles with `serve --track-usage`, against the real API server (resource.k8s.io/v1 of
Kubernetes 1.36): the webhook installs the platform's ResourceClaimTemplates in the tenants'
namespaces, puts back one a tenant with the `edit` role deletes or hides, and counts the
devices of ResourceSlices (written by hand: the testbed runs no DRA driver) to refuse a DRA pod
no node could ever hold."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.core.dra import desired_templates, template_matches
from airflow_gpu_webhook.core.policy import parse_policy

from .conftest import RegisteredWebhook, airflow_pod, registered_webhook, tenant_user
from .controlplane import POOL_LABEL, ControlPlane
from conftest import DRA_POLICY_FILE

pytestmark = pytest.mark.e2e

A100_TEMPLATE = "gpu-platform-a100-dra"
#: A DeviceClass and a ResourceSlice of this module only (cluster-scoped: removed at its end).
DEVICE_CLASS = "gpu.e2e-dra.gpu.platform"
DRIVER = "gpu.e2e-dra.gpu.platform"


def _policy_data() -> dict[str, Any]:
    """The DRA example policy, the A100 profile on this module's DeviceClass, with quota to spare
    (what earlier modules' pods hold must not decide these admissions)."""
    data = yaml.safe_load(DRA_POLICY_FILE.read_text())
    data["spec"]["profiles"]["a100-dra"]["dra"] = {
        "deviceClassName": DEVICE_CLASS,
        "selector": f'device.attributes["{DRIVER}"].productName == "NVIDIA A100-SXM4-80GB"'}
    data["spec"]["tenants"]["vision"]["quota"] = {"nvidia.com/gpu": 100, "gpuEquivalent": 100}
    return data


def _policy():
    return parse_policy(_policy_data())


@pytest.fixture(scope="module")
def dra(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegisteredWebhook]:
    tmp = tmp_path_factory.mktemp("dra")
    (tmp / "policy-dra.yaml").write_text(yaml.safe_dump(_policy_data(), sort_keys=False))
    resource = client.ResourceV1Api(controlplane.api_client())
    resource.create_device_class({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                                  "metadata": {"name": DEVICE_CLASS},
                                  "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]}})
    try:
        yield from registered_webhook(controlplane, tmp, "--track-usage", "--kubeconfig", str(controlplane.kubeconfig),
                                      "--ledger-namespace", "default", policy=tmp / "policy-dra.yaml")
    finally:
        resource.delete_device_class(DEVICE_CLASS)
        resource.delete_collection_resource_slice(field_selector=f"spec.driver={DRIVER}")


def _resource(webhook: RegisteredWebhook) -> client.ResourceV1Api:
    return client.ResourceV1Api(webhook.cp.api_client())


def _template(webhook: RegisteredWebhook, namespace: str, name: str = A100_TEMPLATE) -> dict[str, Any] | None:
    try:
        return json.loads(_resource(webhook).read_namespaced_resource_claim_template(
            name, namespace, _preload_content=False).data)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)
    return found


def test_the_webhook_installs_the_platform_templates_in_every_tenant_namespace_and_leaves_them(dra):
    policy = _policy()
    stored = {key: _until(lambda key=key: _template(dra, *key), f"{key} exists") for key in desired_templates(policy)}
    assert sorted(stored) == [("airflow", A100_TEMPLATE), ("airflow", "gpu-platform-a100-dra-mig-1g.10gb"),
                              ("ml-jobs", A100_TEMPLATE), ("ml-jobs", "gpu-platform-a100-dra-mig-1g.10gb")]
    assert all(template_matches(t, policy) for t in stored.values()), "the API server's defaults still match"
    time.sleep(3)   # a reconciler that misjudged what the API server stored would replace them in a loop
    assert {key: _template(dra, *key)["metadata"]["uid"] for key in stored} == {
        key: t["metadata"]["uid"] for key, t in stored.items()}
    metrics = dra.server.client.get("/metrics").text
    assert 'gpu_webhook_claim_templates_total{result="replaced"} 0.0' in metrics
    assert 'gpu_webhook_watch_synced{watch="claimtemplates"} 1.0' in metrics


def test_a_template_a_tenant_deletes_or_hides_is_put_back(dra, controlplane, edit_role_ready, tmp_path):
    before = _until(lambda: _template(dra, "ml-jobs"), "the template exists")
    tenant = client.ResourceV1Api(tenant_user(controlplane, "ml-jobs", tmp_path, name=f"t-{uuid.uuid4().hex[:6]}"))
    tenant.delete_namespaced_resource_claim_template(A100_TEMPLATE, "ml-jobs")
    again = _until(lambda: (t := _template(dra, "ml-jobs")) and t["metadata"]["uid"] != before["metadata"]["uid"]
                   and t, "the deleted template is created again")
    assert template_matches(again, _policy())
    # Deleting the label the webhook's watch selects on hides the template from that watch.
    tenant.patch_namespaced_resource_claim_template(
        A100_TEMPLATE, "ml-jobs", {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}},
        _content_type="application/merge-patch+json")
    _until(lambda: (_template(dra, "ml-jobs")["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by")
           == "airflow-gpu-webhook", "the label is restored")
    assert _template(dra, "ml-jobs")["metadata"]["uid"] == again["metadata"]["uid"], "relabelled, not replaced"


def _dra_pod(count: int) -> dict[str, Any]:
    pod = airflow_pod("kpo_h100_count2", f"dra-{uuid.uuid4().hex[:6]}")
    pod["metadata"]["labels"].update({"gpu.platform/profile": "a100-dra", "gpu.platform/count": str(count)})
    return pod


def _admission(webhook: RegisteredWebhook, count: int) -> str:
    try:
        webhook.core.create_namespaced_pod("ml-jobs", _dra_pod(count), dry_run="All")
        return "admitted"
    except ApiException as err:
        return json.loads(err.body)["message"]


def test_resource_slices_bound_what_a_dra_pod_may_ask_for(dra):
    nodes = dra.core.list_node(label_selector=f"{POOL_LABEL}=a100-mig-mixed").items
    assert nodes, "the testbed's A100 pool"
    node = nodes[0].metadata.name
    assert "the largest offers 0" in _admission(dra, 1), "no slice yet: no node offers any"
    devices = [{"name": f"gpu-{i}", "attributes": {"productName": {"string": "NVIDIA A100-SXM4-80GB"},
                                                   "index": {"int": i}}} for i in range(2)]
    devices.append({"name": "gpu-2", "attributes": {"productName": {"string": "NVIDIA H100-80GB-HBM3"}}})
    _resource(dra).create_resource_slice({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{node}-e2e-dra"},
        "spec": {"driver": DRIVER, "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                 "devices": devices}})
    _until(lambda: _admission(dra, 2) == "admitted", "the slice's two A100s are counted")
    refused = _admission(dra, 3)
    assert refused.endswith("no node offers 3 x nvidia.com/gpu with any node; the largest offers 2; ask for fewer or "
                            "another profile"), refused
