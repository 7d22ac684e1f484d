"""Driver validation for the init container the webhook inserts into GPU pods.

`gpu-webhook validate-driver` runs before an Airflow task's own container, on the node the pod
landed on, with the very devices the task will get. It proves, in order and stopping at the
first failure, that NVML loads, the driver and its CUDA API are new enough, the devices match
the request (whole GPUs or MIG slices of the right profile), the GPUs are healthy, and that a
CUDA context can really be made and memory copied both ways. A broken node then fails in
seconds with a one-line reason in `kubectl describe pod`, instead of an hour into the task.

Nothing GPU-specific is imported here: `pynvml` and `libcuda.so.1` are loaded only when a
check runs, so the package imports on machines without a GPU (CI, the webhook itself).
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `gpu-webhook validate-driver`; see `airflow_gpu_webhook.validator.cli.main`."""
    from .cli import main as _main

    return _main(argv)


__all__ = ["main"]
