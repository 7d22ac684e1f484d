"""GPU tasks that name an Airflow pool: kept only where the tenant's airflowPools allows it."""

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("good_kpo_named_pools", schedule=None):
    KubernetesPodOperator(task_id="urgent", image="trainer", namespace="ml-jobs", pool="vision-urgent",
                          labels={"gpu.platform/profile": "h100-80gb"})
    KubernetesPodOperator(task_id="elsewhere", image="trainer", namespace="ml-jobs", pool="etl",
                          labels={"gpu.platform/profile": "a100-mig-1g.10gb"})
