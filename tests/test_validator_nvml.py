"""RealNvml's translation of NVML answers into facts (airflow_gpu_webhook.validator.nvml), over a fake pynvml."""

from __future__ import annotations

import sys

import pytest

from airflow_gpu_webhook.validator.facts import LayerError
from airflow_gpu_webhook.validator.nvml import RealNvml

SUCCESS = 0
INVALID_ARGUMENT, NOT_SUPPORTED, NO_PERMISSION, NOT_FOUND = 2, 3, 4, 6
DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND, GPU_IS_LOST, RESET_REQUIRED, UNKNOWN = 9, 12, 15, 16, 999


class FakeNVMLError(Exception):
    def __init__(self, value):
        super().__init__(f"NVML error {value}")
        self.value = value


def gpu(**overrides):
    spec = {
        "uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000",
        "name": "NVIDIA H100 80GB HBM3",
        "mig_mode": NOT_SUPPORTED,
        "mig": [],
        "ecc": [1, 1],
        "ecc_errors": 0,
        "pending": NOT_SUPPORTED,
        "remap": (0, 0, 0, 0),
        "fail": {},  # function name -> error code
    }
    spec.update(overrides)
    return spec


class FakePynvml:
    """Just enough of pynvml's surface, with NVML's error codes and constants."""

    NVMLError = FakeNVMLError
    NVML_ERROR_INVALID_ARGUMENT = INVALID_ARGUMENT
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = NO_PERMISSION
    NVML_ERROR_NOT_FOUND = NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = LIBRARY_NOT_FOUND
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = GPU_IS_LOST
    NVML_ERROR_RESET_REQUIRED = RESET_REQUIRED
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_FEATURE_ENABLED = 1
    NVML_VOLATILE_ECC = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1

    def __init__(self, gpus=(), init_error=None, driver=b"580.65.06", cuda=13000, shutdown_error=None):
        self.gpus = list(gpus)
        self.init_error = init_error
        self.driver = driver
        self.cuda = cuda
        self.shutdown_error = shutdown_error
        self.shutdowns = 0

    def _spec(self, handle, call):
        spec = self.gpus[handle[1]]
        if call in spec["fail"]:
            raise FakeNVMLError(spec["fail"][call])
        return spec

    def nvmlInit(self):
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shutdowns += 1
        if self.shutdown_error:
            raise FakeNVMLError(self.shutdown_error)

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._spec(("gpu", index), "nvmlDeviceGetHandleByIndex")
        return ("gpu", index)

    def nvmlDeviceGetUUID(self, handle):
        if handle[0] == "mig":
            return self.gpus[handle[1]]["mig"][handle[2]][0]
        return self._spec(handle, "nvmlDeviceGetUUID")["uuid"]

    def nvmlDeviceGetName(self, handle):
        if handle[0] == "mig":
            return self.gpus[handle[1]]["mig"][handle[2]][1]
        return self._spec(handle, "nvmlDeviceGetName")["name"]

    def nvmlDeviceGetMigMode(self, handle):
        mode = self._spec(handle, "nvmlDeviceGetMigMode")["mig_mode"]
        if mode in (NOT_SUPPORTED,):
            raise FakeNVMLError(mode)
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return len(self._spec(handle, "nvmlDeviceGetMaxMigDeviceCount")["mig"])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, slot):
        entry = self._spec(handle, "nvmlDeviceGetMigDeviceHandleByIndex")["mig"][slot]
        if isinstance(entry, int):
            raise FakeNVMLError(entry)
        return ("mig", handle[1], slot)

    def nvmlDeviceGetEccMode(self, handle):
        ecc = self._spec(handle, "nvmlDeviceGetEccMode")["ecc"]
        if isinstance(ecc, int):
            raise FakeNVMLError(ecc)
        return ecc

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter_type):
        assert (error_type, counter_type) == (1, 0), "must ask for volatile uncorrected errors"
        return self._spec(handle, "nvmlDeviceGetTotalEccErrors")["ecc_errors"]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle):
        pending = self._spec(handle, "nvmlDeviceGetRetiredPagesPendingStatus")["pending"]
        if pending not in (0, 1):
            raise FakeNVMLError(pending)
        return pending

    def nvmlDeviceGetRemappedRows(self, handle):
        remap = self._spec(handle, "nvmlDeviceGetRemappedRows")["remap"]
        if isinstance(remap, int):
            raise FakeNVMLError(remap)
        return remap


def initialised(fake):
    layer = RealNvml(module=fake)
    layer.init()
    return layer


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (LIBRARY_NOT_FOUND, "nvml-missing"),
        (DRIVER_NOT_LOADED, "nvml-init-failed"),
        (UNKNOWN, "nvml-init-failed"),
        (GPU_IS_LOST, "gpu-lost"),
    ],
    ids=[
        "a missing libnvidia-ml is nvml-missing",
        "an unloaded kernel driver is nvml-init-failed",
        "an unknown init error is nvml-init-failed",
        "a lost GPU at init is gpu-lost",
    ],
)
def test_init_errors_become_layer_errors(error, code):
    with pytest.raises(LayerError) as caught:
        RealNvml(module=FakePynvml(init_error=error)).init()
    assert caught.value.code == code


def test_a_missing_pynvml_package_is_nvml_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(LayerError) as caught:
        RealNvml().init()
    assert caught.value.code == "nvml-missing"
    assert "nvidia-ml-py" in caught.value.message


