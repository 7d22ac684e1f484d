"""The checks and their order (airflow_gpu_webhook.validator.checks), over fake NVML and CUDA layers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from validator_fakes import (
    FakeCuda,
    FakeNvml,
    cuda_info_for,
    gpu_uuid,
    healthy_gpu,
    mig_gpu,
    mig_uuid,
)

from airflow_gpu_webhook.validator.checks import (
    Passed,
    Request,
    allocated_units,
    check_cuda_version,
    check_devices,
    check_driver_version,
    check_health,
    first_difference,
    parse_resource,
    validate,
)
from airflow_gpu_webhook.validator.facts import GpuFacts, HealthFacts, LayerError
from airflow_gpu_webhook.validator.report import CHECKS, Failure
from airflow_gpu_webhook.validator.versions import parse_version


def request(resource="nvidia.com/gpu", count=1, driver="535.104.05", cuda="12.2"):
    return Request(parse_version(driver), parse_version(cuda), resource, count)


def sick(**health):
    base = healthy_gpu(0).health
    return replace(healthy_gpu(0), health=replace(base, **health))


LOST = GpuFacts(index=0, lost_code="gpu-lost", lost_detail="NVML reports the GPU is lost (fallen off the bus)")
RESET = GpuFacts(index=0, uuid=gpu_uuid(0), lost_code="gpu-reset-required", lost_detail="needs a reset")

# (id, nvml, cuda, request, failing check or None, failure code, exit code)
SCENARIOS = [
    ("a healthy GPU that meets every minimum passes", FakeNvml(), FakeCuda(), request(), None, None, 0),
    ("two healthy GPUs requested and given pass",
     FakeNvml(devices=[healthy_gpu(0), healthy_gpu(1)]),
     FakeCuda(infos=[cuda_info_for(gpu_uuid(0), 0), cuda_info_for(gpu_uuid(1), 1)]),
     request(count=2), None, None, 0),
    ("a MIG slice of the requested profile passes",
     FakeNvml(devices=[mig_gpu(0, ("1g.10gb",))]), FakeCuda(infos=[cuda_info_for(mig_uuid(0, 0), 0)]),
     request("nvidia.com/mig-1g.10gb"), None, None, 0),
    ("a single-strategy MIG slice counts as one nvidia.com/gpu",
     FakeNvml(devices=[mig_gpu(0, ("3g.40gb",))]), FakeCuda(infos=[cuda_info_for(mig_uuid(0, 0), 0)]),
     request(), None, None, 0),
    ("NVML missing fails at the nvml check",
     FakeNvml(init_error=LayerError("nvml-missing", "libnvidia-ml.so.1 not found")), FakeCuda(), request(),
     "nvml", "nvml-missing", 3),
    ("NVML failing to initialise fails at the nvml check",
     FakeNvml(init_error=LayerError("nvml-init-failed", "Driver Not Loaded")), FakeCuda(), request(),
     "nvml", "nvml-init-failed", 3),
    ("a driver older than the minimum fails the driver check",
     FakeNvml(driver="525.85.12"), FakeCuda(), request(driver="535.104.05"), "driver", "driver-too-old", 4),
    ("a driver newer only by string order still fails the driver check",
     FakeNvml(driver="535.54.03"), FakeCuda(), request(driver="535.104.05"), "driver", "driver-too-old", 4),
    ("a CUDA driver API older than the minimum fails the cuda-version check",
     FakeNvml(cuda=12020), FakeCuda(), request(cuda="12.4"), "cuda-version", "cuda-too-old", 5),
    ("too few whole GPUs fails the devices check",
     FakeNvml(), FakeCuda(), request(count=2), "devices", "device-count-mismatch", 6),
    ("more GPUs than requested fails the devices check as broken isolation",
     FakeNvml(devices=[healthy_gpu(0), healthy_gpu(1)]), FakeCuda(), request(count=1),
     "devices", "device-count-mismatch", 6),
    ("no GPU at all fails the devices check",
     FakeNvml(devices=[]), FakeCuda(), request(), "devices", "device-count-mismatch", 6),
    ("a MIG slice of the wrong profile fails the devices check",
     FakeNvml(devices=[mig_gpu(0, ("2g.20gb",))]), FakeCuda(), request("nvidia.com/mig-1g.10gb"),
     "devices", "mig-profile-mismatch", 6),
    ("a whole GPU where a MIG slice was requested fails the devices check",
     FakeNvml(), FakeCuda(), request("nvidia.com/mig-1g.10gb"), "devices", "mig-profile-mismatch", 6),
    ("too few MIG slices of the right profile fails the devices check",
     FakeNvml(devices=[mig_gpu(0, ("1g.10gb",))]), FakeCuda(), request("nvidia.com/mig-1g.10gb", count=2),
     "devices", "device-count-mismatch", 6),
    ("a lost GPU fails the devices check as gpu-lost",
     FakeNvml(devices=[LOST]), FakeCuda(), request(), "devices", "gpu-lost", 8),
    ("a GPU needing a reset fails the devices check as gpu-reset-required",
     FakeNvml(devices=[RESET]), FakeCuda(), request(), "devices", "gpu-reset-required", 8),
    ("NVML losing the GPU while listing devices fails as gpu-lost",
     FakeNvml(gpus_error=LayerError("gpu-lost", "GPU is lost")), FakeCuda(), request(), "devices", "gpu-lost", 8),
    ("volatile uncorrectable ECC errors fail the health check",
     FakeNvml(devices=[sick(volatile_uncorrected_ecc=3)]), FakeCuda(), request(), "health", "ecc-uncorrectable", 7),
    ("pages pending retirement fail the health check",
     FakeNvml(devices=[sick(retired_pages_pending=True)]), FakeCuda(), request(), "health", "page-retirement-pending", 7),
    ("a row remap failure fails the health check",
     FakeNvml(devices=[sick(row_remap_failure=True)]), FakeCuda(), request(), "health", "row-remap-failure", 7),
    ("a pending row remap fails the health check",
     FakeNvml(devices=[sick(row_remap_pending=True)]), FakeCuda(), request(), "health", "row-remap-pending", 7),
    ("libcuda missing fails the CUDA smoke test",
     FakeNvml(), FakeCuda(init_error=LayerError("libcuda-missing", "libcuda.so.1: cannot open shared object file")),
     request(), "cuda-smoke", "libcuda-missing", 9),
    ("cuInit failing fails the CUDA smoke test",
     FakeNvml(), FakeCuda(init_error=LayerError("cuda-init-failed", "cuInit failed with CUDA_ERROR_NO_DEVICE")),
     request(), "cuda-smoke", "cuda-init-failed", 9),
    ("CUDA seeing no device fails the CUDA smoke test",
     FakeNvml(), FakeCuda(infos=[]), request(), "cuda-smoke", "cuda-device-count", 9),
    ("CUDA seeing fewer GPUs than NVML fails the CUDA smoke test",
     FakeNvml(devices=[healthy_gpu(0), healthy_gpu(1)]), FakeCuda(), request(count=2),
     "cuda-smoke", "cuda-device-count", 9),
    ("an allocation error fails the CUDA smoke test",
     FakeNvml(), FakeCuda(roundtrip_error=LayerError("cuda-error", "cuMemAlloc failed with CUDA_ERROR_OUT_OF_MEMORY")),
     request(), "cuda-smoke", "cuda-error", 9),
    ("data read back different from what was written fails the CUDA smoke test",
     FakeNvml(), FakeCuda(corrupt=frozenset({0})), request(), "cuda-smoke", "cuda-copy-mismatch", 9),
]


@pytest.mark.parametrize(
    ("nvml", "cuda", "req", "check", "code", "exit_code"),
    [s[1:] for s in SCENARIOS],
    ids=[s[0] for s in SCENARIOS],
)
def test_validation_outcome(nvml, cuda, req, check, code, exit_code):
    report = validate(req, nvml, cuda, smoke_bytes=4096)
    assert report.exit_code == exit_code
    if check is None:
        assert report.ok, report.failure
        assert [c.name for c in report.checks] == list(CHECKS)
        assert all(c.status == "pass" for c in report.checks)
    else:
        assert not report.ok
        assert report.failure.check == check
        assert report.failure.code == code
        assert "\n" not in report.failure.reason
        names = [c.name for c in report.checks]
        assert names == list(CHECKS[: CHECKS.index(check) + 1]), "checks after the failure must not run"
        assert report.checks[-1].status == "fail"
    assert nvml.shut_down, "NVML is shut down whatever happened"


def test_cuda_is_not_touched_when_an_earlier_check_fails():
    cuda = FakeCuda()
    validate(request(driver="999"), FakeNvml(), cuda)
    assert cuda.calls == []


def test_every_cuda_device_gets_a_round_trip_with_its_nvml_uuid():
    nvml = FakeNvml(devices=[healthy_gpu(0), healthy_gpu(1)])
    cuda = FakeCuda(infos=[cuda_info_for(gpu_uuid(0), 0), cuda_info_for(gpu_uuid(1), 1)])
    report = validate(request(count=2), nvml, cuda, smoke_bytes=1024)
    assert [d["uuid"] for d in report.cuda_devices] == [gpu_uuid(0), gpu_uuid(1)]
    assert all(d["copy_bytes"] == 1024 for d in report.cuda_devices)
    assert "roundtrip:1" in cuda.calls


def test_an_unexpected_exception_is_an_internal_error_not_a_crash():
    class Broken(FakeNvml):
        def driver_version(self):
            raise RuntimeError("boom")

    report = validate(request(), Broken(), FakeCuda())
    assert report.failure.code == "internal-error"
    assert report.exit_code == 1


def test_each_check_is_timed_with_the_injected_clock():
    ticks = iter(range(100))
    report = validate(request(), FakeNvml(), FakeCuda(), clock=lambda: float(next(ticks)), smoke_bytes=16)
    assert all(c.seconds >= 1.0 for c in report.checks)
    assert report.total_seconds > sum(c.seconds for c in report.checks) - 1


# -- the pure checks, one by one ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "minimum", "passes"),
    [("580.65.06", "535.104.05", True), ("535.104.05", "535.104.05", True), ("535.54.03", "535.104.05", False)],
    ids=["newer passes", "equal passes", "older by number fails"],
)
def test_driver_check(reported, minimum, passes):
    outcome = check_driver_version(reported, parse_version(minimum))
    assert isinstance(outcome, Passed) is passes


def test_a_driver_version_nvml_cannot_spell_is_an_nvml_error():
    outcome = check_driver_version("garbage", parse_version("535"))
    assert isinstance(outcome, Failure) and outcome.code == "nvml-error"


@pytest.mark.parametrize(
    ("reported", "minimum", "passes"),
    [(12040, "12.4", True), (12020, "12.4", False), (13000, "12.8", True), (12080, "12.10", False)],
    ids=["equal passes", "older fails", "next major passes", "minor compared as number"],
)
def test_cuda_check(reported, minimum, passes):
    assert isinstance(check_cuda_version(reported, parse_version(minimum)), Passed) is passes


@pytest.mark.parametrize(
    ("resource", "profile"),
    [
        ("nvidia.com/gpu", None),
        ("nvidia.com/mig-1g.10gb", "1g.10gb"),
        ("nvidia.com/mig-3g.40gb", "3g.40gb"),
        ("nvidia.com/mig-1g.10gb.me", "1g.10gb.me"),
        ("nvidia.com/mig-1c.2g.20gb", "1c.2g.20gb"),
    ],
    ids=lambda v: str(v),
)
def test_resource_names_give_the_mig_profile(resource, profile):
    assert parse_resource(resource) == profile


@pytest.mark.parametrize(
    "resource", ["amd.com/gpu", "nvidia.com/mig-", "nvidia.com/mig-big", "gpu", "nvidia.com/GPU"], ids=lambda v: v
)
def test_other_resources_are_refused(resource):
    with pytest.raises(ValueError):
        parse_resource(resource)


def test_a_plus_me_profile_from_nvml_matches_the_dot_me_resource():
    gpus = [mig_gpu(0, ("1g.10gb+me",))]
    assert isinstance(check_devices(gpus, 1, "1g.10gb.me"), Passed)


def test_mixed_mig_and_whole_gpus_are_counted_per_unit():
    units = allocated_units([mig_gpu(0, ("1g.10gb", "1g.10gb")), healthy_gpu(1)])
    assert [(u.kind, u.profile) for u in units] == [("mig", "1g.10gb"), ("mig", "1g.10gb"), ("gpu", None)]


def test_right_profile_plus_a_stray_whole_gpu_is_broken_isolation():
    outcome = check_devices([mig_gpu(0, ("1g.10gb",)), healthy_gpu(1)], 1, "1g.10gb")
    assert isinstance(outcome, Failure) and outcome.code == "device-count-mismatch"


def test_the_wrong_profile_message_names_what_was_found():
    outcome = check_devices([mig_gpu(0, ("2g.20gb",))], 1, "1g.10gb")
    assert "2g.20gb" in outcome.reason and "1g.10gb" in outcome.reason


@pytest.mark.parametrize(
    "health",
    [
        HealthFacts(),
        HealthFacts(ecc_enabled=False, volatile_uncorrected_ecc=None),
        HealthFacts(ecc_enabled=True, volatile_uncorrected_ecc=0, retired_pages_pending=False),
        HealthFacts(ecc_enabled=None, row_remap_pending=False, row_remap_failure=False),
    ],
    ids=["nothing supported passes", "ecc off passes", "pre-Ampere clean passes", "no ecc but clean remap passes"],
)
def test_unsupported_health_counters_are_skipped_not_failed(health):
    assert isinstance(check_health([replace(healthy_gpu(0), health=health)]), Passed)


def test_ecc_counts_are_ignored_when_ecc_is_off():
    gpu = replace(healthy_gpu(0), health=HealthFacts(ecc_enabled=False, volatile_uncorrected_ecc=5))
    assert isinstance(check_health([gpu]), Passed)


def test_the_second_gpus_health_is_checked_too():
    outcome = check_health([healthy_gpu(0), replace(sick(row_remap_failure=True), index=1)])
    assert isinstance(outcome, Failure) and "GPU 1" in outcome.reason


@pytest.mark.parametrize(
    ("sent", "received", "offset"),
    [(b"abcd", b"abcd", None), (b"abcd", b"abXd", 2), (b"abcd", b"abc", 3), (b"", b"", None)],
    ids=["equal", "one byte differs", "short read", "empty"],
)
def test_first_difference(sent, received, offset):
    assert first_difference(sent, received) == offset
