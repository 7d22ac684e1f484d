"""Import error: a KubernetesExecutor pod_override with too many GPUs and NVIDIA_VISIBLE_DEVICES."""
from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

with DAG("team_vision__finetune", schedule=None):

    @task(executor_config={"pod_override": k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(labels={"gpu.platform/profile": "h100-80gb", "gpu.platform/count": "9"}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(
            name="base", env=[k8s.V1EnvVar(name="NVIDIA_VISIBLE_DEVICES", value="all")])]))})
    def finetune():
        return "done"

    finetune()
