"""Import error: namespace airflow and a dag_id no tenant's prefix matches."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("adhoc_train", schedule=None):
    KubernetesPodOperator(task_id="train", image="trainer", namespace="airflow",
                          labels={"gpu.platform/profile": "a100-80gb"})
