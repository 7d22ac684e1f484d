"""The validator against the real GPU of this machine, as the init container runs it.

Runs only where NVML initialises (an NVIDIA driver and GPU are present); everywhere else every
test here is skipped with the reason "no NVIDIA GPU here: the real-GPU checks did not run", so
a green run on CI never pretends the hardware path was proven.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = "no NVIDIA GPU here: the real-GPU checks did not run"


@pytest.fixture(scope="module")
def installed():
    """The installed driver, CUDA version and number of visible units, read through NVML."""
    try:
        import pynvml
    except ImportError:
        pytest.skip(f"{NO_GPU} (nvidia-ml-py is not installed)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        pytest.skip(f"{NO_GPU} (NVML did not initialise: {error})")
    try:
        from airflow_gpu_webhook.validator.checks import allocated_units
        from airflow_gpu_webhook.validator.nvml import RealNvml
        from airflow_gpu_webhook.validator.versions import cuda_version_from_int

        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        cuda = str(cuda_version_from_int(pynvml.nvmlSystemGetCudaDriverVersion()))
        layer = RealNvml(module=pynvml)
        units = allocated_units(layer.gpus())
    finally:
        pynvml.nvmlShutdown()
    if not units:
        pytest.skip(f"{NO_GPU} (NVML initialised but lists no device)")
    return {"driver": driver, "cuda": cuda, "units": len(units)}


def validate(tmp_path, *args):
    log = tmp_path / "termination-log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "airflow_gpu_webhook.validator", *args, "--json", "--termination-log", str(log), "--timeout", "60"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    return result, json.loads(result.stdout), log.read_text()


def test_the_real_gpu_passes_with_the_installed_minimums(tmp_path, installed):
    result, report, line = validate(
        tmp_path,
        "--min-driver-version", installed["driver"],
        "--min-cuda-version", installed["cuda"],
        "--count", str(installed["units"]),
    )
    assert result.returncode == 0, result.stderr
    assert report["ok"] is True
    assert report["driver_version"] == installed["driver"]
    assert report["cuda_driver_version"] == installed["cuda"]
    assert len(report["devices"]) == installed["units"]
    assert all(d["uuid"] for d in report["devices"])
    assert len(report["cuda_devices"]) >= 1
    assert all(d["uuid"] for d in report["cuda_devices"]), "every CUDA device matched an NVML UUID"
    assert [c["status"] for c in report["checks"]] == ["pass"] * 6
    assert line.startswith("GPU driver validation passed")


def test_the_real_gpu_fails_a_minimum_driver_above_the_installed_one(tmp_path, installed):
    above = str(int(installed["driver"].split(".")[0]) + 1)
    result, report, line = validate(
        tmp_path, "--min-driver-version", above, "--min-cuda-version", installed["cuda"],
        "--count", str(installed["units"]),
    )
    assert result.returncode == 4
    assert report["failure"]["code"] == "driver-too-old"
    assert f"NVIDIA driver {installed['driver']} is older than the required minimum {above}" in line


def test_the_real_gpu_fails_a_minimum_cuda_above_the_installed_one(tmp_path, installed):
    above = f"{int(installed['cuda'].split('.')[0]) + 1}.0"
    result, report, _ = validate(
        tmp_path, "--min-driver-version", installed["driver"], "--min-cuda-version", above,
        "--count", str(installed["units"]),
    )
    assert result.returncode == 5
    assert report["failure"]["code"] == "cuda-too-old"


def test_the_real_gpu_fails_when_more_devices_are_requested_than_visible(tmp_path, installed):
    result, report, line = validate(
        tmp_path, "--min-driver-version", installed["driver"], "--min-cuda-version", installed["cuda"],
        "--count", str(installed["units"] + 1),
    )
    assert result.returncode == 6
    assert report["failure"]["code"] == "device-count-mismatch"
    assert f"only {installed['units']} visible" in line


def test_the_real_gpu_fails_a_mig_request_when_mig_is_off(tmp_path, installed):
    result, report, _ = validate(
        tmp_path, "--min-driver-version", installed["driver"], "--min-cuda-version", installed["cuda"],
        "--resource", "nvidia.com/mig-1g.10gb",
    )
    if any(g["mig_enabled"] for g in report["gpus"]):
        pytest.skip("this GPU is in MIG mode: the MIG-off refusal does not apply")
    assert result.returncode == 6
    assert report["failure"]["code"] == "mig-profile-mismatch"
