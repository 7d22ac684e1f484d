"""Import error: a hostPath volume hands /dev/nvidia0 to the pod."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

with DAG("bad_host_path", schedule=None):
    KubernetesPodOperator(task_id="train", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "a100-80gb"},
                          volumes=[k8s.V1Volume(name="gpu0",
                                                host_path=k8s.V1HostPathVolumeSource(path="/dev/nvidia0"))])
