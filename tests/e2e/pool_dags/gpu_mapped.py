"""The DAG shape of tests/e2e/test_airflow_pools.py: N mapped KubernetesPodOperator tasks, one MIG slice each.

Not a DAG file itself: the files of the two bundles (pooled/, unpooled/) import it. Each DAG's
pods go to its own namespace, so its tenant is known at parse time (reference policy + the test's
tenants). Environment (set by the test): E2E_KUBECONFIG, the testbed's admin kubeconfig; E2E_RUN,
put on every pod as label e2e.gpu.platform/run;
E2E_POD_SECONDS, how long each pod runs.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

#: How long each pod runs once on its node (kwok, the testbed's complete-after label), set by the test.
POD_SECONDS = f"{os.environ.get('E2E_POD_SECONDS', '6')}s"


def mapped_gpu_dag(dag_id: str, namespace: str, tasks: int) -> DAG:
    with DAG(dag_id, schedule=None, catchup=False, tags=["e2e", "pools"]) as dag:
        KubernetesPodOperator.partial(
            task_id="slice",
            name="e2e-pool",
            namespace=namespace,
            image="busybox:1.36",  # never pulled: kwok only simulates containers
            cmds=["true"],
            labels={"gpu.platform/profile": "a100-mig-1g.10gb", "testbed.gpu.platform/complete-after": POD_SECONDS,
                    "e2e.gpu.platform/run": os.environ.get("E2E_RUN", "by-hand")},
            config_file=os.environ.get("E2E_KUBECONFIG"),
            in_cluster=False,
            kubernetes_conn_id=None,
            get_logs=False,
            do_xcom_push=False,
            log_events_on_startup=False,
            on_finish_action="keep_pod",
            startup_check_interval_seconds=1,
            base_container_status_polling_interval=0.5,
            startup_timeout_seconds=120,
            deferrable=False,
            retries=0,
            execution_timeout=timedelta(seconds=180),
        ).expand(arguments=[[str(i)] for i in range(tasks)])
    return dag
