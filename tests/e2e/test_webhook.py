"""The webhook against the real peers: kube-apiserver calls it over verified TLS through the
shipped webhook configurations, kube-scheduler places what it produced, kwok runs it.

Proven here: Airflow-built GPU pods (KubernetesPodOperator and KubernetesExecutor) are mutated
and bound to the right pool; CPU pods are never even sent to the webhook (the CEL
matchConditions and objectSelector work on the real API server); denials reach the client with
the webhook's message; dry runs change nothing; without the webhook a GPU pod stays Pending;
with the webhook down, GPU pods are refused (failurePolicy: Fail) while CPU pods and kube-system
still create.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import RegisteredWebhook, airflow_pod
from .controlplane import ControlPlane

pytestmark = pytest.mark.e2e


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create(webhook: RegisteredWebhook, namespace: str, pod: dict[str, Any], **kwargs: Any) -> Any:
    pod["metadata"]["namespace"] = namespace
    return webhook.core.create_namespaced_pod(namespace, pod, **kwargs)


def message_of(err: ApiException) -> str:
    """The Status message the API server returned (the body is JSON)."""
    return json.loads(err.body)["message"]


def node_of(cp: ControlPlane, namespace: str, name: str) -> Any:
    pod = cp.wait_for_pod(namespace, name, lambda p: bool(p.spec.node_name), timeout=30)
    return client.CoreV1Api(cp.api_client()).read_node(pod.spec.node_name)


def validate_calls(webhook: RegisteredWebhook) -> float:
    """How many AdmissionReviews the webhook's /validate has answered so far (its own metrics)."""
    text = webhook.server.client.get("/metrics").text
    return sum(float(v) for v in re.findall(r'^gpu_webhook_admissions_total\{[^}]*step="validate"[^}]*\} (\S+)$',
                                            text, re.M))


