"""Red team, second pass, on the real API server as a hostile tenant: a ServiceAccount holding the
default ``edit`` role in ``airflow`` (where tenant forecasting's ``nightly_*`` pods run), against
two ``serve --track-usage`` replicas behind a round-robin balancer (tests/e2e/quota_cluster.py:
tenant forecasting's quota 5 x ``nvidia.com/gpu``, the ledger in ``default``, its watched cache).

Render-level and pure cases (the chart's namespaces, the ledger's queue, Airflow pools) are in
tests/test_redteam2.py. Everything here held; each docstring says what was tried.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import airflow_pod, tenant_user
from .controlplane import ControlPlane
from .quota_cluster import QUOTA, Replicas, burst_client, finish, serving

pytestmark = pytest.mark.e2e

TENANT_NS = "airflow"
CASE = "kpo_nightly_a100"      # tenant forecasting (namespace airflow, dag_id nightly_*), 1 x nvidia.com/gpu
LEDGER_NS = "default"          # where tracked_webhook keeps its ledger (tests/e2e/conftest.py)


@pytest.fixture(scope="module")
def replicas(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    yield from serving(controlplane, tmp_path_factory.mktemp("replicas"))


@pytest.fixture
def tenant(controlplane, edit_role_ready, replicas, tmp_path) -> client.ApiClient:
    return tenant_user(controlplane, TENANT_NS, tmp_path, name=f"rt2-{uuid.uuid4().hex[:6]}")


def _poisoned_ledger(prunedThrough: str = "999999999999999") -> dict:
    """What the webhook's ledger cache would take from a ConfigMap it watched: a reservation
    filling the quota and a prunedThrough no watch ever reaches (every round a 503)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "gpu-webhook-ledger-forecasting",
                         "labels": {"app.kubernetes.io/name": "gpu-webhook", "gpu.platform/ledger": "true"}},
            "data": {"reservations": json.dumps({str(uuid.uuid4()): {"charge": {"nvidia.com/gpu": "100",
                                                                                 "gpuEquivalent": "100"},
                                                                      "at": time.time() + 10**9, "pod": "airflow/x"}}),
                     "prunedThrough": prunedThrough}}


