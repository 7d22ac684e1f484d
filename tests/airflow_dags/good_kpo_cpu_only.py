"""Loads: a KubernetesPodOperator without GPUs is not the webhook's business."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG("good_kpo_cpu_only", schedule=None):
    KubernetesPodOperator(task_id="etl", image="python:3.12", namespace="etl", env_vars={"MODE": "full"})
