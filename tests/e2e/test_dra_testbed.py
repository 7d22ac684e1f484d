"""Proofs that the testbed does Dynamic Resource Allocation (DRA) as a cluster with NVIDIA's DRA
driver would, with hand-written pods (no webhook): kube-controller-manager's resourceclaim
controller makes claims from templates, kube-scheduler allocates devices of the ResourceSlices that
tests/e2e/dra_cluster.py publishes for the DRA pool, and serves plain extended-resource requests
through DeviceClasses with ``extendedResourceName`` (KEP-5004) on nodes that do not advertise them,
beside the device-plugin pools. kwok runs the pods (no kubelet, so no NodePrepareResources).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from . import dra_cluster as dra
from .controlplane import COMPLETE_AFTER_LABEL, POOL_LABEL, ControlPlane
from .dra_cluster import allocation, wait_for

pytestmark = pytest.mark.e2e

MIG_1G = f"device.attributes['{dra.DRIVER}'].profile == '1g.10gb'"
DRA_NODES = {n["metadata"]["name"] for n in dra.dra_nodes()}


class Pods:
    """Creates pods in a test's namespace and deletes whatever is left at the end, so the DRA
    devices are free again for the next test (deleting a pod makes the resourceclaim controller
    drop its reservation and the allocation)."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp, self.namespace = cp, namespace
        self.core = client.CoreV1Api(cp.api_client())
        self.resource = client.ResourceV1Api(cp.api_client())
        self.names: list[str] = []

    def create(self, pod: dict[str, Any]) -> str:
        self.cp.apply(pod)
        self.names.append(pod["metadata"]["name"])
        return str(pod["metadata"]["name"])

    def running(self, name: str, timeout: float = 20.0) -> Any:
        return self.cp.wait_for_pod(self.namespace, name, lambda p: p.status.phase == "Running", timeout=timeout)

    def unschedulable(self, name: str) -> Any:
        """The PodScheduled=False condition the scheduler wrote."""
        pod = self.cp.wait_for_pod(self.namespace, name, lambda p: any(
            c.type == "PodScheduled" and c.status == "False" for c in (p.status.conditions or [])), timeout=20)
        return next(c for c in pod.status.conditions if c.type == "PodScheduled")

    def claim(self, name: str) -> Any:
        return self.resource.read_namespaced_resource_claim(name, self.namespace)

    def template_claim(self, pod: Any) -> Any:
        """The ResourceClaim the controller made for the pod's (only) template claim."""
        statuses = pod.status.resource_claim_statuses or []
        assert len(statuses) == 1 and statuses[0].resource_claim_name, pod.status
        return self.claim(statuses[0].resource_claim_name)

    def delete(self, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        except ApiException as err:
            if err.status != 404:
                raise

    def cleanup(self) -> None:
        for name in self.names:
            self.delete(name)


@pytest.fixture
def pods(controlplane: ControlPlane, namespace: str) -> Iterator[Pods]:
    p = Pods(controlplane, namespace)
    try:
        yield p
    finally:
        p.cleanup()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def extended_resource_pod(name: str, namespace: str, resource: str, count: int = 1,
                          node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A device-plugin style pod: `count` of an extended resource as limits, no claim."""
    spec: dict[str, Any] = {"containers": [{"name": "base", "image": "busybox",
                                            "resources": {"limits": {resource: str(count)}}}],
                            "tolerations": [dra.GPU_TOLERATION], "restartPolicy": "Never"}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


# ---------------------------------------------------------------------------------- the pool
def test_dra_nodes_publish_devices_in_slices_not_node_capacity(controlplane: ControlPlane) -> None:
    core = client.CoreV1Api(controlplane.api_client())
    resource = client.ResourceV1Api(controlplane.api_client())
    for name in sorted(DRA_NODES):
        node = core.read_node(name)
        assert node.metadata.labels[dra.BACKEND_LABEL] == "dra"
        assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
        assert not [r for r in {**node.status.capacity, **node.status.allocatable} if r.startswith("nvidia.com/")]
        assert [(t.key, t.effect) for t in node.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    slices = {s.spec.node_name: s for s in resource.list_resource_slice().items if s.spec.driver == dra.DRIVER}
    assert set(slices) == DRA_NODES
    s = slices["dra-a100-0"]
    assert (s.spec.pool.name, s.spec.pool.resource_slice_count) == ("dra-a100-0", 1)
    assert [d.name for d in s.spec.devices] == [
        "gpu-0", "gpu-1", "gpu-2-mig-1g10gb-19-0", "gpu-2-mig-1g10gb-19-1", "gpu-2-mig-3g40gb-9-4"]
    gpu, mig = s.spec.devices[0], s.spec.devices[2]
    assert gpu.attributes["type"].string == "gpu" and gpu.capacity["memory"].value == "80Gi"
    assert gpu.attributes["productName"].string == "NVIDIA A100-SXM4-80GB"
    assert gpu.attributes["cudaComputeCapability"].version == "8.0.0"
    assert (mig.attributes["type"].string, mig.attributes["profile"].string) == ("mig", "1g.10gb")
    # GPU 2 has MIG enabled: only its MIG devices are published, each naming it as parent.
    assert mig.attributes["uuid"].string.startswith("MIG-")
    assert mig.attributes["parentUUID"].string == s.spec.devices[4].attributes["parentUUID"].string
    assert mig.attributes["parentUUID"].string.startswith("GPU-")
    assert mig.capacity["memory"].value == "9984Mi" and mig.capacity["memorySlice0"].value == "1"
    classes = {c.metadata.name: c for c in resource.list_device_class().items}
    assert classes[dra.GPU_CLASS].spec.extended_resource_name == "nvidia.com/gpu"  # the chart, on resource.k8s.io/v1
    assert classes[dra.MIG_CLASS].spec.extended_resource_name is None
    assert classes[dra.MIG_1G_10GB_CLASS].spec.extended_resource_name == "nvidia.com/mig-1g.10gb"


# ------------------------------------------------------------------ claims from templates
@pytest.mark.parametrize(("device_class", "cel", "kind", "profile"), [
    (dra.MIG_CLASS, MIG_1G, "mig", "1g.10gb"),
    (dra.GPU_CLASS, None, "gpu", None),
], ids=["mig-1g.10gb", "whole-gpu"])
def test_claim_from_template_is_created_allocated_and_the_pod_runs_on_a_dra_node(
        pods: Pods, namespace: str, device_class: str, cel: str | None, kind: str, profile: str | None) -> None:
    pods.cp.apply(dra.claim_template("gpu", namespace, device_class, cel=cel))
    name = pods.create(dra.pod_with_claim(_unique("claim"), namespace, "gpu"))
    pod = pods.running(name)
    assert pod.spec.node_name in DRA_NODES
    claim = pods.template_claim(pod)
    # Made by the resourceclaim controller: named <pod>-<claim>-<random>, owned by the pod.
    assert claim.metadata.name.startswith(f"{name}-gpu-")
    assert claim.metadata.annotations == {"resource.kubernetes.io/pod-claim-name": "gpu"}
    assert [(o.kind, o.name, o.uid, o.controller) for o in claim.metadata.owner_references] == [
        ("Pod", name, pod.metadata.uid, True)]
    # Allocated by the scheduler: a device of the right kind on the node the pod is bound to.
    [(driver, pool, device)] = allocation(claim)
    assert driver == dra.DRIVER and pool == pod.spec.node_name
    assert (pool, device) in dra.devices_of(kind, profile)
    assert [(r.resource, r.name, r.uid) for r in claim.status.reserved_for] == [("pods", name, pod.metadata.uid)]
    assert claim.metadata.finalizers == [dra.ALLOCATION_FINALIZER]
    assert claim.status.allocation.node_selector.node_selector_terms[0].match_fields[0].values == [pool]
    # A deleted pod frees the device: reservation and allocation gone (the claim itself stays:
    # deleting it is the garbage collector's job, which does not run here).
    pods.delete(name)
    # The controller may clear the allocation and drop the finalizer in two writes: wait for both.
    freed = wait_for(lambda: (c := pods.claim(claim.metadata.name)) and not c.status.reserved_for
                             and c.status.allocation is None and not c.metadata.finalizers and c)
    assert freed.status.allocation is None


def test_a_finished_pods_generated_claim_is_deleted(pods: Pods, namespace: str) -> None:
    pods.cp.apply(dra.claim_template("gpu", namespace, dra.MIG_CLASS, cel=MIG_1G))
    name = pods.create(dra.pod_with_claim(_unique("done"), namespace, "gpu", labels={COMPLETE_AFTER_LABEL: "1s"}))
    pod = pods.cp.wait_for_pod(namespace, name, lambda p: p.status.phase == "Succeeded")
    claim_name = pod.status.resource_claim_statuses[0].resource_claim_name
    wait_for(lambda: claim_name not in {
        c.metadata.name for c in pods.resource.list_namespaced_resource_claim(namespace).items})


def test_when_every_matching_device_is_taken_the_next_pod_waits_until_one_is_freed(
        pods: Pods, namespace: str) -> None:
    free = dra.devices_of("mig", "1g.10gb") - dra.allocated_devices(pods.cp)
    assert free, "no free 1g.10gb device: some earlier test left its pods"
    pods.cp.apply(dra.claim_template("mig1g", namespace, dra.MIG_CLASS, cel=MIG_1G))
    holders = [pods.create(dra.pod_with_claim(f"holder-{i}", namespace, "mig1g")) for i in range(len(free))]
    taken = {allocation(pods.template_claim(pods.running(h)))[0][1:] for h in holders}
    assert taken == free
    waiting = pods.create(dra.pod_with_claim("waiting", namespace, "mig1g"))
    cond = pods.unschedulable(waiting)
    assert cond.reason == "Unschedulable"
    # Every node fails on the claim: the DRA nodes have no free matching device, the others
    # publish no devices ("0/11 nodes are available: 11 cannot allocate all claims.").
    assert "cannot allocate all claims" in cond.message, cond.message
    # Free one device: the waiting pod gets it.
    released = pods.template_claim(pods.core.read_namespaced_pod(holders[0], namespace))
    [(_, pool, device)] = allocation(released)
    pods.delete(holders[0])
    pod = pods.running(waiting)
    [(_, got_pool, got_device)] = allocation(pods.template_claim(pod))
    assert (got_pool, got_device) == (pool, device) and pod.spec.node_name == pool


# ------------------------------------------------------------------- KEP-5004 extended resources
@pytest.mark.parametrize(("resource", "device_class", "kind", "profile"), [
    (dra.MIG_1G_10GB_RESOURCE, dra.MIG_1G_10GB_CLASS, "mig", "1g.10gb"),
    (dra.GPU_RESOURCE, dra.GPU_CLASS, "gpu", None),
    # Every class also answers to its implicit name deviceclass.resource.kubernetes.io/<class>.
    (f"deviceclass.resource.kubernetes.io/{dra.MIG_CLASS}", dra.MIG_CLASS, "mig", None),
], ids=["mig-1g.10gb", "nvidia.com-gpu", "implicit-name"])
def test_an_extended_resource_request_is_served_by_dra_through_the_device_class(
        pods: Pods, namespace: str, resource: str, device_class: str, kind: str, profile: str | None) -> None:
    """KEP-5004 (DRAExtendedResource, beta and on by default in 1.36): a pod asking for
    `resource` as a plain extended resource, with no claim, pinned to the DRA pool (whose nodes do
    not advertise it), is scheduled there; the scheduler itself creates a special ResourceClaim
    in the pod's namespace and records it in the pod's status.extendedResourceClaimStatus."""
    name = pods.create(extended_resource_pod(_unique("ext"), namespace, resource, node_selector=dra.DRA_SELECTOR))
    pod = pods.running(name)
    assert pod.spec.node_name in DRA_NODES
    assert not pod.spec.resource_claims and not pod.status.resource_claim_statuses  # the spec is not touched
    status = pod.status.extended_resource_claim_status
    assert [(m.container_name, m.request_name, m.resource_name) for m in status.request_mappings] == [
        ("base", "container-0-request-0", resource)]
    claim = pods.claim(status.resource_claim_name)
    assert claim.metadata.generate_name == f"{name}-extended-resources-"
    assert claim.metadata.annotations == {dra.EXTENDED_RESOURCE_CLAIM_ANNOTATION: "true"}
    assert [(o.kind, o.name, o.uid, o.controller) for o in claim.metadata.owner_references] == [
        ("Pod", name, pod.metadata.uid, True)]
    [request] = claim.spec.devices.requests
    assert (request.name, request.exactly.device_class_name, request.exactly.allocation_mode,
            request.exactly.count, request.exactly.selectors) == (
        "container-0-request-0", device_class, "ExactCount", 1, None)
    [(driver, pool, device)] = allocation(claim)
    assert driver == dra.DRIVER and pool == pod.spec.node_name
    assert (pool, device) in dra.devices_of(kind, profile)
    assert [(r.resource, r.name) for r in claim.status.reserved_for] == [("pods", name)]
    # Finishing the pod (kwok's completion label) ends the claim: the controller deletes it.
    pods.core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {COMPLETE_AFTER_LABEL: "0s"}}})
    pods.cp.wait_for_pod(namespace, name, lambda p: p.status.phase == "Succeeded")
    wait_for(lambda: claim.metadata.name not in {
        c.metadata.name for c in pods.resource.list_namespaced_resource_claim(namespace).items})


# ------------------------------------------------------------------------ mixed cluster
def test_device_plugin_and_dra_pools_side_by_side(pods: Pods, namespace: str) -> None:
    """The same cluster serves a device-plugin pod from a node's allocatable (no claim, although a
    DeviceClass maps its resource: a node that advertises the resource keeps the device plugin
    path) and a claim pod from the DRA pool."""
    core = pods.core
    plugin = pods.create(extended_resource_pod(
        _unique("plugin"), namespace, dra.MIG_1G_10GB_RESOURCE,
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig.strategy": "mixed"}))
    pods.cp.apply(dra.claim_template("gpu", namespace, dra.MIG_CLASS, cel=MIG_1G))
    claimed = pods.create(dra.pod_with_claim(_unique("claim"), namespace, "gpu"))
    plugin_pod, claim_pod = pods.running(plugin), pods.running(claimed)
    assert core.read_node(plugin_pod.spec.node_name).metadata.labels[POOL_LABEL] == "a100-mig-mixed"
    assert plugin_pod.status.extended_resource_claim_status is None
    assert not [c for c in pods.resource.list_namespaced_resource_claim(namespace).items
                if (c.metadata.annotations or {}).get(dra.EXTENDED_RESOURCE_CLAIM_ANNOTATION)]
    assert core.read_node(claim_pod.spec.node_name).metadata.labels[POOL_LABEL] == "dra-a100"
    [(_, pool, device)] = allocation(pods.template_claim(claim_pod))
    assert (pool, device) in dra.devices_of("mig", "1g.10gb")
