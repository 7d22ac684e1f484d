"""A hostile tenant against the webhook as it ships: accounting facts are fixed at admission.

Every call here is made as a namespace user holding the default ``edit`` ClusterRole (a real
ServiceAccount token, tests/e2e/conftest.py ``tenant_user``), on the real kube-apiserver, with
the webhook registered from manifests/base/webhook-configurations.yaml. The policy is the
reference one plus a tenant ``platform`` matched on the ServiceAccount that creates the pod.

Before this change the validating webhook saw CREATE only: every relabel below went through,
and the usage tracker then charged the pod to whatever its labels said (issue 13).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import orjson
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import RegisteredWebhook, airflow_pod, registered_webhook, tenant_user
from .controlplane import ControlPlane
from conftest import POLICY_FILE, admission_review
from serve import WebhookServer

pytestmark = pytest.mark.e2e

TENANT_NS = "ml-jobs"           # tenant vision by namespace
REQUESTER_NS = "analytics"      # no tenant by namespace: only the requester match fits there
RUNNER = "gpu-runner"           # the ServiceAccount tenant `platform` is matched on
VALIDATE = 'admission webhook "validate.gpu.platform" denied the request: '
MUTATE = 'admission webhook "mutate.gpu.platform" denied the request: '


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["tenants"] = {"platform": {"match": [{"serviceAccount": f"{REQUESTER_NS}/{RUNNER}"}],
                                            "quota": {"nvidia.com/gpu": 2}},
                               **data["spec"]["tenants"]}
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def hostile_webhook(controlplane: ControlPlane, policy_file: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegisteredWebhook]:
    yield from registered_webhook(controlplane, tmp_path_factory.mktemp("hostile"), policy=policy_file)


@pytest.fixture(scope="module")
def tenant(controlplane, edit_role_ready, hostile_webhook, tmp_path_factory) -> client.CoreV1Api:
    return client.CoreV1Api(tenant_user(controlplane, TENANT_NS, tmp_path_factory.mktemp("tenant")))


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def managed_pod_body(name: str) -> dict[str, Any]:
    """An Airflow 2 x H100 pod with a tenant label and Airflow's dag_id annotation; kept running."""
    pod = airflow_pod("kpo_h100_count2", name, complete_after=None)
    pod["metadata"]["labels"]["team"] = "vision"
    pod["metadata"]["annotations"] = {"dag_id": pod["metadata"]["labels"]["dag_id"]}
    return pod


