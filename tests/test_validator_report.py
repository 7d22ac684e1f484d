"""The three renderings of a report (airflow_gpu_webhook.validator.report)."""

from __future__ import annotations

import json

import pytest
from validator_fakes import FakeCuda, FakeNvml

from airflow_gpu_webhook.validator.checks import Request, validate
from airflow_gpu_webhook.validator.facts import LayerError
from airflow_gpu_webhook.validator.report import (
    CHECKS,
    EXIT_CODES,
    TERMINATION_LOG_LIMIT,
    Failure,
    Report,
    human_text,
    one_line,
    to_dict,
)
from airflow_gpu_webhook.validator.versions import parse_version


def run(nvml=None, cuda=None, resource="nvidia.com/gpu", count=1, driver="535", node=None):
    request = Request(parse_version(driver), parse_version("12.2"), resource, count)
    report = Report(request=request.as_dict(), node=node)
    return validate(request, nvml or FakeNvml(), cuda or FakeCuda(), report=report, smoke_bytes=64)


def test_a_passing_line_names_driver_cuda_and_devices():
    line = one_line(run())
    assert line.startswith("GPU driver validation passed")
    assert "driver 580.65.06" in line and "CUDA 13.0" in line and "NVIDIA H100 80GB HBM3" in line


def test_a_failing_line_names_the_check_the_code_and_the_reason():
    line = one_line(run(driver="999.1"))
    assert "check 'driver'" in line and "[driver-too-old, exit 4]" in line
    assert "older than the required minimum 999.1" in line


def test_the_node_is_named_when_known():
    assert "on node gpu-node-7" in one_line(run(node="gpu-node-7"))


def test_a_multi_line_reason_becomes_one_line():
    report = run(nvml=FakeNvml(init_error=LayerError("nvml-init-failed", "first\nsecond\r\nthird")))
    assert "\n" not in one_line(report) and "first second third" in one_line(report)


def test_a_huge_reason_is_cut_to_what_kubernetes_keeps():
    report = run(nvml=FakeNvml(init_error=LayerError("nvml-init-failed", "é" * 10_000)))
    line = one_line(report)
    assert len(line.encode()) <= TERMINATION_LOG_LIMIT and line.endswith("...")


def test_the_json_report_has_a_stable_shape():
    data = json.loads(json.dumps(to_dict(run())))
    assert set(data) == {
        "ok", "exit_code", "node", "request", "driver_version", "cuda_driver_version",
        "devices", "gpus", "cuda_devices", "checks", "failure", "total_seconds",
    }
    assert data["ok"] is True and data["failure"] is None
    assert [c["name"] for c in data["checks"]] == list(CHECKS)
    assert set(data["checks"][0]) == {"name", "status", "seconds", "detail"}
    assert data["devices"][0]["uuid"].startswith("GPU-")
    assert data["cuda_devices"][0]["uuid"] == data["devices"][0]["uuid"]


def test_the_json_failure_carries_check_code_exit_and_reason():
    data = to_dict(run(cuda=FakeCuda(corrupt=frozenset({0}))))
    assert data["ok"] is False and data["exit_code"] == 9
    assert data["failure"]["check"] == "cuda-smoke" and data["failure"]["code"] == "cuda-copy-mismatch"


def test_the_human_report_lists_every_check_and_marks_those_not_run():
    text = human_text(run(driver="999"))
    assert "FAILED at check 'driver'" in text
    for name in CHECKS:
        assert name in text
    assert text.count("not run") == len(CHECKS) - 2


@pytest.mark.parametrize("code", sorted(EXIT_CODES), ids=lambda c: f"{c} has a non-zero exit code")
def test_every_failure_code_exits_non_zero(code):
    assert Failure("x", code, "r").exit_code != 0


def test_an_unknown_failure_code_is_an_internal_error():
    assert Failure("x", "something-new", "r").exit_code == 1
