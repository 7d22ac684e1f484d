"""airflow-gpu-webhook: label-driven GPU mutation and policy enforcement for Airflow pods."""

__version__ = "0.1.0"
