"""track_usage: the Tracking value a server runtime is built with, over a stand-in API client."""

from __future__ import annotations

import time
from decimal import Decimal as D

import jsonpatch
import pytest
from cluster_fakes import FakeApi

from airflow_gpu_webhook.cluster.wiring import track_usage
from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.server.app import Runtime
from airflow_gpu_webhook.server.metrics import WebhookMetrics

from conftest import airflow_fixture, policy_with

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
