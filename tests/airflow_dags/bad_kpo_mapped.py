"""Import error: a mapped KubernetesPodOperator with an unknown profile in partial()."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("bad_kpo_mapped", schedule=None):
    KubernetesPodOperator.partial(task_id="sweep", image="trainer", namespace="ml-jobs",
                                  labels={"gpu.platform/profile": "a100-mig-9g"},
                                  ).expand(arguments=[["--lr", "0.1"], ["--lr", "0.01"]])
