"""One `airflow dags test` against the testbed, shared by the e2e modules that run real Airflow DAGs
(tests/e2e/dags/): a fresh AIRFLOW_HOME (SQLite) whose `airflow db migrate` runs in the
background, the run itself, and what it left (Airflow's states and task logs, the pods).

`airflow dags test` (Airflow 3.3.2, cncf.kubernetes 10.25.0) runs the DAG's tasks one after
another in its own process. Each DAG file reads E2E_KUBECONFIG (the testbed's admin kubeconfig)
and puts E2E_RUN on every pod as label :data:`RUN_LABEL`, so a test finds its run's pods.
"""

from __future__ import annotations

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

DAGS_FOLDER = Path(__file__).parent / "dags"
RUN_LABEL = "e2e.gpu.platform/run"  # set by the DAG files from E2E_RUN
AIRFLOW = [sys.executable, "-m", "airflow"]
DAGS_TEST_TIMEOUT = 300  # a run takes ~12 s; each task also has an execution_timeout of 90 s
TAIL = 60


def _tail(text: str, lines: int = TAIL) -> str:
    return "\n".join(text.splitlines()[-lines:])


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


def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHome]:
    """A fresh AIRFLOW_HOME (SQLite), for a module fixture to yield from. `airflow db migrate`
    starts here in the background and overlaps whatever else the module sets up; a DAG run waits
    for it."""
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
    dag_id: str
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


def dags_test(home: AirflowHome, controlplane: ControlPlane, webhook: RegisteredWebhook, dag_id: str) -> DagRunResult:
    """ONE `airflow dags test` of the whole DAG ``dag_id``; its states, task logs and output."""
    run_label = uuid.uuid4().hex[:12]
    kubeconfig = controlplane.env()["KUBECONFIG"]
    env = {**home.env, "KUBECONFIG": kubeconfig, "E2E_KUBECONFIG": kubeconfig, "E2E_RUN": run_label}
    home.wait_migrated()
    logical_date = datetime.now(UTC).isoformat(timespec="microseconds")  # unique run id
    start = time.monotonic()
    try:
        proc = subprocess.run([*AIRFLOW, "dags", "test", dag_id, logical_date], env=env,
                              cwd=home.home, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=DAGS_TEST_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"`airflow dags test` ran over {DAGS_TEST_TIMEOUT} s:\n{_tail(out)}\n"
                    f"webhook log:\n{webhook.log_tail()}")
    seconds = time.monotonic() - start
    output = proc.stdout
    (home.home / f"dags-test-{dag_id}.log").write_text(output)  # kept with the tmp dir for post-mortems
    print(f"\n`airflow dags test {dag_id}` took {seconds:.1f} s (exit {proc.returncode})")

    with sqlite3.connect(home.home / "airflow.db") as db:
        runs = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ?", (dag_id,)).fetchall()
        assert len(runs) == 1, f"expected one DAG run, found {runs}; `airflow dags test` said:\n{_tail(output)}"
        run_id, state = runs[0]
        task_states = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                                      (dag_id, run_id)).fetchall())
    # Denied tasks fail the run, and `airflow dags test` then exits 1 with "DagRun failed".
    assert proc.returncode in (0, 1), f"`airflow dags test` exited {proc.returncode}:\n{_tail(output)}"
    return DagRunResult(dag_id, run_id, run_label, state, task_states, _task_logs(output), output, seconds)


def pod_of(cp: ControlPlane, result: DagRunResult, namespace: str, task_id: str) -> Any:
    """The one pod this DAG run's task created (KPO keeps it: on_finish_action=keep_pod)."""
    pods = client.CoreV1Api(cp.api_client()).list_namespaced_pod(
        namespace, label_selector=f"{RUN_LABEL}={result.run_label},task_id={task_id},dag_id={result.dag_id}").items
    assert len(pods) == 1, f"expected one pod for task {task_id} in {namespace}, found {[p.metadata.name for p in pods]}"
    return pods[0]


def explain(result: DagRunResult, task_id: str) -> str:
    return (f"task {task_id}: state {result.task_states.get(task_id)}\n--- task log ---\n"
            f"{_tail(result.log_of(task_id), 30)}\n--- airflow dags test ---\n{_tail(result.output, 30)}")
