"""`serve --track-usage` and `gpu-webhook usage` against the real API server: quota is charged
against the GPU pods really running, a finished pod frees its share, and the operator's table
names the holders."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from kubernetes.client.rest import ApiException

from .conftest import RegisteredWebhook, airflow_pod
from .controlplane import COMPLETE_AFTER_LABEL
from conftest import POLICY_FILE

pytestmark = pytest.mark.e2e

#: Tenant forecasting (namespace airflow, dag_id nightly_*) may hold 2 nvidia.com/gpu.
NAMESPACE, CASE = "airflow", "kpo_nightly_a100"


def _create(webhook: RegisteredWebhook, name: str) -> None:
    pod = airflow_pod(CASE, name, complete_after=None)   # runs until told to finish
    webhook.core.create_namespaced_pod(NAMESPACE, pod)


def _denial(webhook: RegisteredWebhook, name: str) -> str | None:
    try:
        _create(webhook, name)
    except ApiException as err:
        return json.loads(err.body)["message"]
    return None


def test_quota_counts_running_pods_and_a_finished_pod_frees_its_share(tracked_webhook, controlplane):
    first, second = f"nightly-{uuid.uuid4().hex[:6]}", f"nightly-{uuid.uuid4().hex[:6]}"
    _create(tracked_webhook, first)
    _create(tracked_webhook, second)
    for name in (first, second):
        controlplane.wait_for_pod(NAMESPACE, name, lambda p: p.status.phase == "Running", timeout=30)
    deadline = time.monotonic() + 15   # the watch sees the second pod within moments
    while (message := _denial(tracked_webhook, f"third-{uuid.uuid4().hex[:6]}")) is None:
        assert time.monotonic() < deadline, "a third 1-GPU pod was admitted over a quota of 2"
    assert "exceeded quota: tenant forecasting, nvidia.com/gpu, requested: 1, used: 2, limited: 2" in message
    assert f"held by nightly_forecast/fit (airflow/{first}) (1 GPU-eq)" in message or \
        f"held by nightly_forecast/fit (airflow/{second}) (1 GPU-eq)" in message, message
    metrics = tracked_webhook.server.client.get("/metrics").text   # what it charged against, as a gauge
    assert 'gpu_webhook_tenant_usage{line="nvidia.com/gpu",resource="nvidia_com_gpu",tenant="forecasting"} 2.0' in metrics
    assert 'gpu_webhook_watch_synced{watch="pods"} 1.0' in metrics

    tracked_webhook.core.patch_namespaced_pod(first, NAMESPACE, {"metadata": {"labels": {COMPLETE_AFTER_LABEL: "0s"}}})
    controlplane.wait_for_pod(NAMESPACE, first, lambda p: p.status.phase == "Succeeded", timeout=30)
    deadline = time.monotonic() + 15
    while _denial(tracked_webhook, replacement := f"after-{uuid.uuid4().hex[:6]}") is not None:
        assert time.monotonic() < deadline, "the finished pod's GPU was never freed"
    table = subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", "usage", "--policy", str(POLICY_FILE),
                            "--kubeconfig", str(controlplane.kubeconfig), "--tenant", "forecasting"],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "nvidia.com/gpu                  2 / 2" in table.stdout
    assert f"nightly_forecast/fit (airflow/{second})" in table.stdout
    assert f"(airflow/{replacement})" in table.stdout and f"(airflow/{first})" not in table.stdout
    for name in (second, replacement):   # leave the session's GPU capacity free
        tracked_webhook.core.patch_namespaced_pod(name, NAMESPACE, {"metadata": {"labels": {COMPLETE_AFTER_LABEL: "0s"}}})
