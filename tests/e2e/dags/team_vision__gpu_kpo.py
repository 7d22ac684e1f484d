"""End-to-end DAG: KubernetesPodOperator tasks with GPU profile labels, run by
tests/e2e/test_airflow_dags.py with `airflow dags test` against the testbed's API server.

The tasks are independent, so one DAG run runs them all and a denied task does not stop the
others. The dag_id prefix `team_vision__` puts the pods of namespace `airflow` in tenant vision
(manifests/policy.yaml); namespace `ml-jobs` belongs to vision whatever the dag_id.

Environment (set by the test): E2E_KUBECONFIG, the testbed's admin kubeconfig; E2E_RUN, a value
put on every pod as label `e2e.gpu.platform/run` so the test finds this run's pods.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

KUBECONFIG = os.environ["E2E_KUBECONFIG"]
RUN = os.environ.get("E2E_RUN", "by-hand")
PROFILE, COUNT = "gpu.platform/profile", "gpu.platform/count"

#: task_id -> (namespace, labels). Pods that reach a node finish after 1 s (kwok, testbed label).
TASKS: dict[str, tuple[str, dict[str, str]]] = {
    "mig_1g": ("airflow", {PROFILE: "a100-mig-1g.10gb"}),
    "h100_x2": ("ml-jobs", {PROFILE: "h100-80gb", COUNT: "2"}),
    "h100_deleted": ("ml-jobs", {PROFILE: "h100-80gb"}),
    "cpu_only": ("ml-jobs", {}),
    "quota_breaker": ("ml-jobs", {PROFILE: "h100-80gb", COUNT: "5"}),
    "unknown_profile": ("ml-jobs", {PROFILE: "h100-8gb"}),
}
#: Every pod is kept for the test to read back (KPO then labels it already_checked=True, an
#: UPDATE the validating webhook sees), except this one, deleted by KPO when it succeeds.
DELETED = {"h100_deleted"}

with DAG("team_vision__gpu_kpo", schedule=None, catchup=False, tags=["e2e"]):
    for task_id, (namespace, labels) in TASKS.items():
        KubernetesPodOperator(
            task_id=task_id,
            name=f"e2e-{task_id.replace('_', '-')}",  # + random suffix (random_name_suffix=True)
            namespace=namespace,
            image="busybox:1.36",  # never pulled: kwok only simulates containers
            cmds=["true"],
            labels={**labels, "testbed.gpu.platform/complete-after": "1s", "e2e.gpu.platform/run": RUN},
            config_file=KUBECONFIG,
            in_cluster=False,
            kubernetes_conn_id=None,
            get_logs=False,  # the testbed has no kubelet API
            do_xcom_push=False,
            log_events_on_startup=False,
            on_finish_action="delete_pod" if task_id in DELETED else "keep_pod",
            startup_check_interval_seconds=1,
            base_container_status_polling_interval=0.2,
            startup_timeout_seconds=60,
            deferrable=False,
            retries=0,
            execution_timeout=timedelta(seconds=90),
        )
