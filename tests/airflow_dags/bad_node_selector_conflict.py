"""Import error: the task pins H100 nodes but asks for an A100 profile."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("bad_node_selector_conflict", schedule=None):
    KubernetesPodOperator(task_id="train", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "a100-80gb"},
                          node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
