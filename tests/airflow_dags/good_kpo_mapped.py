"""Loads: a mapped KubernetesPodOperator whose GPU labels are given to partial()."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("good_kpo_mapped", schedule=None):
    KubernetesPodOperator.partial(
        task_id="sweep", image="trainer", namespace="ml-jobs",
        labels={"gpu.platform/profile": "a100-mig-1g.10gb", "gpu.platform/count": "2"},
    ).expand(arguments=[["--lr", "0.1"], ["--lr", "0.01"]])
