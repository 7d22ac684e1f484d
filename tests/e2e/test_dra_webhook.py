"""DRA profiles end to end through the webhook as it ships (issue 19): two `gpu-webhook serve
--track-usage` replicas behind one address (the shipped Deployment runs two; the round-robin
balancer of quota_cluster.py stands in for the Service), registered with the generated
manifests/base/webhook-configurations.yaml (its pod webhooks are also what `gpu-webhook policy
conditions` generates for the DRA policy; only the template webhook's skip condition differs),
serving a policy of docs/examples/policy-dra.yaml plus this module's tenants. The replicas' reconciler installs the claim templates in the tenants'
namespaces; nothing here writes one. Every proof reads back what the API server, the resourceclaim
controller and the scheduler did (the DRA pool of tests/e2e/dra_cluster.py: 4 whole A100s,
4 x MIG 1g.10gb, 2 x MIG 3g.40gb on dra-a100-0/1):

1. Claim form: an Airflow-built pod labelled ``a100-dra-mig-1g.10gb`` (and ``a100-dra`` with
   count 2) is mutated (its claims on ``base`` and the validator, no ``nvidia.com/*``), the
   controller creates its claims from ``gpu-platform-<profile>``, the scheduler allocates a
   1g.10gb MIG device (two distinct whole GPUs of one node) and binds the pod there.
2. Beyond the devices: with quota to spare, once the cluster's four 1g.10gb devices are held the
   next pod is admitted and stays Pending, Unschedulable; under a tenant whose quota binds first
   (2), the third pod is refused at admission with the quota message while a device is still free.
3. A DRA pod of a tenant matched by dag_id prefix only, in a namespace no ``match`` entry names (so
   the reconciler put no template there), is refused (``no-claim-template``), not left Pending.
4. extendedResource form (KEP-5004): the pod is mutated to ask for ``nvidia.com/mig-1g.10gb``
   like a device-plugin pod; this module's policy gives the profile ``gpu.platform/backend: dra``
   as nodeSelector, so only the DRA nodes qualify. They do not advertise that resource, so the
   scheduler honours it through DRA: it creates the claim itself in the pod's namespace
   (``resource.kubernetes.io/extended-resource-claim``), allocates a 1g.10gb device of the class
   ``mig-1g-10gb.gpu.nvidia.com`` and records it in ``status.extendedResourceClaimStatus``: one
   request of one device, mapped to both ``base`` and the validator, so they share it. (On
   the device-plugin MIG nodes, which advertise it, the scheduler would have used their
   allocatable; tests/e2e/test_dra_testbed.py shows both paths without the webhook.)
5. Mixed cluster, real Airflow: ONE `airflow dags test` of tests/e2e/dags/team_dra__mixed_pools.py,
   a KubernetesPodOperator task on a device-plugin profile and one on a DRA claim profile: both
   succeed, the first on a device-plugin MIG node with ``nvidia.com/mig-1g.10gb``, the second on a
   DRA node with an allocated claim (seen while it ran: a finished pod's claims are deleted).
6. Quota over both kinds: 100 concurrent creates over the two replicas, device-plugin MIG pods and
   DRA MIG pods of one tenant whose ``nvidia.com/mig-1g.10gb`` line is 14: exactly 14 units
   admitted, across both kinds.

The DRA pool is the session's: each test deletes its pods and waits until their devices are free.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.core.dra import template_matches
from airflow_gpu_webhook.core.policy import parse_policy

from . import dra_cluster as dra
from .airflow_run import AirflowHome, DagRunResult, dags_test, explain, pod_of
from .airflow_run import airflow_home as start_airflow_home
from .conftest import airflow_pod
from .controlplane import POOL_LABEL, ControlPlane
from .dra_cluster import allocation, wait_for
from .quota_cluster import Replicas, burst, burst_client, create, serving
from conftest import DRA_POLICY_FILE

pytestmark = pytest.mark.e2e

PROFILE, COUNT = "gpu.platform/profile", "gpu.platform/count"
MIG_DRA, GPU_DRA, MIG_ER, MIG_DP = "a100-dra-mig-1g.10gb", "a100-dra", "a100-mig-1g.10gb-er", "a100-mig-1g.10gb"
MIG_RESOURCE = dra.MIG_1G_10GB_RESOURCE
#: This module's tenant namespaces (etcd lives for the session only; no other module uses them).
LAB, TIGHT, NO_TEMPLATE, AIRFLOW_NS, BURST = "drawh-lab", "drawh-tight", "drawh-nons", "drawh-airflow", "drawh-burst"
#: Namespaces a tenant's match entry names: the reconciler puts the claim templates there.
TEMPLATE_NAMESPACES = (LAB, TIGHT, AIRFLOW_NS, BURST)
NO_TEMPLATE_DAG_ID = "drawh_nons__etl"
DAG_ID = "team_dra__mixed_pools"   # tests/e2e/dags/team_dra__mixed_pools.py
TIGHT_QUOTA, BURST_QUOTA = 2, 14
DRA_NODES = {n["metadata"]["name"] for n in dra.dra_nodes()}
MIG_1G = dra.devices_of("mig", "1g.10gb")
VALIDATOR = "gpu-driver-validation"


def policy_data() -> dict[str, Any]:
    """docs/examples/policy-dra.yaml, the KEP-5004 profile pinned to the DRA pool, and one tenant
    per proof (quota to spare unless the proof is about quota)."""
    data = yaml.safe_load(DRA_POLICY_FILE.read_text())
    data["spec"]["profiles"][MIG_ER]["nodeSelector"] = dict(dra.DRA_SELECTOR)
    roomy = {"nvidia.com/gpu": 100, MIG_RESOURCE: 100, "gpuEquivalent": 100}
    data["spec"]["tenants"].update({
        "dra-lab": {"match": [{"namespace": LAB}], "quota": roomy},
        "dra-tight": {"match": [{"namespace": TIGHT}], "quota": {MIG_RESOURCE: TIGHT_QUOTA, "gpuEquivalent": 100}},
        # matched by dag_id alone: no namespace named, so no template anywhere for this tenant
        "dra-dags": {"match": [{"dagIdPrefix": NO_TEMPLATE_DAG_ID.split("__")[0] + "__"}], "quota": roomy},
        "dra-airflow": {"match": [{"namespace": AIRFLOW_NS, "dagIdPrefix": "team_dra__"}], "quota": roomy},
        "dra-burst": {"match": [{"namespace": BURST}], "quota": {MIG_RESOURCE: BURST_QUOTA, "gpuEquivalent": 100}},
    })
    return data


POLICY = parse_policy(policy_data())


def _metrics_say_synced(text: str) -> bool:
    return 'gpu_webhook_watch_synced{watch="claimtemplates"} 1.0' in text


@pytest.fixture(scope="module")
def replicas(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two tracked replicas serving this module's policy, once both have their template watch synced
    and the reconciler has put every claim profile's template in every tenant namespace."""
    tmp = tmp_path_factory.mktemp("dra-webhook")
    for name in (LAB, TIGHT, NO_TEMPLATE, AIRFLOW_NS, BURST):
        controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    policy = tmp / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_data(), sort_keys=False))
    served = serving(controlplane, tmp, policy=policy)
    started = next(served)
    try:
        resource = client.ResourceV1Api(controlplane.api_client())
        wanted = {f"gpu-platform-{MIG_DRA}", f"gpu-platform-{GPU_DRA}"}
        wait_for(lambda: all(wanted <= {t.metadata.name for t in resource.list_namespaced_resource_claim_template(ns).items}
                             for ns in TEMPLATE_NAMESPACES), timeout=30)
        wait_for(lambda: all(_metrics_say_synced(server.client.get("/metrics").text)
                             for server in (started.first.server, started.second)), timeout=30)
        yield started
    finally:
        next(served, None)   # unregister, stop


