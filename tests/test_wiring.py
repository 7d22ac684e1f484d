"""track_usage: the Tracking value a server runtime is built with, over a stand-in API client."""

from __future__ import annotations

import json
import time
from decimal import Decimal as D

import jsonpatch
import pytest
from cluster_fakes import FakeApi
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.cluster.wiring import track_usage
from airflow_gpu_webhook.core.dra import claim_template, desired_templates
from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.server.app import AdmissionEndpoints, Runtime
from airflow_gpu_webhook.server.metrics import WebhookMetrics
from airflow_gpu_webhook.server.review import parse_review

from conftest import admission_review, airflow_fixture, policy_with

NODE = {"metadata": {"name": "gpu-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}}}


def _stored(policy) -> dict:
    case = airflow_fixture("kpo_h100_count2")
    pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], case["namespace"], policy).patch))
    pod["metadata"].update(uid="u1", namespace=case["namespace"], name="task-1")
    pod["status"] = {"phase": "Running"}
    return pod


@pytest.fixture
def tracked(policy):
    metrics = WebhookMetrics()
    tracking = track_usage(FakeApi([_stored(policy)], [], nodes=[NODE]), policy, metrics, "ledger", grace=10)
    yield tracking, metrics
    tracking.stop()


def _until(check, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


def test_once_the_watches_synced_the_tracking_answers_usage_nodes_and_readiness(tracked):
    tracking, _ = tracked
    assert _until(tracking.ready) and _until(lambda: tracking.nodes()[1])
    assert tracking.usage()["vision"]["nvidia.com/gpu"] == D(2)
    offers, synced = tracking.nodes()
    assert synced and [o.name for o in offers] == ["gpu-0"]


def test_a_runtime_built_from_the_tracking_reads_the_cluster(tracked, policy):
    tracking, metrics = tracked
    runtime = Runtime(policy, usage=tracking.usage, ready=tracking.ready, nodes=tracking.nodes,
                      reserve=tracking.reserve, metrics=metrics)
    assert _until(runtime.ready)
    assert runtime.usage()["vision"]["nvidia.com/gpu"] == D(2) and runtime.reserve is tracking.reserve
    assert b'gpu_webhook_watch_synced{watch="pods"} 1.0' in metrics.exposition()


def test_a_policy_reload_reweighs_the_tracked_pods(tracked, policy):
    tracking, _ = tracked
    assert _until(tracking.ready)
    profiles = {name: p.model_dump(mode="json", exclude_none=True) for name, p in policy.spec.profiles.items()}
    profiles["h100-80gb"]["gpuEquivalent"] = 3
    tracking.apply_policy(policy_with(profiles=profiles))
    assert tracking.usage()["vision"]["gpuEquivalent"] == D(6)   # 2 GPUs x the new weight 3


# ----------------------------------------------------------------- DRA: devices and claim templates
SLICES, CLASSES, TEMPLATES = ("/apis/resource.k8s.io/v1/resourceslices", "/apis/resource.k8s.io/v1/deviceclasses",
                              "/apis/resource.k8s.io/v1/resourceclaimtemplates")
A100_SLICE = {"metadata": {"name": "gpu-0-slice"},
              "spec": {"driver": "gpu.nvidia.com", "nodeName": "gpu-0", "pool": {"name": "gpu-0", "generation": 1,
                                                                                "resourceSliceCount": 1},
                       "devices": [{"name": f"gpu-{i}", "attributes": {
                           "productName": {"string": "NVIDIA A100-SXM4-80GB"}}} for i in range(2)]}}
GPU_CLASS = {"metadata": {"name": "gpu.nvidia.com"},
             "spec": {"selectors": [{"cel": {"expression": 'device.driver == "gpu.nvidia.com"'}}]}}


def _dra_api(dra_policy, **served) -> FakeApi:
    current = claim_template("a100-dra", dra_policy.spec.profiles["a100-dra"], "ml-jobs")
    current["metadata"].update(uid="u-1", resourceVersion="90")
    return FakeApi([], [], nodes=[NODE], served={SLICES: [A100_SLICE], CLASSES: [GPU_CLASS], TEMPLATES: [current],
                                                 **served})


@pytest.fixture
def dra_tracked(dra_policy):
    metrics = WebhookMetrics()
    api = _dra_api(dra_policy)
    tracking = track_usage(api, dra_policy, metrics, "ledger", grace=10)
    yield tracking, api, metrics
    tracking.stop()


def test_with_dra_profiles_the_tracking_counts_devices_and_creates_the_missing_templates(dra_tracked, dra_policy):
    tracking, api, metrics = dra_tracked
    desired = desired_templates(dra_policy)
    assert _until(lambda: tracking.templates() == frozenset(desired))
    created = sorted((path, body["metadata"]["name"]) for method, path, body in api.writes if method == "POST")
    assert created == sorted((f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates", name)
                             for ns, name in desired if (ns, name) != ("ml-jobs", "gpu-platform-a100-dra"))
    assert all(body == desired[body["metadata"]["namespace"], body["metadata"]["name"]] for _, _, body in api.writes)
    assert _until(lambda: dict(tracking.nodes()[0][0].allocatable).get("dra.gpu.platform/a100-dra") == 2)
    exposition = metrics.exposition()
    for watch in ("resourceslices", "deviceclasses", "claimtemplates"):
        assert f'gpu_webhook_watch_synced{{watch="{watch}"}} 1.0'.encode() in exposition
    assert b'gpu_webhook_claim_templates_total{result="created"} 3.0' in exposition


class NoDraApi(FakeApi):
    """An API server that does not serve resource.k8s.io (or an RBAC that does not let us read it)."""

    def call_api(self, path, method, *args, **kw):
        if path.startswith("/apis/resource.k8s.io/"):
            raise ApiException(status=404, reason="NotFound")
        return super().call_api(path, method, *args, **kw)


def test_until_the_dra_watches_have_synced_no_pod_is_refused_for_a_missing_template_or_capacity(dra_policy):
    tracking = track_usage(NoDraApi([], [], nodes=[NODE]), dra_policy, WebhookMetrics(), "ledger", grace=10)
    try:
        time.sleep(0.2)
        assert tracking.templates() is None
        offers, synced = tracking.nodes()
        assert not synced or all("dra.gpu.platform/a100-dra" in o.unknown for o in offers)
    finally:
        tracking.stop()


def test_the_dra_watches_start_with_the_first_policy_that_has_a_dra_profile(policy, dra_policy):
    api = _dra_api(dra_policy)
    metrics = WebhookMetrics()
    tracking = track_usage(api, policy, metrics, "ledger", grace=10)
    try:
        assert _until(tracking.ready)
        time.sleep(0.2)
        assert b'watch="resourceslices"' not in metrics.exposition() and tracking.templates() is None
        tracking.apply_policy(dra_policy)
        assert _until(lambda: tracking.templates() == frozenset(desired_templates(dra_policy)))
        assert b'gpu_webhook_watch_synced{watch="resourceslices"} 1.0' in metrics.exposition()
    finally:
        tracking.stop()


class UnwritableApi(FakeApi):
    """Templates cannot be written (an RBAC without create)."""

    def call_api(self, path, method, *args, **kw):
        if method != "GET":
            raise ApiException(status=403, reason="Forbidden")
        return super().call_api(path, method, *args, **kw)


def test_a_runtime_built_with_the_templates_refuses_a_dra_pod_whose_namespace_lacks_its_template(dra_policy):
    api = UnwritableApi([], [], nodes=[NODE], served={SLICES: [], CLASSES: [], TEMPLATES: []})
    tracking = track_usage(api, dra_policy, WebhookMetrics(), "ledger", grace=10)
    try:
        assert _until(lambda: tracking.templates() is not None)
        case = airflow_fixture("kpo_h100_count2")
        case["pod"]["metadata"]["labels"].update({"gpu.platform/profile": "a100-dra"})
        pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], "ml-jobs", dra_policy).patch))
        runtime = Runtime(dra_policy, nodes=tracking.nodes, templates=tracking.templates)
        review = parse_review(json.dumps(admission_review(pod, "ml-jobs")).encode())
        decision = AdmissionEndpoints(runtime, None).steps["/validate"](review)
        assert decision.reason == "no-claim-template" and "namespace 'ml-jobs'" in decision.message
    finally:
        tracking.stop()


