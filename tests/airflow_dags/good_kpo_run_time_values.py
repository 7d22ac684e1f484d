"""Loads: what is known only at run time (templates, the connection's namespace, quota) is skipped, not guessed."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("good_kpo_run_time_values", schedule=None, params={"profile": "h100-80gb", "gpus": "2"}):
    KubernetesPodOperator(task_id="profile_from_params", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "{{ params.profile }}"})
    KubernetesPodOperator(task_id="count_from_params", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "h100-80gb", "gpu.platform/count": "{{ params.gpus }}"})
    KubernetesPodOperator(task_id="namespace_from_variable", image="trainer", namespace="{{ var.value.gpu_ns }}",
                          labels={"gpu.platform/profile": "a100-80gb"})
    KubernetesPodOperator(task_id="namespace_from_connection", image="trainer",
                          labels={"gpu.platform/profile": "a100-80gb"})
    # 5 GPUs against vision's quota of 4: quota is judged when the pod is created, never at parse time.
    KubernetesPodOperator(task_id="more_than_the_quota", image="trainer", namespace="ml-jobs",
                          labels={"gpu.platform/profile": "h100-80gb", "gpu.platform/count": "5"})
