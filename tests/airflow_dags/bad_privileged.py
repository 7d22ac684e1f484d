"""Import error: a privileged GPU container would see every GPU of the node."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

with DAG("bad_privileged", schedule=None):
    KubernetesPodOperator(task_id="train", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "a100-80gb"},
                          container_security_context=k8s.V1SecurityContext(privileged=True))