def gpu_pod(namespace: str, profile: str, *, count: int = 1, name: str | None = None, prefix: str = "dra",
            complete_after: str | None = None, dag_id: str | None = None) -> dict[str, Any]:
    """An Airflow-built KubernetesPodOperator pod (fixture kpo_h100_count2) relabelled for
    ``count`` x ``profile`` in ``namespace``; it stays Running unless ``complete_after`` is given."""
    pod = airflow_pod("kpo_h100_count2", name or f"{prefix}-{uuid.uuid4().hex[:8]}", complete_after=complete_after)
    pod["metadata"]["namespace"] = namespace
    labels = pod["metadata"]["labels"]
    labels[PROFILE] = profile
    labels.pop(COUNT)
    if count != 1:
        labels[COUNT] = str(count)
    if dag_id:
        labels["dag_id"] = dag_id
    return pod


class Pods:
    """Pods a test creates through the webhook; at the end all are deleted and the test waits until
    their claims are deallocated (the DRA pool is the session's)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.core = client.CoreV1Api(cp.api_client())
        self.resource = client.ResourceV1Api(cp.api_client())
        self.created: list[tuple[str, str]] = []

    def create(self, pod: dict[str, Any]) -> Any:
        """The pod as the API server stored it (mutated)."""
        created = self.core.create_namespaced_pod(pod["metadata"]["namespace"], pod)
        self.created.append((created.metadata.namespace, created.metadata.name))
        return created

    def track(self, namespace: str, names: list[str]) -> None:
        self.created += [(namespace, name) for name in names]

    def refusal(self, pod: dict[str, Any]) -> str:
        """The API server's message refusing ``pod`` (a 403 from an admission webhook)."""
        with pytest.raises(ApiException) as refused:
            self.create(pod)
        assert refused.value.status == 403, refused.value.body
        return str(json.loads(refused.value.body)["message"])

    def read(self, pod: Any) -> Any:
        return self.core.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)

    def running(self, pod: Any, timeout: float = 30.0) -> Any:
        return self.cp.wait_for_pod(pod.metadata.namespace, pod.metadata.name, lambda p: p.status.phase == "Running",
                                    timeout=timeout)

    def unschedulable(self, pod: Any) -> Any:
        """The PodScheduled=False condition the scheduler wrote."""
        found = self.cp.wait_for_pod(pod.metadata.namespace, pod.metadata.name, lambda p: any(
            c.type == "PodScheduled" and c.status == "False" for c in (p.status.conditions or [])), timeout=30)
        return next(c for c in found.status.conditions if c.type == "PodScheduled")

    def claim(self, namespace: str, name: str) -> Any:
        return self.resource.read_namespaced_resource_claim(name, namespace)

    def template_claims(self, pod: Any) -> dict[str, Any]:
        """The pod's claims made from templates, by the pod's claim name (status.resourceClaimStatuses)."""
        return {s.name: self.claim(pod.metadata.namespace, s.resource_claim_name)
                for s in pod.status.resource_claim_statuses or []}

    def devices(self, pod: Any) -> list[tuple[str, str]]:
        """(pool, device) allocated to the pod's claims, template and extended-resource ones."""
        claims = list(self.template_claims(pod).values())
        if pod.status.extended_resource_claim_status:
            claims.append(self.claim(pod.metadata.namespace, pod.status.extended_resource_claim_status.resource_claim_name))
        return [(pool, device) for c in claims for _, pool, device in allocation(c)]

    def _claim_names(self) -> set[tuple[str, str]]:
        names = set()
        for namespace, name in self.created:
            try:
                pod = self.core.read_namespaced_pod(name, namespace)
            except ApiException as err:
                if err.status == 404:
                    continue
                raise
            names |= {(namespace, s.resource_claim_name) for s in pod.status.resource_claim_statuses or []
                      if s.resource_claim_name}
            if pod.status.extended_resource_claim_status:
                names.add((namespace, pod.status.extended_resource_claim_status.resource_claim_name))
        return names

    def _freed(self, namespace: str, name: str) -> bool:
        try:
            c = self.claim(namespace, name)
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return not c.status.reserved_for and c.status.allocation is None and not c.metadata.finalizers

    def cleanup(self) -> None:
        claims = self._claim_names()
        for namespace, name in self.created:
            try:
                self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            except ApiException as err:
                if err.status != 404:
                    raise
        wait_for(lambda: all(self._freed(*c) for c in claims), timeout=30)


