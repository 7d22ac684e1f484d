"""Loads: a KubernetesExecutor task whose pod_override asks for a MIG slice (tenant vision by dag_id)."""
from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

with DAG("team_vision__embed", schedule=None):

    @task(executor_config={"pod_override": k8s.V1Pod(metadata=k8s.V1ObjectMeta(
        labels={"gpu.platform/profile": "a100-mig-1g.10gb"}))})
    def embed():
        return "done"

    embed()
