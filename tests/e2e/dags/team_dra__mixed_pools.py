"""End-to-end DAG for a mixed cluster: one KubernetesPodOperator task on a device-plugin profile and
one on a DRA claim profile, run by tests/e2e/test_dra_webhook.py with `airflow dags test` through
the webhook. Both tasks write only the profile label, as any DAG author does: the policy decides
that the first pod asks for ``nvidia.com/mig-1g.10gb`` (device plugin) and the second gets a
ResourceClaim of a 1g.10gb MIG device (DRA).

The dag_id prefix ``team_dra__`` and namespace ``drawh-airflow`` put both pods in the test
policy's tenant ``dra-airflow``, whose namespace the webhook's reconciler gives the DRA profile's
ResourceClaimTemplate.

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
NAMESPACE = "drawh-airflow"

#: task_id -> GPU profile. Pods finish 2 s after they run (kwok, testbed label).
TASKS = {
    "device_plugin_mig": "a100-mig-1g.10gb",
    "dra_mig": "a100-dra-mig-1g.10gb",
}

with DAG("team_dra__mixed_pools", schedule=None, catchup=False, tags=["e2e"]):
    for task_id, profile in TASKS.items():
        KubernetesPodOperator(
            task_id=task_id,
            name=f"e2e-{task_id.replace('_', '-')}",  # + random suffix (random_name_suffix=True)
            namespace=NAMESPACE,
            image="busybox:1.36",  # never pulled: kwok only simulates containers
            cmds=["true"],
            labels={"gpu.platform/profile": profile, "testbed.gpu.platform/complete-after": "2s",
                    "e2e.gpu.platform/run": RUN},
            config_file=KUBECONFIG,
            in_cluster=False,
            kubernetes_conn_id=None,
            get_logs=False,  # the testbed has no kubelet API
            do_xcom_push=False,
            log_events_on_startup=False,
            on_finish_action="keep_pod",
            startup_check_interval_seconds=1,
            base_container_status_polling_interval=0.2,
            startup_timeout_seconds=60,
            deferrable=False,
            retries=0,
            execution_timeout=timedelta(seconds=90),
        )