@pytest.fixture
def pods(controlplane: ControlPlane) -> Iterator[Pods]:
    p = Pods(controlplane)
    try:
        yield p
    finally:
        p.cleanup()


def _gpu_resources(container: Any) -> dict[str, str]:
    r = container.resources
    return {k: v for part in ((r and r.limits) or {}, (r and r.requests) or {}) for k, v in part.items()
            if k.startswith("nvidia.com/")}


def _containers(pod: Any) -> dict[str, Any]:
    return {c.name: c for c in [*(pod.spec.init_containers or []), *pod.spec.containers]}


def assert_claim_form(pod: Any, profile: str, count: int) -> list[str]:
    """The claim form's mutation, as the API server stored it; the pod's claim names."""
    names = [f"gpu-platform-{i}" for i in range(count)]
    assert pod.metadata.labels.get("gpu.platform/managed") == "true"
    assert [(c.name, c.resource_claim_template_name) for c in pod.spec.resource_claims] == [
        (n, f"gpu-platform-{profile}") for n in names]
    assert pod.spec.init_containers[0].name == VALIDATOR
    containers = _containers(pod)
    for name in ("base", VALIDATOR):
        assert [c.name for c in containers[name].resources.claims] == names, name
    assert {name: _gpu_resources(c) for name, c in containers.items() if _gpu_resources(c)} == {}
    return names


