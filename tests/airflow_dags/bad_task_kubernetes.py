"""Import error: @task.kubernetes is a KubernetesPodOperator too, checked the same way."""
from airflow.sdk import DAG, task

with DAG("bad_task_kubernetes", schedule=None):

    @task.kubernetes(image="python:3.12", namespace="ml-jobs", labels={"gpu.platform/profile": "a100-40gb"})
    def train():
        pass

    train()
