"""The checks: pure decisions over gathered facts, and the loop that runs them in order.

Each `check_*` function takes facts (strings, ints, `GpuFacts`...) and returns either `Passed`
with a one-line detail or a `Failure`; none of them touches NVML or CUDA, so every outcome is a
unit test away. `validate` gathers the facts through the injected layers, one check at a time,
times each, and stops at the first failure: a later check's facts are meaningless once an
earlier one failed (no point counting devices with a driver NVML cannot load).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.names import GPU_RESOURCE, MIG_PREFIX, mig_profile
from .cuda import CudaLayer
from .facts import CudaDeviceInfo, GpuFacts, LayerError, normalise_profile
from .nvml import NvmlLayer
from .report import CheckRecord, Failure, Report, cuda_device_dict
from .versions import Version, VersionError, cuda_version_from_int, parse_version

#: Bytes copied to each device and back. Large enough to cross pages and DMA chunks, small
#: enough to take milliseconds and fit the smallest MIG slice many times over.
SMOKE_BYTES = 4 << 20


@dataclass(frozen=True)
class Request:
    """What the pod asked for, as the webhook wrote it into the init container's arguments."""

    min_driver: Version
    min_cuda: Version
    resource: str
    count: int

    @property
    def mig_profile(self) -> str | None:
        return parse_resource(self.resource)

    def as_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "count": self.count,
            "mig_profile": self.mig_profile,
            "min_driver_version": str(self.min_driver),
            "min_cuda_version": str(self.min_cuda),
        }


def parse_resource(resource: str) -> str | None:
    """'nvidia.com/gpu' -> None (whole GPUs); 'nvidia.com/mig-1g.10gb' -> '1g.10gb'.

    Raises ValueError for any other resource: the validator cannot check what it cannot name.
    """
    if resource == GPU_RESOURCE:
        return None
    profile = mig_profile(resource)
    if profile is not None:
        return profile
    raise ValueError(
        f"unsupported resource {resource!r}: expected {GPU_RESOURCE} or {MIG_PREFIX}<profile>, like {MIG_PREFIX}1g.10gb"
    )


@dataclass(frozen=True)
class Passed:
    detail: str


Outcome = Passed | Failure


# -- pure checks -------------------------------------------------------------------------------


def check_driver_version(reported: str, minimum: Version) -> Outcome:
    try:
        found = parse_version(reported)
    except VersionError:
        return Failure("driver", "nvml-error", f"NVML reported a driver version that is not a number: {reported!r}")
    if found < minimum:
        return Failure(
            "driver",
            "driver-too-old",
            f"NVIDIA driver {found} is older than the required minimum {minimum}",
            ("upgrade the node's driver, or schedule the task onto nodes with a newer one",),
        )
    return Passed(f"driver {found} >= {minimum}")


def check_cuda_version(reported: int, minimum: Version) -> Outcome:
    try:
        found = cuda_version_from_int(reported)
    except VersionError:
        return Failure("cuda-version", "nvml-error",
                       f"NVML reported a CUDA driver version that is not valid: {reported!r}")
    if found < minimum:
        return Failure(
            "cuda-version",
            "cuda-too-old",
            f"the driver supports CUDA {found} but the task needs CUDA {minimum} or later",
            (f"nvmlSystemGetCudaDriverVersion returned {reported}",),
        )
    return Passed(f"CUDA driver API {found} >= {minimum}")


@dataclass(frozen=True)
class Unit:
    """One allocatable unit the container got: a whole GPU, or a MIG device."""

    kind: str  # "gpu" | "mig"
    uuid: str | None
    name: str | None
    profile: str | None
    gpu_index: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "uuid": self.uuid, "name": self.name, "profile": self.profile,
                "gpu_index": self.gpu_index}

    def label(self) -> str:
        what = f"MIG {self.profile or '(unknown profile)'}" if self.kind == "mig" else f"whole GPU {self.name or '?'}"
        return f"{what} {self.uuid or '?'}"


def allocated_units(gpus: list[GpuFacts]) -> list[Unit]:
    """A GPU in MIG mode contributes its visible MIG devices, any other GPU itself.

    This is how the device plugin counts too: with the "single" MIG strategy a
    `nvidia.com/gpu` unit is a MIG device, with "mixed" it is `nvidia.com/mig-<profile>`.
    """
    units: list[Unit] = []
    for gpu in gpus:
        if gpu.mig_enabled:
            units.extend(Unit("mig", m.uuid, m.name, m.profile, gpu.index) for m in gpu.mig_devices)
        else:
            units.append(Unit("gpu", gpu.uuid, gpu.name, None, gpu.index))
    return units


