"""Import error: a GPU asked for by hand, without a profile label."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

with DAG("bad_gpu_resources_without_label", schedule=None):
    KubernetesPodOperator(task_id="train", image="trainer", namespace="ml-jobs",
                          container_resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}))