# ------------------------------------------------------------------------------- 1. claim form
@pytest.mark.parametrize(("profile", "count", "kind", "mig_profile"), [
    pytest.param(MIG_DRA, 1, "mig", "1g.10gb", id="a100-dra-mig-1g.10gb: one 1g.10gb MIG device"),
    pytest.param(GPU_DRA, 2, "gpu", None, id="a100-dra x2: two distinct whole GPUs of one node"),
])
def test_a_claim_profile_pod_gets_devices_from_its_template_and_binds_to_a_dra_node(
        replicas, pods, profile, count, kind, mig_profile):
    free = dra.devices_of(kind, mig_profile) - dra.allocated_devices(pods.cp)
    assert any(sum(pool == node for pool, _ in free) >= count for node in DRA_NODES), (
        f"no DRA node has {count} free {profile} devices: an earlier test holds them ({free} free)")
    created = pods.create(gpu_pod(LAB, profile, count=count))
    names = assert_claim_form(created, profile, count)
    pod = pods.running(created)
    assert pod.spec.node_name in DRA_NODES
    # The controller made one claim per pod claim from the namespace's template (the reconciler's).
    template = json.loads(pods.resource.read_namespaced_resource_claim_template(
        f"gpu-platform-{profile}", LAB, _preload_content=False).data)
    assert template_matches(template, POLICY), template   # the policy's, the API server's defaults aside
    serialize = client.ApiClient().sanitize_for_serialization
    claims = pods.template_claims(pod)
    assert sorted(claims) == names
    for claim_name, claim in claims.items():
        assert claim.metadata.name.startswith(f"{pod.metadata.name}-{claim_name}-")
        assert claim.metadata.annotations == {"resource.kubernetes.io/pod-claim-name": claim_name}
        assert [(o.kind, o.name, o.uid) for o in claim.metadata.owner_references] == [
            ("Pod", pod.metadata.name, pod.metadata.uid)]
        assert serialize(claim.spec) == template["spec"]["spec"]
        assert [(r.resource, r.name) for r in claim.status.reserved_for] == [("pods", pod.metadata.name)]
    devices = pods.devices(pod)
    assert len(set(devices)) == count, devices
    assert {pool for pool, _ in devices} == {pod.spec.node_name}
    assert set(devices) <= dra.devices_of(kind, mig_profile), devices


# --------------------------------------------------------------------------- 2. beyond the devices
def test_with_quota_to_spare_the_pod_beyond_the_cluster_1g_devices_is_admitted_and_stays_unschedulable(
        replicas, pods):
    free = MIG_1G - dra.allocated_devices(pods.cp)
    assert free, "no free 1g.10gb device: an earlier test left its pods"
    holders = [pods.create(gpu_pod(LAB, MIG_DRA)) for _ in free]
    held = {device for h in holders for device in pods.devices(pods.running(h))}
    assert held == free and dra.allocated_devices(pods.cp) >= MIG_1G, "all four 1g.10gb devices are held"
    waiting = pods.create(gpu_pod(LAB, MIG_DRA))   # quota 100: the webhook admits it
    assert_claim_form(waiting, MIG_DRA, 1)
    condition = pods.unschedulable(waiting)
    assert condition.reason == "Unschedulable"
    assert "cannot allocate all claims" in condition.message, condition.message
    pod = pods.read(waiting)
    assert pod.status.phase == "Pending" and pod.spec.node_name is None
    [claim] = pods.template_claims(pod).values()     # the controller made it; nothing could allocate it
    assert claim.status.allocation is None


def test_when_the_tenant_quota_binds_before_the_devices_the_next_pod_is_refused_at_admission(replicas, pods):
    assert len(MIG_1G - dra.allocated_devices(pods.cp)) > TIGHT_QUOTA, "an earlier test holds 1g.10gb devices"
    holders = [pods.running(pods.create(gpu_pod(TIGHT, MIG_DRA))) for _ in range(TIGHT_QUOTA)]
    message = pods.refusal(gpu_pod(TIGHT, MIG_DRA))
    assert message.startswith(
        'admission webhook "validate.gpu.platform" denied the request: exceeded quota: tenant '
        f'dra-tight, {MIG_RESOURCE}, requested: 1, used: {TIGHT_QUOTA}, limited: {TIGHT_QUOTA}; held by '), message
    assert all(f"({TIGHT}/{h.metadata.name}) (0.125 GPU-eq)" in message for h in holders), message
    assert MIG_1G - dra.allocated_devices(pods.cp), "a device was still free: the quota refused it, not the pool"
    assert len(pods.core.list_namespaced_pod(TIGHT).items) == TIGHT_QUOTA


