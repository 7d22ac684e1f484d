"""`python -m airflow_gpu_webhook.validator ...`: the validator without the `gpu-webhook` wrapper.

Useful where only the package is on the path (the real-GPU test, a debugging shell in the
image). Exits with the code `cli.main` returns.
"""

from .cli import run_as_program

if __name__ == "__main__":
    run_as_program()
