"""Import error: NVIDIA_VISIBLE_DEVICES would expose GPUs the device plugin never allocated."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("bad_visible_devices_env", schedule=None):
    KubernetesPodOperator(task_id="sneaky", image="trainer", namespace="ml-jobs",
                          env_vars={"NVIDIA_VISIBLE_DEVICES": "all"})