# ------------------------------------------------------------------------------ 3. no template
def test_a_dra_pod_in_a_namespace_without_the_template_is_refused_not_left_pending(replicas, pods):
    resource = client.ResourceV1Api(pods.cp.api_client())
    assert resource.list_namespaced_resource_claim_template(NO_TEMPLATE).items == []
    message = pods.refusal(gpu_pod(NO_TEMPLATE, MIG_DRA, dag_id=NO_TEMPLATE_DAG_ID))
    assert message.startswith('admission webhook "validate.gpu.platform" denied the request: ') and (
        f"namespace {NO_TEMPLATE!r} has no ResourceClaimTemplate 'gpu-platform-{MIG_DRA}' for DRA profile "
        f"{MIG_DRA}" in message), message
    assert pods.core.list_namespaced_pod(NO_TEMPLATE).items == []
    logs = replicas.first.server.log.read_text() + replicas.second.log.read_text()
    assert any(f"namespace={NO_TEMPLATE}" in line and "reason=no-claim-template" in line and "allowed=False" in line
               for line in logs.splitlines()), "the replica logged the refusal with its reason"


# ---------------------------------------------------------------- 4. extendedResource (KEP-5004)
def test_an_extended_resource_profile_pod_asks_for_the_mig_resource_and_the_scheduler_serves_it_through_dra(
        replicas, pods):
    created = pods.create(gpu_pod(LAB, MIG_ER))
    assert created.metadata.labels.get("gpu.platform/managed") == "true"
    assert not created.spec.resource_claims
    containers = _containers(created)
    assert {name: _gpu_resources(c) for name, c in containers.items() if _gpu_resources(c)} == {
        name: {MIG_RESOURCE: "1"} for name in ("base", VALIDATOR)}
    assert created.spec.node_selector == dra.DRA_SELECTOR
    pod = pods.running(created)
    assert pod.spec.node_name in DRA_NODES
    status = pod.status.extended_resource_claim_status
    assert status is not None, pod.status
    claim = pods.claim(LAB, status.resource_claim_name)
    assert claim.metadata.annotations == {dra.EXTENDED_RESOURCE_CLAIM_ANNOTATION: "true"}
    assert claim.metadata.generate_name == f"{pod.metadata.name}-extended-resources-"
    assert [(o.kind, o.name, o.uid) for o in claim.metadata.owner_references] == [
        ("Pod", pod.metadata.name, pod.metadata.uid)]
    # One request of one device, mapped to both containers: the validator checks the task's device.
    [request] = claim.spec.devices.requests
    assert (request.exactly.device_class_name, request.exactly.allocation_mode, request.exactly.count) == (
        dra.MIG_1G_10GB_CLASS, "ExactCount", 1)
    assert sorted((m.container_name, m.request_name, m.resource_name) for m in status.request_mappings) == [
        ("base", request.name, MIG_RESOURCE), (VALIDATOR, request.name, MIG_RESOURCE)]
    devices = pods.devices(pod)
    assert len(devices) == 1, f"one unit, one device: {devices}"
    assert {pool for pool, _ in devices} == {pod.spec.node_name}
    assert set(devices) <= MIG_1G


# ------------------------------------------------------------------ 5. mixed cluster, real Airflow
@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHome]:
    yield from start_airflow_home(tmp_path_factory)