def check_lost(gpus: list[GpuFacts]) -> Failure | None:
    for gpu in gpus:
        if gpu.lost_code:
            return Failure(
                "devices",
                gpu.lost_code,
                f"GPU {gpu.index} ({gpu.uuid or 'uuid unreadable'}): {gpu.lost_detail}",
                ("the node needs its GPU reset or the node drained; retrying on it will fail the same way",),
            )
    return None


def check_devices(gpus: list[GpuFacts], count: int, mig_profile: str | None) -> Outcome:
    """The container must see exactly `count` units of the requested kind, and nothing else.

    Fewer means the allocation failed; more, or other kinds, means device isolation is broken
    (NVIDIA_VISIBLE_DEVICES=all leaking in, a privileged container) and the task could use a
    GPU another pod was given.
    """
    lost = check_lost(gpus)
    if lost is not None:
        return lost
    units = allocated_units(gpus)
    seen = "; ".join(u.label() for u in units) or "none"
    if mig_profile is None:
        wanted, wrong, what = units, [], f"{count} x {GPU_RESOURCE}"
    else:
        target = normalise_profile(mig_profile)
        wanted = [u for u in units if u.profile is not None and normalise_profile(u.profile) == target]
        wrong = [u for u in units if u not in wanted]
        what = f"{count} x MIG {mig_profile}"
    if len(wanted) == count and not wrong:
        return Passed(f"{what}: {seen}")
    if wrong and len(wanted) < count:
        if all(u.kind == "gpu" for u in wrong) and not wanted:
            reason = f"requested {what} but the GPUs here are not in MIG mode: got {seen}"
        else:
            reason = f"requested {what} but got {seen}"
        return Failure("devices", "mig-profile-mismatch", reason)
    if len(wanted) < count:
        return Failure(
            "devices",
            "device-count-mismatch",
            f"requested {what} but only {len(wanted)} visible: {seen}",
            ("the device plugin allocated fewer devices than requested, or some are not exposed to the container",),
        )
    return Failure(
        "devices",
        "device-count-mismatch",
        f"requested {what} but {len(units)} device(s) visible, more than requested: {seen}",
        ("device isolation is broken: check NVIDIA_VISIBLE_DEVICES in the image and that the pod is not privileged",),
    )


def check_health(gpus: list[GpuFacts]) -> Outcome:
    """Memory health of every visible GPU (for MIG, of the parent GPU).

    Unsupported counters (ECC off, page retirement on Ampere+, row remapping before Ampere) are
    skipped, not failed: the node's hardware decides which ones exist.
    """
    notes = []
    for gpu in gpus:
        h = gpu.health
        who = f"GPU {gpu.index} ({gpu.uuid or '?'})"
        if h.ecc_enabled and h.volatile_uncorrected_ecc:
            return Failure(
                "health",
                "ecc-uncorrectable",
                f"{who} has {h.volatile_uncorrected_ecc} volatile uncorrectable ECC error(s) since the last driver "
                "reload",
                ("memory on this GPU returned corrupt data; drain the node and reset the GPU",),
            )
        if h.retired_pages_pending:
            return Failure(
                "health",
                "page-retirement-pending",
                f"{who} has memory pages pending retirement: the GPU needs a reset before it is safe to use",
            )
        if h.row_remap_failure:
            return Failure(
                "health",
                "row-remap-failure",
                f"{who} failed to remap a memory row with errors: the GPU needs service",
            )
        if h.row_remap_pending:
            return Failure(
                "health",
                "row-remap-pending",
                f"{who} has a memory row remap pending: the GPU needs a reset before it is safe to use",
            )
        ecc = "ECC n/a" if h.ecc_enabled is None else (
            "ECC off" if not h.ecc_enabled else f"ECC on, {h.volatile_uncorrected_ecc or 0} uncorrectable")
        remap = "row remap n/a" if h.row_remap_failure is None else "row remap ok"
        pages = "page retirement n/a" if h.retired_pages_pending is None else "no pages pending"
        notes.append(f"{who}: {ecc}, {remap}, {pages}")
    if not gpus:
        return Passed("no GPUs to check")
    return Passed("; ".join(notes))


def first_difference(sent: bytes, received: bytes) -> int | None:
    """Offset of the first byte that differs (or where one is shorter); None if equal."""
    if sent == received:
        return None
    for offset, (a, b) in enumerate(zip(sent, received, strict=False)):
        if a != b:
            return offset
    return min(len(sent), len(received))


def match_uuid(info: CudaDeviceInfo, gpus: list[GpuFacts]) -> str | None:
    """The NVML UUID ("GPU-..."/"MIG-...") of a CUDA device, matched on the hex body."""
    for gpu in gpus:
        for uuid in [gpu.uuid, *(m.uuid for m in gpu.mig_devices)]:
            if uuid and uuid.lower().endswith(info.uuid_hex.lower()):
                return uuid
    return None


