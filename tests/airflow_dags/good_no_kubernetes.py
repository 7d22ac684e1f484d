"""Loads, whatever the policy file: no Kubernetes task, nothing for the GPU check to read."""
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("good_no_kubernetes", schedule=None):
    EmptyOperator(task_id="noop")
