"""Build the test pods in tests/fixtures/airflow/ with Airflow's own code.

Why: the webhook must handle the pods Airflow really sends (sanitised labels, empty lists,
sidecars, template merging), not what we guess they look like. So every fixture is built
by apache-airflow-providers-cncf-kubernetes and serialised exactly as its kubernetes client
sends it to the API server (ApiClient().sanitize_for_serialization).

- KPO cases follow the Task SDK's runtime path: the operator is declared in a DAG, a
  RuntimeTaskInstance is built as task_runner.parse() builds it, templates are rendered
  (which also unmaps a mapped task for its map_index), then build_pod_request_obj(context).
- Executor cases follow KubernetesExecutor._build_pod_request: executor_config goes through
  the same serialisation round trip as in the metadata DB, then PodGenerator.construct_pod
  with the Helm chart's worker template and the Task SDK workload as the container args.

Run it through scripts/generate-fixtures.sh (pinned venv, throwaway AIRFLOW_HOME; no DB,
no cluster, no network). Output is deterministic: fixed run_id/dates/try_number/UUIDs and
a fixed stand-in for the random pod-name suffix (see _deterministic_rand_str).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import sys
import uuid
from pathlib import Path

from kubernetes.client import ApiClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airflow.dag_processing.bundles.local import LocalDagBundle
from airflow.executors.workloads import BundleInfo, ExecuteTask
from airflow.executors.workloads.task import TaskInstanceDTO
from airflow.models.dagrun import DagRun as DagRunModel
from airflow.providers.cncf.kubernetes import kubernetes_helper_functions
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import (
    PodGenerator,
    workload_to_command_args,
)
from airflow.sdk import DAG
from airflow.sdk.api.datamodels._generated import (
    DagRun,
    TaskInstance,
    TIRunContext,
)
from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
from airflow.serialization.serialized_objects import BaseSerialization
from airflow.utils.helpers import log_filename_template_renderer
from airflow.utils.types import DagRunType
from fixture_cases import BASE_WORKER_POD, CASES, HAND_MADE, KPO_DEFAULTS

REPO = Path(__file__).resolve().parent.parent
VERSIONS = {
    "airflow": importlib.metadata.version("apache-airflow"),
    "provider": importlib.metadata.version("apache-airflow-providers-cncf-kubernetes"),
}

# One scheduled run for every case. Airflow 3's default "@daily" timetable (cron trigger)
# gives logical_date == run_after and a zero-length data interval.
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LOGICAL_DATE = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
RUN_ID = DagRunModel.generate_run_id(
    run_type=DagRunType.SCHEDULED, logical_date=LOGICAL_DATE, run_after=LOGICAL_DATE
)
TRY_NUMBER = 1
SCHEDULER_JOB_ID = "1"  # becomes the airflow-worker label of executor pods
WORKER_IMAGE = "apache/airflow:3.3.2"  # [kubernetes_executor] worker_container_repository:tag

_current_case = ""


def _deterministic_rand_str(num: int) -> str:
    """Stand-in for kubernetes_helper_functions.rand_str (secrets.choice, unseedable).

    Airflow still builds the name (task_id slug, length cut, "-" + 8 lowercase
    alphanumerics); only the suffix is derived from the case id so reruns match.
    """
    return hashlib.sha256(_current_case.encode()).hexdigest()[:num]


kubernetes_helper_functions.rand_str = _deterministic_rand_str


def _uuid(case_id: str, what: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"airflow-gpu-webhook/{case_id}/{what}")


def _kubeconfig(path: Path) -> str:
    """A kubeconfig that is parsed but never contacted.

    build_pod_request_obj asks the hook whether it runs in-cluster (label
    airflow_kpo_in_cluster), which loads the config; out-of-cluster config gives "False",
    as in the e2e tests (config_file=KUBECONFIG, kubernetes_conn_id=None).
    """
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fixtures\n"
        "clusters: [{name: fixtures, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: fixtures, user: {token: not-used}}]\n"
        "contexts: [{name: fixtures, context: {cluster: fixtures, user: fixtures}}]\n"
    )
    return str(path)


def build_kpo_pod(case: dict, kubeconfig: str):
    kwargs = {
        **KPO_DEFAULTS,
        "task_id": case["task_id"],
        "namespace": case["namespace"],
        "kubernetes_conn_id": None,
        "config_file": kubeconfig,
        **case.get("operator", {}),
    }
    with DAG(case["dag_id"], schedule="@daily", start_date=START, catchup=False):
        if "expand" in case:
            task = KubernetesPodOperator.partial(**kwargs).expand(**case["expand"])
        else:
            task = KubernetesPodOperator(**kwargs)

    # As task_runner.parse() builds it from the supervisor's StartupDetails.
    ti_fields = TaskInstance(
        id=_uuid(case["id"], "ti"),
        task_id=case["task_id"],
        dag_id=case["dag_id"],
        run_id=RUN_ID,
        try_number=TRY_NUMBER,
        dag_version_id=_uuid(case["id"], "dag_version"),
        map_index=case.get("map_index", -1),
    )
    dag_run = DagRun(
        dag_id=case["dag_id"],
        run_id=RUN_ID,
        logical_date=LOGICAL_DATE,
        data_interval_start=LOGICAL_DATE,
        data_interval_end=LOGICAL_DATE,
        run_after=LOGICAL_DATE,
        start_date=LOGICAL_DATE,
        end_date=None,
        run_type="scheduled",
        state="running",
        consumed_asset_events=[],
        partition_key=None,
    )
    ti = RuntimeTaskInstance.model_construct(
        **ti_fields.model_dump(exclude_unset=True),
        task=task,
        bundle_instance=LocalDagBundle(name="dags-folder", path=os.environ["AIRFLOW_HOME"]),
        _ti_context_from_server=TIRunContext(dag_run=dag_run, max_tries=0),
        max_tries=0,
        start_date=LOGICAL_DATE,
        state="running",
    )
    context = ti.get_template_context()
    ti.render_templates(context)  # a mapped task is replaced by its unmapped operator here
    return ti.task.build_pod_request_obj(context)


def build_executor_pod(case: dict):
    map_index = case.get("map_index", -1)
    # executor_config is stored serialised (DB / serialized DAG) and read back by the scheduler.
    stored = BaseSerialization.serialize({"pod_override": case["pod_override"]})
    pod_override = PodGenerator.from_obj(BaseSerialization.deserialize(stored))

    # The container args: the Task SDK workload the scheduler queues for this try. The
    # token is empty because no JWT generator is configured here (a real one carries a JWT).
    ti = TaskInstanceDTO(
        id=_uuid(case["id"], "ti"),
        task_id=case["task_id"],
        dag_id=case["dag_id"],
        run_id=RUN_ID,
        try_number=TRY_NUMBER,
        dag_version_id=_uuid(case["id"], "dag_version"),
        map_index=map_index,
        pool_slots=1,
        priority_weight=1,
    )
    workload = ExecuteTask(
        ti=ti,
        dag_rel_path=Path(f"{case['dag_id']}.py"),
        token=ExecuteTask.generate_token(str(ti.id), None),
        log_path=log_filename_template_renderer()(ti=ti),
        bundle_info=BundleInfo(name="dags-folder"),
    )

    # Same arguments as KubernetesExecutor's AirflowKubernetesScheduler._build_pod_request.
    return PodGenerator.construct_pod(
        namespace=case["namespace"],
        scheduler_job_id=SCHEDULER_JOB_ID,
        pod_id=kubernetes_helper_functions.create_unique_id(case["dag_id"], case["task_id"]),
        dag_id=case["dag_id"],
        task_id=case["task_id"],
        kube_image=WORKER_IMAGE,
        try_number=TRY_NUMBER,
        map_index=map_index,
        date=None,
        run_id=RUN_ID,
        args=workload_to_command_args(workload),
        pod_override_object=pod_override,
        base_worker_pod=PodGenerator.deserialize_model_dict(BASE_WORKER_POD),
        with_mutation_hook=True,
    )


def check(case: dict, pod: dict) -> None:
    """Fail loudly if a new Airflow version stops building pods the way fixtures assume."""
    labels = pod["metadata"]["labels"]
    marker = "kubernetes_pod_operator" if case["kind"] == "kpo" else "kubernetes_executor"
    assert labels.get(marker) == "True", (case["id"], labels)
    for key in ("dag_id", "task_id", "try_number", "run_id"):
        assert key in labels, (case["id"], key)
    assert pod["spec"]["containers"][0]["name"] == "base", case["id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests/fixtures/airflow")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kubeconfig = _kubeconfig(Path(os.environ["AIRFLOW_HOME"]) / "kubeconfig")

    global _current_case
    written = set()
    for case in CASES:
        _current_case = case["id"]
        pod = build_kpo_pod(case, kubeconfig) if case["kind"] == "kpo" else build_executor_pod(case)
        pod_json = ApiClient().sanitize_for_serialization(pod)
        check(case, pod_json)
        doc = {
            "id": case["id"],
            "description": case["description"],
            "kind": case["kind"],
            "namespace": case["namespace"],
            "airflow": VERSIONS,
            "pod": pod_json,
        }
        path = args.out / f"{case['id']}.json"
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.add(path.name)
        print(f"  {path.name}")

    for stale in sorted(args.out.glob("*.json")):
        if stale.name not in written and stale.stem not in HAND_MADE:
            print(f"  removed stale {stale.name}")
            stale.unlink()

    index = [
        "# Airflow-built test pods",
        "",
        "Generated by `scripts/generate-fixtures.sh` from `scripts/fixture_cases.py` with "
        f"apache-airflow {VERSIONS['airflow']} and apache-airflow-providers-cncf-kubernetes "
        f"{VERSIONS['provider']}. Do not edit by hand; change the cases and regenerate.",
        "",
        "| id | kind | namespace | description |",
        "|----|------|-----------|-------------|",
    ]
    index += [f"| `{c['id']}` | {c['kind']} | {c['namespace']} | {c['description']} |" for c in CASES]
    hand_made = sorted(h for h in HAND_MADE if (args.out / f"{h}.json").exists())
    if hand_made:
        index += ["", "Written by hand, not by Airflow (the generator leaves them alone): "
                  + ", ".join(f"`{h}`" for h in hand_made) + "."]
    (args.out / "INDEX.md").write_text("\n".join(index) + "\n")
    print(f"wrote {len(CASES)} fixtures and INDEX.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