def check_cuda_count(cuda_count: int, units: list[Unit]) -> Failure | None:
    if cuda_count == 0:
        return Failure("cuda-smoke", "cuda-device-count",
                       "cuInit succeeded but CUDA sees no device (is CUDA_VISIBLE_DEVICES set to an empty or wrong "
                       "value?)")
    whole = [u for u in units if u.kind == "gpu"]
    if whole and len(units) == len(whole) and cuda_count < len(whole):
        return Failure(
            "cuda-smoke",
            "cuda-device-count",
            f"NVML sees {len(whole)} GPU(s) but CUDA sees only {cuda_count} (is CUDA_VISIBLE_DEVICES set?)",
        )
    return None


# -- the run -----------------------------------------------------------------------------------


def _payload(size: int) -> bytes:
    """Deterministic, non-repeating bytes: a stuck bit, a short or shifted copy all show up."""
    return random.Random(0x6770752D).randbytes(size)


def validate(
    request: Request,
    nvml: NvmlLayer,
    cuda: CudaLayer,
    *,
    report: Report | None = None,
    clock: Callable[[], float] = time.monotonic,
    smoke_bytes: int = SMOKE_BYTES,
) -> Report:
    """Run the checks in order into `report` (made here if not given) and return it.

    The report is filled in place so that a caller enforcing a deadline can render what was
    reached if a driver call hangs.
    """
    if report is None:
        report = Report(request=request.as_dict())
    started = clock()
    state: dict[str, Any] = {}

    def step(name: str, body: Callable[[], Outcome]) -> bool:
        report.running = name
        t0 = clock()
        try:
            outcome = body()
        except LayerError as error:
            outcome = Failure(name, error.code, error.message)
        except Exception as error:  # noqa: BLE001 - an unexpected error is still a reported failure
            outcome = Failure(name, "internal-error", f"{type(error).__name__}: {error}")
        seconds = clock() - t0
        if isinstance(outcome, Failure):
            report.checks.append(CheckRecord(name, "fail", seconds, outcome.reason))
            report.failure = outcome
            return False
        report.checks.append(CheckRecord(name, "pass", seconds, outcome.detail))
        return True

    def nvml_step() -> Outcome:
        nvml.init()
        return Passed("NVML initialised")

    def driver_step() -> Outcome:
        report.driver_version = nvml.driver_version()
        return check_driver_version(report.driver_version, request.min_driver)

    def cuda_version_step() -> Outcome:
        raw = nvml.cuda_driver_version()
        try:
            report.cuda_driver_version = str(cuda_version_from_int(raw))
        except VersionError:
            report.cuda_driver_version = str(raw)
        return check_cuda_version(raw, request.min_cuda)

    def devices_step() -> Outcome:
        gpus = nvml.gpus()
        report.gpus = gpus
        state["units"] = allocated_units(gpus)
        report.units = [u.as_dict() for u in state["units"]]
        return check_devices(gpus, request.count, request.mig_profile)

    def health_step() -> Outcome:
        return check_health(report.gpus)

    def smoke_step() -> Outcome:
        cuda.init()
        count = cuda.device_count()
        failure = check_cuda_count(count, state["units"])
        if failure is not None:
            return failure
        payload = _payload(smoke_bytes)
        for ordinal in range(count):
            info = cuda.describe(ordinal)
            uuid = match_uuid(info, report.gpus)
            t0 = clock()
            received = cuda.roundtrip(ordinal, payload)
            seconds = clock() - t0
            report.cuda_devices.append(cuda_device_dict(info, uuid, len(payload), seconds))
            offset = first_difference(payload, received)
            if offset is not None:
                return Failure(
                    "cuda-smoke",
                    "cuda-copy-mismatch",
                    f"CUDA device {ordinal} ({uuid or info.name}) returned different data than was written:"
                    f" first difference at byte {offset} of {len(payload)}",
                    ("the GPU's memory or the PCIe/DMA path corrupts data; drain the node",),
                )
        return Passed(f"{count} device(s): context, {len(payload)} byte alloc, copy in and out, compare ok")

    try:
        steps = [
            ("nvml", nvml_step),
            ("driver", driver_step),
            ("cuda-version", cuda_version_step),
            ("devices", devices_step),
            ("health", health_step),
            ("cuda-smoke", smoke_step),
        ]
        for name, body in steps:
            if not step(name, body):
                break
        report.running = None
    finally:
        nvml.shutdown()
        report.total_seconds = clock() - started
    return report