class ClaimsSeen:
    """Every ResourceClaim of a namespace seen allocated, polled on a thread: a finished pod's
    claims are deleted by the resourceclaim controller, so they are read while the pods run."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.resource = client.ResourceV1Api(cp.api_client())
        self.namespace = namespace
        self.allocated: dict[str, Any] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                claims = self.resource.list_namespaced_resource_claim(self.namespace).items
            except ApiException:
                claims = []   # a slow moment of the API server: the next poll reads them
            for c in claims:
                if c.status and c.status.allocation:
                    self.allocated[c.metadata.name] = c
            time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture(scope="module")
def mixed_run(airflow_home, controlplane, replicas) -> tuple[DagRunResult, dict[str, Any]]:
    """ONE `airflow dags test` of team_dra__mixed_pools; the result and the claims seen allocated."""
    seen = ClaimsSeen(controlplane, AIRFLOW_NS)
    try:
        result = dags_test(airflow_home, controlplane, replicas.first, DAG_ID)
    finally:
        seen.close()
    return result, seen.allocated


def test_a_dag_with_a_device_plugin_task_and_a_dra_task_runs_both_to_success(mixed_run, controlplane):
    result, claims = mixed_run
    assert result.task_states == {"device_plugin_mig": "success", "dra_mig": "success"}, (
        explain(result, "device_plugin_mig") + "\n" + explain(result, "dra_mig"))
    assert result.state == "success"
    core = client.CoreV1Api(controlplane.api_client())

    plugin = pod_of(controlplane, result, AIRFLOW_NS, "device_plugin_mig")
    assert plugin.metadata.labels.get("gpu.platform/managed") == "true" and not plugin.spec.resource_claims
    assert {n: _gpu_resources(c) for n, c in _containers(plugin).items() if _gpu_resources(c)} == {
        n: {MIG_RESOURCE: "1"} for n in ("base", VALIDATOR)}
    assert core.read_node(plugin.spec.node_name).metadata.labels[POOL_LABEL] == "a100-mig-mixed"
    assert plugin.status.extended_resource_claim_status is None   # the node's allocatable, not DRA
    assert plugin.status.phase == "Succeeded"

    claimed = pod_of(controlplane, result, AIRFLOW_NS, "dra_mig")
    assert_claim_form(claimed, MIG_DRA, 1)
    assert claimed.spec.node_name in DRA_NODES
    assert claimed.status.phase == "Succeeded"
    [status] = claimed.status.resource_claim_statuses
    claim = claims.get(status.resource_claim_name)
    assert claim is not None, f"claim {status.resource_claim_name} never seen allocated; seen: {sorted(claims)}"
    [(_, pool, device)] = allocation(claim)
    assert pool == claimed.spec.node_name and (pool, device) in MIG_1G
    assert [(r.resource, r.name) for r in claim.status.reserved_for] == [("pods", claimed.metadata.name)]
    # KPO's own later update of each kept pod passed the validating webhook (claims and all).
    assert [p.metadata.labels.get("already_checked") for p in (plugin, claimed)] == ["True", "True"]


# ------------------------------------------------------------------ 6. quota over both, in a burst
def test_a_burst_of_100_creates_mixing_device_plugin_and_dra_pods_admits_exactly_the_quota(
        replicas, pods, controlplane):
    """The pods may stay Pending (4 DRA devices; the DRA pods beyond them are Unschedulable): quota
    counts admitted pods that have not finished. One unit each, so no-node-fits never answers (a
    DRA node offers 2 x 1g.10gb, a MIG-mixed node 28): every refusal is the quota's."""
    core = burst_client(controlplane)
    profiles = (MIG_DP, MIG_DRA)
    # One of each kind first, so both are among the admitted whatever order the burst lands in.
    first = [gpu_pod(BURST, profile, prefix="first") for profile in profiles]
    pods.track(BURST, [p["metadata"]["name"] for p in first])
    assert [create(core, p["metadata"]["name"], p) for p in first] == ["admitted", "admitted"]
    outcomes = burst(core, "burst", count=100 - len(first),
                     make=lambda i, name: gpu_pod(BURST, profiles[i % 2], name=name))
    admitted = [n for n, o in outcomes.items() if o == "admitted"]
    pods.track(BURST, admitted)
    denials = {o for o in outcomes.values() if o != "admitted"}
    assert all(f"exceeded quota: tenant dra-burst, {MIG_RESOURCE}, requested: 1, used: {BURST_QUOTA}, "
               f"limited: {BURST_QUOTA}" in d for d in denials), denials
    # What the API server holds: units across both kinds, each pod one unit of its own kind.
    held = client.CoreV1Api(controlplane.api_client()).list_namespaced_pod(BURST).items
    units = {"device plugin": 0, "DRA claim": 0}
    for pod in held:
        if pod.spec.resource_claims:
            units["DRA claim"] += len(assert_claim_form(pod, MIG_DRA, 1))
        else:
            units["device plugin"] += int(_gpu_resources(_containers(pod)["base"])[MIG_RESOURCE])
    print(f"\nadmitted {units} of {len(outcomes) + len(first)} creates")
    assert len(held) == len(admitted) + len(first)
    assert sum(units.values()) == BURST_QUOTA and all(units.values()), units
    for log in (replicas.first.server.log, replicas.second.log):   # both replicas took part
        assert "reason=quota-exceeded" in log.read_text()