def _create_admitted(core: client.CoreV1Api, prefix: str, deadline: float = 20.0) -> client.V1Pod:
    """A forecasting GPU pod created as the tenant; retried while an earlier one still holds the quota."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            return core.create_namespaced_pod(TENANT_NS, airflow_pod(CASE, f"{prefix}-{uuid.uuid4().hex[:6]}"))
        except ApiException as err:
            message = json.loads(err.body).get("message", "")
            if time.monotonic() > give_up or not ("exceeded quota" in message or "retry" in message):
                raise
            time.sleep(0.5)


def test_a_ledger_look_alike_in_the_tenants_namespace_is_not_read(tenant) -> None:
    """The cache watches ConfigMaps labelled ``gpu.platform/ledger=true``: tried making one, with
    the ledger's own name, a reservation of 100 GPUs and a prunedThrough no watch reaches, where
    the tenant may write ConfigMaps (its namespace). The watch is scoped to the ledger namespace:
    the next quota-bound pod is judged as before (admitted, no 503)."""
    core = client.CoreV1Api(tenant)
    core.create_namespaced_config_map(TENANT_NS, _poisoned_ledger())
    try:
        pod = _create_admitted(core, "rt2-lookalike")
        assert pod.metadata.labels["gpu.platform/tenant"] == "forecasting"
        finish(core, [pod.metadata.name])
    finally:
        core.delete_namespaced_config_map("gpu-webhook-ledger-forecasting", TENANT_NS)


@pytest.mark.parametrize("call", [
    pytest.param(lambda core: core.create_namespaced_config_map(LEDGER_NS, _poisoned_ledger()), id="create a ledger"),
    pytest.param(lambda core: core.replace_namespaced_config_map("gpu-webhook-ledger-forecasting", LEDGER_NS,
                                                                 _poisoned_ledger()), id="replace the ledger"),
    pytest.param(lambda core: core.patch_namespaced_config_map("gpu-webhook-ledger-forecasting", LEDGER_NS,
                                                               {"data": {"reservations": "{}"}}), id="erase reservations"),
    pytest.param(lambda core: core.delete_namespaced_config_map("gpu-webhook-ledger-forecasting", LEDGER_NS),
                 id="delete the ledger"),
    pytest.param(lambda core: core.list_namespaced_config_map(LEDGER_NS, watch=False), id="read the ledger"),
])
def test_the_tenant_cannot_touch_the_ledger(tenant, call) -> None:
    with pytest.raises(ApiException) as denied:
        call(client.CoreV1Api(tenant))
    assert denied.value.status == 403


def test_pod_status_updates_cannot_move_the_stamps(tenant) -> None:
    """Status updates (``pods/status``) never reach the UPDATE check (docs/security.md), and the
    API server's pod status strategy keeps the spec but not the labels. Tried removing the
    accounting stamps through ``pods/status``: ``edit`` grants no update of ``pods/status``."""
    core = client.CoreV1Api(tenant)
    pod = _create_admitted(core, "rt2-status")
    finish(core, [pod.metadata.name])
    for body in ({"metadata": {"labels": {"gpu.platform/managed": None, "gpu.platform/tenant": None}}},
                 {"metadata": {"labels": {"gpu.platform/tenant": "vision"}}}):
        with pytest.raises(ApiException) as denied:
            core.patch_namespaced_pod_status(pod.metadata.name, TENANT_NS, body)
        assert denied.value.status == 403


@pytest.mark.parametrize("call", [
    pytest.param(lambda api: client.CoreV1Api(api).create_namespaced_service_account_token(
        "gpu-webhook-certgen", "gpu-webhook", {"spec": {"expirationSeconds": 600}}),
        id="mint a token of the certgen hook's ServiceAccount"),
    pytest.param(lambda api: client.CoreV1Api(api).create_namespaced_secret("gpu-webhook", {
        "metadata": {"name": "gpu-webhook-tls"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": "", "tls.key": "", "ca.crt": ""}}), id="plant the serving Secret before certgen"),
    pytest.param(lambda api: client.AdmissionregistrationV1Api(api).patch_validating_webhook_configuration(
        "gpu-webhook", [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]),
        id="patch the webhook configuration"),
    pytest.param(lambda api: client.CoreV1Api(api).patch_namespace(TENANT_NS, {
        "metadata": {"labels": {"gpu.platform/exempt": "true"}}}), id="label its namespace exempt"),
    pytest.param(lambda api: client.CoreV1Api(api).create_namespace({
        "metadata": {"name": f"rt2-{uuid.uuid4().hex[:6]}", "labels": {"gpu.platform/exempt": "true"}}}),
        id="create an exempt namespace"),
])
def test_the_tenant_cannot_reach_the_charts_certificate_or_opt_out(controlplane, tenant, call) -> None:
    """The certgen hook trusts whatever valid pair the serving Secret holds (it keeps it and puts
    its CA into both webhook configurations), and its ServiceAccount may create Secrets and patch
    the configurations. Tried from the tenant's namespace: each step needs rights in the
    release's namespace or cluster scope that ``edit`` elsewhere does not give (the namespace
    is made here so that a 403, not a 404, is what answers)."""
    controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpu-webhook"}})
    controlplane.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "gpu-webhook-certgen", "namespace": "gpu-webhook"}})
    with pytest.raises(ApiException) as denied:
        call(tenant)
    assert denied.value.status == 403


def test_a_mixed_burst_by_the_tenant_over_two_replicas_never_exceeds_the_quota(controlplane, tenant) -> None:
    """Group commit checks a batch in arrival order, each request against those admitted before
    it. Tried a burst the batches must order: 60 concurrent creates by the tenant, 1-GPU and
    2-GPU pods interleaved (a 2-GPU pod denied must not stop a later 1-GPU pod being checked
    against the right sum), through both replicas. The GPUs held never exceed the quota (5),
    and the quota is used: a denial leaves less room than the smallest pod it refused."""
    core = burst_client(controlplane, tenant)
    wait_free(core)

    def create(i: int) -> tuple[str, int, str]:
        count = 2 if i % 2 else 1
        pod = airflow_pod(CASE, f"rt2-mix-{i}-{uuid.uuid4().hex[:6]}", complete_after=None)
        pod["metadata"]["labels"]["gpu.platform/count"] = str(count)
        try:
            core.create_namespaced_pod(TENANT_NS, pod)
            return pod["metadata"]["name"], count, "admitted"
        except ApiException as err:
            return pod["metadata"]["name"], count, json.loads(err.body)["message"]

    with ThreadPoolExecutor(max_workers=25) as pool:
        outcomes = list(pool.map(create, range(60)))
    admitted = [(name, count) for name, count, outcome in outcomes if outcome == "admitted"]
    try:
        held = sum(count for _, count in admitted)
        refusals = {outcome for *_, outcome in outcomes if outcome != "admitted"}
        assert held <= QUOTA, f"{held} GPUs admitted against a quota of {QUOTA}: {admitted}"
        assert all("exceeded quota: tenant forecasting" in r or "retry" in r for r in refusals), refusals
        if any("exceeded quota" in r and "requested: 1," in r for r in refusals):
            assert held == QUOTA, f"a 1-GPU pod was refused with {QUOTA - held} GPU free"
        else:
            assert held >= QUOTA - 1, f"only {held} GPUs admitted: {refusals}"
    finally:
        finish(core, [name for name, _ in admitted])


def wait_free(core: client.CoreV1Api, deadline: float = 30.0) -> None:
    """Until a dry run of a 5-GPU pod passes: the earlier tests' pods have finished in every watch."""
    give_up = time.monotonic() + deadline
    while True:
        pod = airflow_pod(CASE, f"rt2-probe-{uuid.uuid4().hex[:6]}")
        pod["metadata"]["labels"]["gpu.platform/count"] = str(QUOTA)
        try:
            core.create_namespaced_pod(TENANT_NS, pod, dry_run="All")
            return
        except ApiException:
            assert time.monotonic() < give_up, "the quota never came free"
            time.sleep(0.5)