def cpu_pod_body(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {"app": "cpu"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


@pytest.fixture(scope="module")
def managed(tenant: client.CoreV1Api) -> client.V1Pod:
    """A GPU pod the tenant itself created: admitted, mutated, stamped."""
    pod = tenant.create_namespaced_pod(TENANT_NS, managed_pod_body(_name("held")))
    assert pod.metadata.labels["gpu.platform/managed"] == "true"
    assert pod.metadata.labels["gpu.platform/tenant"] == "vision"
    return pod


@pytest.fixture(scope="module")
def cpu(tenant: client.CoreV1Api) -> client.V1Pod:
    return tenant.create_namespaced_pod(TENANT_NS, cpu_pod_body(_name("cpu")))


def denial(call: Callable[[], Any]) -> str:
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 403, refused.value.body
    return json.loads(refused.value.body)["message"]


def _merge(core: client.CoreV1Api, pod: client.V1Pod, body: dict[str, Any]) -> Any:
    return core.patch_namespaced_pod(pod.metadata.name, TENANT_NS, body, _content_type="application/merge-patch+json")


def _strategic(core: client.CoreV1Api, pod: client.V1Pod, body: dict[str, Any]) -> Any:
    return core.patch_namespaced_pod(pod.metadata.name, TENANT_NS, body)  # a dict: strategic merge patch


def _json_patch(core: client.CoreV1Api, pod: client.V1Pod, ops: list[dict[str, Any]]) -> Any:
    return core.patch_namespaced_pod(pod.metadata.name, TENANT_NS, ops)  # a list: JSON patch


def _put(core: client.CoreV1Api, pod: client.V1Pod, labels: dict[str, str | None]) -> Any:
    """A full PUT of the pod as read back, with labels changed (None: removed)."""
    current = core.read_namespaced_pod(pod.metadata.name, TENANT_NS)
    current.metadata.labels = {k: v for k, v in {**current.metadata.labels, **labels}.items() if v is not None}
    return core.replace_namespaced_pod(pod.metadata.name, TENANT_NS, current)


RELABELS = [
    pytest.param("managed", lambda c, p: _strategic(c, p, {"metadata": {"labels": {"gpu.platform/managed": None}}}),
                 "this update removes label gpu.platform/managed (was 'true', would be absent)",
                 id="removing gpu.platform/managed with a strategic merge patch is refused"),
    pytest.param("managed", lambda c, p: _merge(c, p, {"metadata": {"labels": {"gpu.platform/tenant": "forecasting"}}}),
                 "this update changes label gpu.platform/tenant (was 'vision', would be 'forecasting')",
                 id="changing gpu.platform/tenant with a JSON merge patch is refused"),
    pytest.param("managed", lambda c, p: _json_patch(c, p, [{"op": "replace", "path": "/metadata/labels/team",
                                                             "value": "forecasting"}]),
                 "this update changes label team (was 'vision', would be 'forecasting')",
                 id="changing the team label a tenant match reads with a JSON patch is refused"),
    pytest.param("managed", lambda c, p: _put(c, p, {"dag_id": "nightly_steal"}),
                 "this update changes label dag_id", id="changing the dag_id label with a full PUT is refused"),
    pytest.param("managed", lambda c, p: _strategic(c, p, {"metadata": {"annotations": {"dag_id": "nightly_steal"}}}),
                 "this update changes annotation dag_id", id="changing the dag_id annotation is refused"),
    pytest.param("managed", lambda c, p: _put(c, p, {"gpu.platform/count": "1"}),
                 "this update changes label gpu.platform/count", id="lowering the count stamp with a PUT is refused"),
    pytest.param("cpu", lambda c, p: _strategic(c, p, {"metadata": {"labels": {"gpu.platform/managed": "true",
                                                                               "gpu.platform/tenant": "vision"}}}),
                 "this update adds label gpu.platform/managed (was absent, would be 'true')",
                 id="adding the stamps to a CPU pod is refused"),
]


@pytest.mark.parametrize("which, change, words", RELABELS)
def test_a_relabel_that_moves_accounting_is_refused_with_a_clear_message(request, tenant, which, change, words):
    pod = request.getfixturevalue(which)
    message = denial(lambda: change(tenant, pod))
    assert message.startswith(VALIDATE) and words in message and "relaunch the task" in message
    after = tenant.read_namespaced_pod(pod.metadata.name, TENANT_NS).metadata
    assert after.labels == pod.metadata.labels and (after.annotations or {}) == (pod.metadata.annotations or {})


AIRFLOW_UPDATES = [
    pytest.param({"metadata": {"labels": {"already_checked": "True"}}},
                 id="KubernetesPodOperator's already_checked label (patch_already_checked) passes"),
    pytest.param({"metadata": {"labels": {"airflow-worker": "7"}, "annotations": {"task_instance_id": "x"}}},
                 id="the KubernetesExecutor's adoption label (adopt_launched_task) passes"),
    pytest.param({"metadata": {"labels": {"airflow_executor_done": "True"}}},
                 id="the KubernetesExecutor's done label passes"),
]


@pytest.mark.parametrize("body", AIRFLOW_UPDATES)
def test_airflows_own_later_updates_of_a_managed_pod_pass(tenant, managed, body):
    patched = _strategic(tenant, managed, body)
    assert body["metadata"]["labels"].items() <= patched.metadata.labels.items()
    assert patched.metadata.labels["gpu.platform/managed"] == "true"


def test_a_managed_pod_can_still_be_deleted(tenant):
    pod = tenant.create_namespaced_pod(TENANT_NS, managed_pod_body(_name("gone")))
    tenant.delete_namespaced_pod(pod.metadata.name, TENANT_NS, grace_period_seconds=0)


FORGED = [
    pytest.param({"app": "cpu", "gpu.platform/managed": "true"}, "label gpu.platform/managed='true'",
                 id="a CPU pod created with the managed stamp is refused"),
    pytest.param({"app": "cpu", "gpu.platform/tenant": "forecasting"}, "label gpu.platform/tenant='forecasting'",
                 id="a CPU pod created with a tenant stamp is refused"),
]


@pytest.mark.parametrize("labels, words", FORGED)
def test_forged_stamps_on_create_are_refused(tenant, labels, words):
    message = denial(lambda: tenant.create_namespaced_pod(TENANT_NS, cpu_pod_body(_name("forged"), labels)))
    assert message.startswith(VALIDATE) and words in message and "only gpu-webhook stamps it" in message


def test_a_dag_id_annotation_that_disagrees_with_the_label_is_refused(tenant):
    pod = managed_pod_body(_name("dagid"))
    pod["metadata"]["annotations"] = {"dag_id": "nightly_forecast"}
    message = denial(lambda: tenant.create_namespaced_pod(TENANT_NS, pod))
    assert message.startswith(MUTATE)
    assert "annotation dag_id 'nightly_forecast' and label dag_id 'detect_objects' name different DAGs" in message


@pytest.fixture(scope="module")
def runner(controlplane, edit_role_ready, hostile_webhook, tmp_path_factory) -> client.CoreV1Api:
    return client.CoreV1Api(tenant_user(controlplane, REQUESTER_NS, tmp_path_factory.mktemp("runner"), RUNNER))


def requester_pod(name: str, count: str = "2") -> dict[str, Any]:
    pod = airflow_pod("kpo_h100_count2", name)
    pod["metadata"]["namespace"] = REQUESTER_NS
    pod["metadata"]["labels"]["gpu.platform/count"] = count
    return pod


def test_a_tenant_matched_on_the_service_account_charges_the_pods_it_creates(runner):
    pod = runner.create_namespaced_pod(REQUESTER_NS, requester_pod(_name("runner")))
    assert pod.metadata.labels["gpu.platform/tenant"] == "platform"
    over = requester_pod(_name("runner-over"), count="3")
    message = denial(lambda: runner.create_namespaced_pod(REQUESTER_NS, over))
    assert "exceeded quota: tenant platform, nvidia.com/gpu, requested: 3, used: 0, limited: 2" in message


def test_another_account_in_the_same_namespace_gets_no_tenant(controlplane, edit_role_ready, hostile_webhook,
                                                              tmp_path):
    other = client.CoreV1Api(tenant_user(controlplane, REQUESTER_NS, tmp_path, "someone-else"))
    message = denial(lambda: other.create_namespaced_pod(REQUESTER_NS, requester_pod(_name("x"))))
    assert "no GPU tenant matches namespace 'analytics'" in message
    assert "created by 'system:serviceaccount:analytics:someone-else'" in message


# ------------------------------------------------------------------ only the API server spends quota
def test_only_the_api_server_can_have_a_pod_judged_or_quota_reserved(controlplane, namespace, tmp_path):
    """serve --client-ca with the testbed API server's client CA and --track-usage: a forged review
    from a client without a certificate, or with a valid one from another CA, reserves nothing;
    the API server's own certificate (the control) does."""
    from airflow_gpu_webhook.cli.certs import generate_client

    foreign = generate_client(tmp_path / "foreign").cert.with_suffix("")
    args = ("--track-usage", "--kubeconfig", str(controlplane.kubeconfig), "--ledger-namespace", namespace)
    with WebhookServer(tmp_path / "serve", extra_args=args, client_ca=controlplane.webhook_client) as server:
        pod = airflow_pod("kpo_h100_count2", _name("forged"))
        patch = base64.b64decode(server.review("mutate", pod, TENANT_NS)["patch"])
        final = jsonpatch.apply_patch(pod, orjson.loads(patch))
        headers = {"Content-Type": "application/json"}

        def review(client: httpx.Client) -> tuple[str, httpx.Response]:
            """A review of the mutated pod under a new name and uid, as the API server would send it
            (the ledger keys reservations by the pod's uid and refuses reviews without one)."""
            name = _name("forged")
            meta = {**final["metadata"], "name": name, "uid": str(uuid.uuid4())}
            body = admission_review({**final, "metadata": meta}, TENANT_NS)
            return f"{TENANT_NS}/{name}", client.post("/validate", content=orjson.dumps(body), headers=headers)

        with httpx.Client(base_url=server.url, timeout=10,
                          verify=ssl.create_default_context(cafile=server.certs / "ca.crt")) as anonymous:
            _, refused = review(anonymous)
        assert refused.status_code == 401 and "presented none" in refused.json()["error"]
        with pytest.raises(httpx.TransportError), server.client_trusting(server.certs / "ca.crt",
                                                                        identity=foreign) as forger:
            review(forger)
        reserved, admitted = review(server.client)
        assert admitted.json()["response"]["allowed"] is True, admitted.text
    ledger = client.CoreV1Api(controlplane.api_client()).read_namespaced_config_map("gpu-webhook-ledger-vision",
                                                                                   namespace)
    assert [r["pod"] for r in json.loads(ledger.data["reservations"]).values()] == [reserved]


ADOPT = textwrap.dedent("""
    import json, sys
    from kubernetes import client, config
    from airflow.providers.cncf.kubernetes.executors.kubernetes_executor import KubernetesExecutor
    from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import annotations_to_key

    kubeconfig, namespace, name = sys.argv[1:4]
    config.load_kube_config(kubeconfig)
    core = client.CoreV1Api()
    pod = core.read_namespaced_pod(name, namespace)
    executor = KubernetesExecutor()          # not started: no watcher, no queues
    executor.scheduler_job_id = "42"         # the scheduler that adopts the pod
    tis_to_flush_by_key = {annotations_to_key(pod.metadata.annotations): None}
    executor.adopt_launched_task(core, pod, tis_to_flush_by_key)
    print(json.dumps({"adopted": not tis_to_flush_by_key,
                      "labels": core.read_namespaced_pod(name, namespace).metadata.labels}))
""")


def test_the_kubernetes_executors_own_adoption_of_a_managed_worker_pod_passes(controlplane, hostile_webhook,
                                                                              tmp_path):
    """``KubernetesExecutor.adopt_launched_task`` itself (a scheduler taking over another's worker
    pod relabels it ``airflow-worker``), run in a hermetic Airflow against the testbed."""
    pod = airflow_pod("executor_gpu_override", _name("worker"), complete_after=None)
    created = client.CoreV1Api(controlplane.api_client()).create_namespaced_pod("airflow", pod)
    assert created.metadata.labels["gpu.platform/managed"] == "true"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    run = subprocess.run([sys.executable, "-c", ADOPT, str(controlplane.kubeconfig), "airflow", created.metadata.name],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["adopted"], run.stderr[-3000:]
    assert result["labels"]["airflow-worker"] == "42"
    assert result["labels"]["gpu.platform/tenant"] == "vision"