def test_versions_are_read_and_bytes_decoded():
    layer = initialised(FakePynvml(driver=b"535.104.05", cuda=12020))
    assert layer.driver_version() == "535.104.05"
    assert layer.cuda_driver_version() == 12020


def test_a_healthy_hopper_gpu_reads_as_healthy_facts():
    (facts,) = initialised(FakePynvml([gpu()])).gpus()
    assert facts.uuid.startswith("GPU-") and facts.name == "NVIDIA H100 80GB HBM3"
    assert not facts.mig_enabled and facts.lost_code is None
    h = facts.health
    assert (h.ecc_enabled, h.volatile_uncorrected_ecc) == (True, 0)
    assert h.retired_pages_pending is None, "page retirement is not supported on Ampere and later"
    assert (h.row_remap_pending, h.row_remap_failure) == (False, False)


@pytest.mark.parametrize(
    ("overrides", "field", "value"),
    [
        ({"ecc": NOT_SUPPORTED}, "ecc_enabled", None),
        ({"ecc": [0, 0], "ecc_errors": 7}, "volatile_uncorrected_ecc", None),
        ({"ecc_errors": 2}, "volatile_uncorrected_ecc", 2),
        ({"pending": 1}, "retired_pages_pending", True),
        ({"pending": 0}, "retired_pages_pending", False),
        ({"remap": (0, 1, 1, 0)}, "row_remap_pending", True),
        ({"remap": (0, 1, 0, 1)}, "row_remap_failure", True),
        ({"remap": NOT_SUPPORTED}, "row_remap_failure", None),
        ({"remap": NO_PERMISSION}, "row_remap_failure", None),
    ],
    ids=[
        "ECC not supported reads as unknown",
        "ECC counters are not read when ECC is off",
        "volatile uncorrected ECC errors are counted",
        "pending page retirement is read",
        "no pending page retirement is read",
        "a pending row remap is read",
        "a row remap failure is read",
        "row remapping not supported reads as unknown",
        "row remapping not permitted reads as unknown",
    ],
)
def test_health_counters_are_translated(overrides, field, value):
    (facts,) = initialised(FakePynvml([gpu(**overrides)])).gpus()
    assert getattr(facts.health, field) == value


@pytest.mark.parametrize(
    ("call", "error", "code"),
    [
        ("nvmlDeviceGetHandleByIndex", GPU_IS_LOST, "gpu-lost"),
        ("nvmlDeviceGetName", GPU_IS_LOST, "gpu-lost"),
        ("nvmlDeviceGetRemappedRows", GPU_IS_LOST, "gpu-lost"),
        ("nvmlDeviceGetEccMode", RESET_REQUIRED, "gpu-reset-required"),
    ],
    ids=[
        "a GPU lost when getting its handle is marked lost",
        "a GPU lost when reading its name is marked lost",
        "a GPU lost when reading row remapping is marked lost",
        "a GPU needing a reset is marked so",
    ],
)
def test_a_lost_gpu_is_recorded_not_raised(call, error, code):
    facts = initialised(FakePynvml([gpu(fail={call: error}), gpu()])).gpus()
    assert facts[0].lost_code == code
    assert facts[1].lost_code is None, "the other GPU is still read"


def test_any_other_nvml_error_is_an_nvml_error():
    layer = initialised(FakePynvml([gpu(fail={"nvmlDeviceGetUUID": UNKNOWN})]))
    with pytest.raises(LayerError) as caught:
        layer.gpus()
    assert caught.value.code == "nvml-error"


def test_mig_devices_are_listed_with_profiles_and_foreign_slots_skipped():
    spec = gpu(
        name="NVIDIA A100-SXM4-80GB",
        mig_mode=1,
        mig=[
            ("MIG-11111111-0000-0000-0000-000000000000", "NVIDIA A100-SXM4-80GB MIG 1g.10gb"),
            NOT_FOUND,
            NO_PERMISSION,
            ("MIG-22222222-0000-0000-0000-000000000000", b"NVIDIA A100-SXM4-80GB MIG 2g.20gb"),
            INVALID_ARGUMENT,
        ],
    )
    (facts,) = initialised(FakePynvml([spec])).gpus()
    assert facts.mig_enabled
    assert [(m.mig_index, m.profile) for m in facts.mig_devices] == [(0, "1g.10gb"), (3, "2g.20gb")]
    assert facts.mig_devices[0].uuid.startswith("MIG-")


def test_a_gpu_with_mig_mode_off_lists_no_mig_devices():
    (facts,) = initialised(FakePynvml([gpu(mig_mode=0, mig=[NOT_FOUND])])).gpus()
    assert not facts.mig_enabled and facts.mig_devices == ()


def test_shutdown_runs_once_and_swallows_errors():
    fake = FakePynvml(shutdown_error=UNKNOWN)
    layer = initialised(fake)
    layer.shutdown()
    layer.shutdown()
    assert fake.shutdowns == 1


def test_shutdown_without_init_does_nothing():
    fake = FakePynvml()
    RealNvml(module=fake).shutdown()
    assert fake.shutdowns == 0


def test_real_pynvml_without_a_driver_reports_nvml_missing():
    """The real package, on a machine without libnvidia-ml: the CI case, for real."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML loads here: a driver is present, so 'library not found' cannot be shown")
    with pytest.raises(LayerError) as caught:
        RealNvml().init()
    assert caught.value.code in {"nvml-missing", "nvml-init-failed"}
