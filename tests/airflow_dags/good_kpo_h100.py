"""Loads: two H100s for the vision team (namespace ml-jobs), next to a CPU task."""
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("good_kpo_h100", schedule=None):
    EmptyOperator(task_id="start") >> KubernetesPodOperator(
        task_id="train", image="nvcr.io/nvidia/pytorch:24.05-py3", namespace="ml-jobs", do_xcom_push=True,
        labels={"gpu.platform/profile": "h100-80gb", "gpu.platform/count": "2"},
        env_vars={"EPOCHS": "3", "RUN_DATE": "{{ ds }}"},
    )
