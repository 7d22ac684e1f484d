"""Import error: a count of zero GPUs."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("bad_count_zero", schedule=None):
    KubernetesPodOperator(task_id="train", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "a100-80gb", "gpu.platform/count": "0"})