PLACEMENT = [
    ("a KubernetesPodOperator MIG pod lands on an A100 MIG-mixed node", "kpo_mig_1g_xcom", "airflow",
     "nvidia.com/mig-1g.10gb", "1", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig.strategy": "mixed"}),
    ("a 2-GPU H100 pod lands on an H100 node", "kpo_h100_count2", "ml-jobs",
     "nvidia.com/gpu", "2", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
    ("a whole-A100 pod lands on an A100 node, never a MIG-single one", "kpo_nightly_a100", "airflow",
     "nvidia.com/gpu", "1", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
    ("a KubernetesExecutor worker with a GPU pod_override lands on an A100 MIG-mixed node", "executor_gpu_override",
     "airflow", "nvidia.com/mig-1g.10gb", "1", {"nvidia.com/mig.strategy": "mixed"}),
]


@pytest.mark.parametrize("description, case_id, namespace, resource, count, node_labels", PLACEMENT,
                         ids=[p[0] for p in PLACEMENT])
def test_gpu_pods_are_mutated_bound_to_their_pool_and_run(webhook, controlplane, description, case_id, namespace,
                                                         resource, count, node_labels):
    name = unique("gpu")
    stored = create(webhook, namespace, airflow_pod(case_id, name))
    base = next(c for c in stored.spec.containers if c.name == "base")
    assert base.resources.limits[resource] == count and base.resources.requests[resource] == count
    assert stored.spec.init_containers[0].name == "gpu-driver-validation"
    assert stored.metadata.labels["gpu.platform/managed"] == "true"
    node = node_of(controlplane, namespace, name)
    assert {k: node.metadata.labels.get(k) for k in node_labels} == node_labels
    controlplane.wait_for_pod(namespace, name, lambda p: p.status.phase == "Succeeded", timeout=30)


def test_a_cpu_pod_is_untouched_and_never_sent_to_the_webhook(webhook, controlplane):
    before = validate_calls(webhook)
    stored = create(webhook, "airflow", airflow_pod("kpo_cpu_plain", unique("cpu")))
    assert "gpu.platform/managed" not in (stored.metadata.labels or {})
    assert not stored.spec.init_containers
    assert validate_calls(webhook) == before, "the CEL matchConditions should keep CPU pods away from /validate"


DENIED = [
    ("an unknown profile is refused by the mutating webhook, listing the known ones", "kpo_unknown_profile", "ml-jobs",
     'admission webhook "mutate.gpu.platform" denied the request: gpu.platform/profile \'a100-40gb\' is not a known '
     'GPU profile; known profiles: a100-80gb, h100-80gb'),
    ("a pod over its tenant's quota is refused with the quota line", "kpo_quota_breaker", "ml-jobs",
     'admission webhook "validate.gpu.platform" denied the request: exceeded quota: tenant vision, nvidia.com/gpu, '
     'requested: 5, used: 0, limited: 4'),
    ("a CPU pod setting NVIDIA_VISIBLE_DEVICES reaches /validate through the CEL conditions and is refused",
     "kpo_cpu_env_visible_devices", "ml-jobs",
     'admission webhook "validate.gpu.platform" denied the request: container \'base\' sets env NVIDIA_VISIBLE_DEVICES'),
    ("a GPU without the profile label is refused", "kpo_unlabelled_gpu", "ml-jobs",
     'admission webhook "validate.gpu.platform" denied the request: container \'base\' asks for a GPU without'),
    ("a pod of no tenant is refused naming its namespace", "kpo_no_tenant", "analytics",
     "no GPU tenant matches namespace 'analytics'"),
]


@pytest.mark.parametrize("description, case_id, namespace, words", DENIED, ids=[d[0] for d in DENIED])
def test_denials_reach_the_client_with_the_webhooks_message(webhook, description, case_id, namespace, words):
    name = unique("denied")
    with pytest.raises(ApiException) as caught:
        create(webhook, namespace, airflow_pod(case_id, name))
    assert caught.value.status == 403
    assert words in message_of(caught.value)
    with pytest.raises(ApiException) as missing:
        webhook.core.read_namespaced_pod(name, namespace)
    assert missing.value.status == 404


def test_a_dry_run_gets_the_mutation_and_stores_nothing(webhook):
    name = unique("dry")
    answer = create(webhook, "ml-jobs", airflow_pod("kpo_h100_count2", name), dry_run="All")
    assert answer.spec.init_containers[0].name == "gpu-driver-validation"
    with pytest.raises(ApiException) as missing:
        webhook.core.read_namespaced_pod(name, "ml-jobs")
    assert missing.value.status == 404
    with pytest.raises(ApiException) as denied:
        create(webhook, "ml-jobs", airflow_pod("kpo_quota_breaker", unique("dry")), dry_run="All")
    assert "exceeded quota" in message_of(denied.value)


def _labelled_gpu_pod(name: str) -> dict[str, Any]:
    """An Airflow pod that asks for a GPU by hand and carries a profile label."""
    pod = airflow_pod("kpo_unlabelled_gpu", name)
    pod["metadata"]["labels"]["gpu.platform/profile"] = "a100-80gb"
    return pod


def test_without_the_webhook_a_gpu_pod_stays_pending_with_it_it_binds(webhook, controlplane):
    webhook.unregister()
    try:
        bare = unique("bare")
        create(webhook, "ml-jobs", _labelled_gpu_pod(bare))
        condition = controlplane.wait_for_pod("ml-jobs", bare, lambda p: any(
            c.type == "PodScheduled" and c.status == "False" for c in (p.status.conditions or [])), timeout=20)
        message = next(c.message for c in condition.status.conditions if c.type == "PodScheduled")
        assert "untolerated taint" in message, message
        webhook.core.delete_namespaced_pod(bare, "ml-jobs", grace_period_seconds=0)
    finally:
        webhook.register()
    managed = unique("managed")
    create(webhook, "ml-jobs", _labelled_gpu_pod(managed))
    node = node_of(controlplane, "ml-jobs", managed)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"


def test_with_the_webhook_down_gpu_pods_are_refused_and_cpu_pods_still_create(webhook, controlplane):
    """failurePolicy: Fail closes the door on GPU pods only; the scoping keeps everything else open."""
    dead = "https://127.0.0.1:1"  # nothing listens there: the webhook is "down"
    webhook.register(url=dead)
    try:
        with pytest.raises(ApiException) as caught:
            create(webhook, "ml-jobs", airflow_pod("kpo_h100_count2", unique("down")))
        assert 'failed calling webhook "mutate.gpu.platform"' in message_of(caught.value)
        with pytest.raises(ApiException) as sneaky:
            create(webhook, "ml-jobs", airflow_pod("kpo_cpu_env_visible_devices", unique("down")))
        assert 'failed calling webhook "validate.gpu.platform"' in message_of(sneaky.value)
        create(webhook, "ml-jobs", airflow_pod("kpo_cpu_plain", unique("cpu-down")))
        create(webhook, "kube-system", airflow_pod("kpo_h100_count2", unique("system"), complete_after=None))
    finally:
        webhook.register()