def test_an_in_place_resize_cannot_add_gpus_after_admission(controlplane, tenant) -> None:
    """``pods/resize`` (in-place pod resize) is a subresource neither webhook is called for, so
    had it let a container's ``nvidia.com/gpu`` grow, a pod admitted with 1 GPU would hold more
    than it was charged. Tried on an admitted pod, raising the GPU container's limit and request
    to 4: the tenant (``edit``) may not patch ``pods/resize`` at all (403), and even a user who
    may (the admin here, or a role that grants it) is refused by the API server's validation,
    which resizes only CPU and memory (422)."""
    core = client.CoreV1Api(tenant)
    pod = _create_admitted(core, "rt2-resize")
    try:
        target = next(i for i, c in enumerate(pod.spec.containers)
                      if (c.resources.limits or {}).get("nvidia.com/gpu"))
        patch = {"spec": {"containers": [{"name": pod.spec.containers[target].name, "resources": {
            "limits": {"nvidia.com/gpu": "4"}, "requests": {"nvidia.com/gpu": "4"}}}]}}
        with pytest.raises(ApiException) as refused:
            core.patch_namespaced_pod_resize(pod.metadata.name, TENANT_NS, patch)
        assert refused.value.status == 403, refused.value.body
        with pytest.raises(ApiException) as invalid:
            client.CoreV1Api(controlplane.api_client()).patch_namespaced_pod_resize(pod.metadata.name, TENANT_NS,
                                                                                    patch)
        assert invalid.value.status == 422, invalid.value.body
        now = core.read_namespaced_pod(pod.metadata.name, TENANT_NS)
        assert now.spec.containers[target].resources.limits["nvidia.com/gpu"] == "1"
    finally:
        finish(core, [pod.metadata.name])


def test_pod_level_resources_cannot_ask_for_a_gpu_past_the_webhook(tenant) -> None:
    """Pod-level ``spec.resources`` (beside the containers') is not read by the CEL conditions
    or the quota. Tried a pod without the profile label asking for ``nvidia.com/gpu`` there: the
    API server refuses any pod-level resource but CPU, memory and hugepages (422), so no GPU can
    be asked for where the webhook does not look."""
    core = client.CoreV1Api(tenant)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"rt2-podlevel-{uuid.uuid4().hex[:6]}"},
           "spec": {"resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "1"}},
                    "containers": [{"name": "base", "image": "trainer"}]}}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(TENANT_NS, pod)
    assert refused.value.status == 422, refused.value.body
    assert "nvidia.com/gpu" in json.loads(refused.value.body)["message"]
