"""Plain facts the NVML and CUDA layers gather, and the error they raise when they cannot.

The checks (`checks.py`) are pure functions of these values, so every outcome — a lost GPU, a
pending row remap, the wrong MIG profile — can be produced in a unit test by writing the facts
down, with no GPU and no driver. Only `nvml.RealNvml` and `cuda.RealCuda` talk to hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class LayerError(Exception):
    """An NVML or CUDA call failed in a way that decides the outcome.

    `code` is one of the failure codes in `report.EXIT_CODES` ("nvml-missing", "gpu-lost",
    "libcuda-missing", "cuda-error", ...); the check that was running turns it into a Failure.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class HealthFacts:
    """What NVML says about a GPU's memory health. None means not supported or not readable.

    ECC counters exist only where ECC is on; page retirement is the pre-Ampere mechanism and
    row remapping the Ampere-and-later one, so on any one GPU some of these are always None.
    """

    ecc_enabled: bool | None = None
    volatile_uncorrected_ecc: int | None = None
    retired_pages_pending: bool | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None


@dataclass(frozen=True)
class MigDeviceFacts:
    """One MIG device visible to this container: what a `nvidia.com/mig-<profile>` unit is."""

    uuid: str
    name: str
    profile: str | None
    parent_index: int
    mig_index: int


@dataclass(frozen=True)
class GpuFacts:
    """One physical GPU NVML enumerates in this container.

    `lost_code` is set ("gpu-lost", "gpu-reset-required") when NVML answered a query on this
    GPU with NVML_ERROR_GPU_IS_LOST / RESET_REQUIRED: it fell off the bus or needs a reset, and
    nothing else about it can be trusted.
    """

    index: int
    uuid: str | None = None
    name: str | None = None
    mig_enabled: bool = False
    mig_devices: tuple[MigDeviceFacts, ...] = ()
    health: HealthFacts = field(default_factory=HealthFacts)
    lost_code: str | None = None
    lost_detail: str = ""


@dataclass(frozen=True)
class CudaDeviceInfo:
    """One device as the CUDA driver API numbers it (ordinal), with its UUID for matching."""

    ordinal: int
    name: str
    uuid_hex: str  # 8-4-4-4-12 hex, no "GPU-"/"MIG-" prefix: CUDA does not say which
    total_memory: int


def mig_profile_from_name(name: str) -> str | None:
    """'NVIDIA A100-SXM4-80GB MIG 1g.10gb' -> '1g.10gb'; None when the name carries no profile."""
    marker = " MIG "
    if marker not in name:
        return None
    profile = name.rsplit(marker, 1)[1].strip()
    return profile or None


def normalise_profile(profile: str) -> str:
    """Compare MIG profiles as Kubernetes spells them: lower case, '+me' written '.me'."""
    return profile.strip().lower().replace("+", ".")
