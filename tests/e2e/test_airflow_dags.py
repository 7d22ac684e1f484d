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
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from .conftest import RegisteredWebhook
from .controlplane import ControlPlane

pytestmark = pytest.mark.e2e

DAGS_FOLDER = Path(__file__).parent / "dags"
DAG_ID = "team_vision__gpu_kpo"
RUN_LABEL = "e2e.gpu.platform/run"  # set by the DAG file from E2E_RUN
AIRFLOW = [sys.executable, "-m", "airflow"]
DAGS_TEST_TIMEOUT = 300  # the run takes ~12 s; each task also has an execution_timeout of 90 s
TAIL = 60


def _tail(text: str, lines: int = TAIL) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------ Airflow set-up
@dataclass
class AirflowHome:
    home: Path
    env: dict[str, str]  # for every `airflow` command (the DAG run adds the testbed's kubeconfig)
    migrate: subprocess.Popen[str]

    def wait_migrated(self) -> None:
        try:
            out, _ = self.migrate.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            self.migrate.kill()
            out, _ = self.migrate.communicate()
            pytest.fail(f"`airflow db migrate` did not finish in 180 s:\n{_tail(out)}")
        if self.migrate.returncode != 0:
            pytest.fail(f"`airflow db migrate` exited {self.migrate.returncode}:\n{_tail(out)}")


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHome]:
    """A fresh AIRFLOW_HOME (SQLite). `airflow db migrate` starts here in the background and
    overlaps the control plane's and the webhook's start-up; the DAG run waits for it."""
    home = tmp_path_factory.mktemp("airflow_home")
    # Hermetic: no AIRFLOW_* / AIRFLOW__* from the caller's shell (a developer's metadata DB,
    # connections...). Notably AIRFLOW__GPU_WEBHOOK__POLICY_FILE stays unset: the parse-time
    # policy would turn the bad tasks into an import error before they run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "0",
    })
    migrate = subprocess.Popen([*AIRFLOW, "db", "migrate"], env=env, cwd=home, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield AirflowHome(home, env, migrate)
    if migrate.poll() is None:
        migrate.kill()
        migrate.wait()


@dataclass
class DagRunResult:
    run_id: str
    run_label: str
    state: str
    task_states: dict[str, str]
    task_logs: dict[str, str]  # task_id -> its log lines (see _task_logs)
    output: str                # stdout + stderr of `airflow dags test`, interleaved
    seconds: float

    def log_of(self, task_id: str) -> str:
        return self.task_logs.get(task_id, "")


def _task_logs(output: str) -> dict[str, str]:
    """Each task's log, cut out of the `airflow dags test` output.

    Without an executor, `dags test` runs the tasks one after another in its own process
    (InProcessTestSupervisor) and logs them to its stdout/stderr only: nothing is written under
    $AIRFLOW_HOME/logs. Each task's lines lie between "[DAG TEST] starting task_id=<id>" and
    "[DAG TEST] end task task_id=<id>".
    """
    logs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if m := re.search(r"\[DAG TEST\] starting task_id=(\S+)", line):
            current = logs.setdefault(m.group(1), [])
        if current is not None:
            current.append(line)
        if "[DAG TEST] end task task_id=" in line:
            current = None
    return {task_id: "\n".join(lines) for task_id, lines in logs.items()}


@pytest.fixture(scope="module")
def dag_run(airflow_home: AirflowHome, controlplane: ControlPlane, webhook: RegisteredWebhook) -> DagRunResult:
    """ONE `airflow dags test` of the whole DAG; its states, task logs and output."""
    run_label = uuid.uuid4().hex[:12]
    kubeconfig = controlplane.env()["KUBECONFIG"]
    env = {**airflow_home.env, "KUBECONFIG": kubeconfig, "E2E_KUBECONFIG": kubeconfig, "E2E_RUN": run_label}
    airflow_home.wait_migrated()
    logical_date = datetime.now(UTC).isoformat(timespec="microseconds")  # unique run id
    start = time.monotonic()
    try:
        proc = subprocess.run([*AIRFLOW, "dags", "test", DAG_ID, logical_date], env=env,
                              cwd=airflow_home.home, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=DAGS_TEST_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"`airflow dags test` ran over {DAGS_TEST_TIMEOUT} s:\n{_tail(out)}\n"
                    f"webhook log:\n{webhook.log_tail()}")
    seconds = time.monotonic() - start
    output = proc.stdout
    (airflow_home.home / "dags-test.log").write_text(output)  # kept with the tmp dir for post-mortems
    print(f"\n`airflow dags test {DAG_ID}` took {seconds:.1f} s (exit {proc.returncode})")

    with sqlite3.connect(airflow_home.home / "airflow.db") as db:
        runs = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchall()
        assert len(runs) == 1, f"expected one DAG run, found {runs}; `airflow dags test` said:\n{_tail(output)}"
        run_id, state = runs[0]
        task_states = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                                      (DAG_ID, run_id)).fetchall())
    # Denied tasks fail the run, and `airflow dags test` then exits 1 with "DagRun failed".
    assert proc.returncode in (0, 1), f"`airflow dags test` exited {proc.returncode}:\n{_tail(output)}"
    return DagRunResult(run_id, run_label, state, task_states,
                        _task_logs(output), output, seconds)


def pod_of(cp: ControlPlane, result: DagRunResult, namespace: str, task_id: str) -> Any:
    """The one pod this DAG run's task created (KPO keeps it: on_finish_action=keep_pod)."""
    pods = client.CoreV1Api(cp.api_client()).list_namespaced_pod(
        namespace, label_selector=f"{RUN_LABEL}={result.run_label},task_id={task_id},dag_id={DAG_ID}").items
    assert len(pods) == 1, f"expected one pod for task {task_id} in {namespace}, found {[p.metadata.name for p in pods]}"
    return pods[0]


def explain(result: DagRunResult, task_id: str) -> str:
    return (f"task {task_id}: state {result.task_states.get(task_id)}\n--- task log ---\n"
            f"{_tail(result.log_of(task_id), 30)}\n--- airflow dags test ---\n{_tail(result.output, 30)}")


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
