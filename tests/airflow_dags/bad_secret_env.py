"""Import error: a Secret exposed as NVIDIA_VISIBLE_DEVICES is an env var like any other."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.sdk import DAG

with DAG("bad_secret_env", schedule=None):
    KubernetesPodOperator(task_id="train", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "a100-80gb"},
                          secrets=[Secret("env", "NVIDIA_VISIBLE_DEVICES", "gpu-devices", "list")])
