"""Real Airflow against the real control plane, through the webhook as it ships.

`airflow dags test` (Airflow 3.3.2, cncf.kubernetes 10.25.0, SQLite metadata DB in a temp
AIRFLOW_HOME) runs the DAG tests/e2e/dags/team_vision__gpu_kpo.py, whose KubernetesPodOperator
tasks carry GPU profile labels, against the testbed's kube-apiserver with `gpu-webhook serve`
registered from manifests/base/webhook-configurations.yaml. Proven here, read back from the API server
and from Airflow's own metadata DB and task logs:

- a MIG task (a100-mig-1g.10gb, namespace airflow, tenant vision by dag_id prefix) and a 2 x H100
  task (ml-jobs): the pod Airflow created was mutated (gpu.platform/managed, the driver-validation
  init container first, the GPU resource on container `base`), kube-scheduler bound it to a node
  of the right product / MIG strategy, and the Airflow task succeeded;
- KubernetesPodOperator's own later update of those pods (the ``already_checked`` label it puts
  on a kept pod) passes the validating webhook, which also sees UPDATEs; a GPU task whose pod
  KPO deletes when done succeeds too;
- a CPU task in the same tenant namespace is untouched and succeeds;
- a quota-breaking task (5 x H100, tenant vision allows 4) and an unknown-profile task fail in
  Airflow, with the webhook's denial in the task's log, and no pod was created for them.

The parse-time cluster policy (airflow_gpu_webhook.airflow.policy) stays off (AIRFLOW__GPU_WEBHOOK__POLICY_FILE
unset), so the bad tasks reach the API server: what refuses them here is the webhook at run time.
All tasks are independent and run in ONE DAG run (one `airflow dags test`); each test function
asserts on one task from the module-scoped result. A component that cannot start fails the tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from kubernetes import client

from .airflow_run import RUN_LABEL, AirflowHome, DagRunResult, dags_test, explain, pod_of
from .airflow_run import airflow_home as start_airflow_home
from .conftest import RegisteredWebhook
from .controlplane import ControlPlane

pytestmark = pytest.mark.e2e

DAG_ID = "team_vision__gpu_kpo"


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHome]:
    yield from start_airflow_home(tmp_path_factory)


@pytest.fixture(scope="module")
def dag_run(airflow_home: AirflowHome, controlplane: ControlPlane, webhook: RegisteredWebhook) -> DagRunResult:
    """ONE `airflow dags test` of the whole DAG; its states, task logs and output."""
    return dags_test(airflow_home, controlplane, webhook, DAG_ID)


# -------------------------------------------------------------------------------------- tests
GPU_TASKS = [
    pytest.param("mig_1g", "airflow", "nvidia.com/mig-1g.10gb", "1",
                 {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig.strategy": "mixed"},
                 id="a MIG 1g.10gb task of team_vision__ in namespace airflow is mutated, lands on an A100 "
                    "MIG-mixed node and succeeds"),
    pytest.param("h100_x2", "ml-jobs", "nvidia.com/gpu", "2",
                 {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/mig.strategy": "none"},
                 id="a 2 x H100 task in namespace ml-jobs is mutated, lands on an H100 node and succeeds"),
]


@pytest.mark.parametrize("task_id, namespace, resource, count, node_labels", GPU_TASKS)
def test_gpu_task_pod_is_mutated_bound_to_its_pool_and_the_task_succeeds(
        dag_run, controlplane, task_id, namespace, resource, count, node_labels):
    pod = pod_of(controlplane, dag_run, namespace, task_id)
    assert pod.metadata.labels.get("gpu.platform/managed") == "true"
    assert pod.spec.init_containers and pod.spec.init_containers[0].name == "gpu-driver-validation"
    base = next(c for c in pod.spec.containers if c.name == "base")
    assert base.resources.limits.get(resource) == count and base.resources.requests.get(resource) == count
    assert pod.spec.node_name, f"pod {pod.metadata.name} was never bound: {pod.status.to_dict()}"
    node = client.CoreV1Api(controlplane.api_client()).read_node(pod.spec.node_name)
    assert {k: node.metadata.labels.get(k) for k in node_labels} == node_labels, pod.spec.node_name
    assert pod.status.phase == "Succeeded"
    assert dag_run.task_states[task_id] == "success", explain(dag_run, task_id)
    # KPO's own later update (patch_already_checked) passed the validating webhook, which sees
    # UPDATEs of managed pods and refuses only changes to their accounting labels.
    assert pod.metadata.labels.get("already_checked") == "True", pod.metadata.labels


def test_a_gpu_task_whose_pod_kpo_deletes_succeeds_and_leaves_no_pod(dag_run, controlplane):
    assert dag_run.task_states["h100_deleted"] == "success", explain(dag_run, "h100_deleted")
    pods = client.CoreV1Api(controlplane.api_client()).list_namespaced_pod(
        "ml-jobs", label_selector=f"{RUN_LABEL}={dag_run.run_label},task_id=h100_deleted").items
    assert [p.metadata.name for p in pods if not p.metadata.deletion_timestamp] == []


def test_cpu_task_pod_is_untouched_and_the_task_succeeds(dag_run, controlplane):
    pod = pod_of(controlplane, dag_run, "ml-jobs", "cpu_only")
    assert "gpu.platform/managed" not in pod.metadata.labels
    assert not pod.spec.init_containers
    for c in pod.spec.containers:
        resources = {**((c.resources and c.resources.limits) or {}), **((c.resources and c.resources.requests) or {})}
        assert not [r for r in resources if r.startswith("nvidia.com/")], c.name
    node = client.CoreV1Api(controlplane.api_client()).read_node(pod.spec.node_name)
    assert "nvidia.com/gpu.product" not in node.metadata.labels, f"a CPU pod on GPU node {node.metadata.name}"
    assert pod.status.phase == "Succeeded"
    assert dag_run.task_states["cpu_only"] == "success", explain(dag_run, "cpu_only")


DENIED_TASKS = [
    pytest.param("quota_breaker",
                 'admission webhook "validate.gpu.platform" denied the request: exceeded quota: tenant vision, '
                 'nvidia.com/gpu, requested: 5, used: 0, limited: 4',
                 id="a task asking for 5 H100s when tenant vision may hold 4 fails with the quota denial in its log"),
    pytest.param("unknown_profile",
                 'admission webhook "mutate.gpu.platform" denied the request: gpu.platform/profile \'h100-8gb\' is '
                 'not a known GPU profile; known profiles: a100-80gb, h100-80gb, a100-mig-1g.10gb, '
                 'a100-mig-2g.20gb, a100-mig-3g.40gb',
                 id="a task with an unknown GPU profile fails with the webhook's list of known profiles in its log"),
]


def api_error_messages(task_log: str) -> list[str]:
    """The API server's Status messages as the task log shows them: KPO logs the
    kubernetes client's ApiException, whose text ends with "HTTP response body: <Status JSON>"."""
    return [json.loads(body)["message"] for body in re.findall(r"^HTTP response body: (\{.*\})$", task_log, re.M)]


@pytest.mark.parametrize("task_id, message", DENIED_TASKS)
def test_denied_task_fails_in_airflow_with_the_webhooks_message_in_its_log(dag_run, controlplane, task_id, message):
    log = dag_run.log_of(task_id)
    assert dag_run.task_states[task_id] == "failed", explain(dag_run, task_id)
    assert "Task failed with exception" in log and "ForbiddenException: (403)" in log, explain(dag_run, task_id)
    assert message in api_error_messages(log), explain(dag_run, task_id)
    pods = client.CoreV1Api(controlplane.api_client()).list_namespaced_pod(
        "ml-jobs", label_selector=f"{RUN_LABEL}={dag_run.run_label},task_id={task_id}").items
    assert pods == [], "a denied pod must not exist"


def test_the_dag_run_fails_because_of_the_denied_tasks_only(dag_run):
    assert set(dag_run.task_states) == {"mig_1g", "h100_x2", "h100_deleted", "cpu_only", "quota_breaker",
                                        "unknown_profile"}
    assert dag_run.state == "failed"
    assert {t for t, s in dag_run.task_states.items() if s != "success"} == {"quota_breaker", "unknown_profile"}
    assert "DagRun failed" in dag_run.output