# --- the benchmark knob (benchmarks/admission.py): the ledger's speed-ups switched off one by one ---
def test_the_benchmark_knob_names_the_ledger_speedups_switched_off():
    from airflow_gpu_webhook.cluster.wiring import BENCHMARK_LEDGER_ENV, ledger_levers_off

    assert ledger_levers_off({}) == frozenset()
    assert ledger_levers_off({BENCHMARK_LEDGER_ENV: " cache, group-commit ,"}) == {"cache", "group-commit"}
    with pytest.raises(ValueError, match="unknown group_commit"):
        ledger_levers_off({BENCHMARK_LEDGER_ENV: "group_commit"})


@pytest.mark.parametrize("levers_off", [{"group-commit"}, {"cache"}, {"group-commit", "cache"}])
def test_without_a_speedup_the_tracking_still_judges_with_the_ledger(policy, levers_off):
    metrics = WebhookMetrics()
    tracking = track_usage(FakeApi([_stored(policy)], [], nodes=[NODE]), policy, metrics, "ledger", grace=10,
                           levers_off=frozenset(levers_off))
    try:
        assert _until(tracking.ready)
        assert tracking.reserve.max_batch == (1 if "group-commit" in levers_off else 100)
        assert (tracking.reserve.ledger.cache is None) == ("cache" in levers_off)
        assert (b'gpu_webhook_watch_synced{watch="ledger"}' in metrics.exposition()) == ("cache" not in levers_off)
    finally:
        tracking.stop()
    assert b'gpu_webhook_watch_synced{watch="pods"} 1.0' in metrics.exposition()
