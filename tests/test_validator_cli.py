"""`gpu-webhook validate-driver` as a command (airflow_gpu_webhook.validator.cli): arguments, outputs, exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from validator_fakes import FakeCuda, FakeNvml, healthy_gpu, mig_gpu

from airflow_gpu_webhook.validator.cli import main
from airflow_gpu_webhook.validator.facts import HealthFacts, LayerError

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--min-driver-version", "535.104.05", "--min-cuda-version", "12.2"]


def invoke(argv, nvml=None, cuda=None):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, nvml=nvml or FakeNvml(), cuda=cuda or FakeCuda(), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def log(tmp_path):
    return tmp_path / "termination-log"


def test_success_prints_the_json_report_and_writes_a_passing_line(log):
    code, out, err = invoke([*ARGS, "--termination-log", str(log)])
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert report["driver_version"] == "580.65.06" and report["cuda_driver_version"] == "13.0"
    assert report["devices"][0]["uuid"].startswith("GPU-")
    assert all(isinstance(c["seconds"], float) for c in report["checks"])
    assert log.read_text().startswith("GPU driver validation passed")
    assert err == ""


FAILURES = [
    ("NVML missing exits 3", FakeNvml(init_error=LayerError("nvml-missing", "libnvidia-ml.so.1 not found")), FakeCuda(), [], 3, "nvml-missing"),
    ("an old driver exits 4", FakeNvml(driver="525.60.13"), FakeCuda(), [], 4, "driver-too-old"),
    ("an old CUDA exits 5", FakeNvml(cuda=12000), FakeCuda(), [], 5, "cuda-too-old"),
    ("too few devices exits 6", FakeNvml(), FakeCuda(), ["--count", "4"], 6, "device-count-mismatch"),
    ("a wrong MIG profile exits 6", FakeNvml(devices=[mig_gpu(0, ("3g.40gb",))]), FakeCuda(),
     ["--resource", "nvidia.com/mig-1g.10gb"], 6, "mig-profile-mismatch"),
    ("ECC errors exit 7",
     FakeNvml(devices=[replace(healthy_gpu(0), health=HealthFacts(ecc_enabled=True, volatile_uncorrected_ecc=1))]),
     FakeCuda(), [], 7, "ecc-uncorrectable"),
    ("a lost GPU exits 8", FakeNvml(gpus_error=LayerError("gpu-lost", "GPU is lost")), FakeCuda(), [], 8, "gpu-lost"),
    ("libcuda missing exits 9", FakeNvml(), FakeCuda(init_error=LayerError("libcuda-missing", "libcuda.so.1 missing")), [], 9, "libcuda-missing"),
    ("a CUDA copy mismatch exits 9", FakeNvml(), FakeCuda(corrupt=frozenset({0})), [], 9, "cuda-copy-mismatch"),
]


@pytest.mark.parametrize(
    ("nvml", "cuda", "extra", "exit_code", "failure_code"),
    [f[1:] for f in FAILURES],
    ids=[f[0] for f in FAILURES],
)
def test_a_failure_writes_one_line_and_a_full_report(log, nvml, cuda, extra, exit_code, failure_code):
    code, out, err = invoke([*ARGS, *extra, "--termination-log", str(log)], nvml, cuda)
    assert code == exit_code
    line = log.read_text()
    assert line.count("\n") == 1 and line.endswith("\n")
    assert f"[{failure_code}, exit {exit_code}]" in line
    assert out == "", "without --json a failure prints nothing on stdout"
    assert "FAILED at check" in err and "checks:" in err


def test_json_makes_failures_machine_readable(log):
    code, out, err = invoke([*ARGS, "--json", "--count", "2", "--termination-log", str(log)])
    assert code == 6
    report = json.loads(out)
    assert report["ok"] is False and report["exit_code"] == 6
    assert report["failure"]["check"] == "devices"
    assert report["failure"]["code"] == "device-count-mismatch"
    assert report["failure"]["reason"] in log.read_text()
    assert [c["status"] for c in report["checks"]] == ["pass", "pass", "pass", "fail"]
    assert "FAILED" in err, "the human report still goes to stderr"


@pytest.mark.parametrize(
    "path",
    ["/nonexistent-dir/termination-log", "/proc/version", ""],
    ids=["a missing directory", "a read-only file", "an empty path"],
)
def test_an_unwritable_termination_log_does_not_change_the_verdict(path):
    code, out, _ = invoke([*ARGS, "--termination-log", path])
    assert code == 0 and json.loads(out)["ok"] is True
    code, _, err = invoke([*ARGS, "--termination-log", path], nvml=FakeNvml(driver="400.1"))
    assert code == 4 and "FAILED" in err


@pytest.mark.parametrize(
    "argv",
    [
        [*ARGS, "--count", "0"],
        [*ARGS, "--count", "-1"],
        [*ARGS, "--count", "two"],
        ["--min-driver-version", "535.x", "--min-cuda-version", "12.2"],
        ["--min-driver-version", "535", "--min-cuda-version", "twelve"],
        ["--min-cuda-version", "12.2"],
        [*ARGS, "--resource", "amd.com/gpu"],
        [*ARGS, "--resource", "nvidia.com/mig-huge"],
        [*ARGS, "--timeout", "0"],
        [*ARGS, "--bogus"],
    ],
    ids=[
        "count zero is a usage error",
        "a negative count is a usage error",
        "a non-numeric count is a usage error",
        "a malformed driver version is a usage error",
        "a malformed CUDA version is a usage error",
        "a missing driver minimum is a usage error",
        "a non-NVIDIA resource is a usage error",
        "a malformed MIG profile is a usage error",
        "a zero timeout is a usage error",
        "an unknown option is a usage error",
    ],
)
def test_bad_arguments_exit_2_without_touching_the_gpu(argv, capsys):
    nvml, cuda = FakeNvml(), FakeCuda()
    code, _, _ = invoke(argv, nvml, cuda)
    assert code == 2
    assert "usage: gpu-webhook validate-driver" in capsys.readouterr().err
    assert not nvml.shut_down and cuda.calls == []


def test_help_exits_0(capsys):
    code, _, _ = invoke(["--help"])
    assert code == 0
    assert "exit codes" in capsys.readouterr().out


def test_a_hanging_driver_call_is_abandoned_at_the_deadline(log):
    release = threading.Event()
    try:
        code, out, err = invoke([*ARGS, "--timeout", "0.3", "--json", "--termination-log", str(log)], cuda=FakeCuda(hang=release))
    finally:
        release.set()
    assert code == 10
    report = json.loads(out)
    assert report["failure"]["code"] == "timeout" and report["failure"]["check"] == "cuda-smoke"
    assert [c["name"] for c in report["checks"]] == ["nvml", "driver", "cuda-version", "devices", "health"]
    assert "check 'cuda-smoke' did not finish within 0.3s" in log.read_text()
    assert "TIMEOUT" in err


def test_the_node_name_from_the_downward_api_is_reported(log, monkeypatch):
    monkeypatch.setenv("NODE_NAME", "gpu-node-3")
    invoke([*ARGS, "--termination-log", str(log)], nvml=FakeNvml(driver="1.0"))
    assert "on node gpu-node-3" in log.read_text()


def _subprocess(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, **kwargs)


def test_importing_the_package_loads_no_gpu_library():
    code = (
        "import sys; import airflow_gpu_webhook.validator, airflow_gpu_webhook.validator.cli, airflow_gpu_webhook.validator.checks; "
        "bad = [m for m in ('pynvml', 'torch', 'cupy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = _subprocess(["-c", code])
    assert result.returncode == 0, result.stderr


def test_python_dash_m_runs_the_validator(tmp_path):
    """As the init container runs it; on a machine with no GPU this is the real 'NVML missing'."""
    log = tmp_path / "log"
    result = _subprocess(["-m", "airflow_gpu_webhook.validator", *ARGS, "--json", "--termination-log", str(log)])
    report = json.loads(result.stdout)
    assert result.returncode == report["exit_code"]
    if report["ok"]:
        pytest.skip("a working GPU is here: the no-GPU path was not exercised (test_validator_gpu covers this machine)")
    assert report["failure"]["check"] in {"nvml", "cuda-smoke"}
    assert result.returncode in {3, 9}
    assert log.read_text().startswith("GPU driver validation failed")
