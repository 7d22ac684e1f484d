"""Import error: a profile the policy does not know."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("bad_unknown_profile", schedule=None):
    KubernetesPodOperator(task_id="train", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "h100-8gb"})
