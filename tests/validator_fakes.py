"""Fake NVML and CUDA layers for the validator's tests: every hardware outcome, written down, with
no GPU, so `validate-driver` runs end to end on a machine without one. Nothing here imports
pynvml or loads libcuda.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from airflow_gpu_webhook.validator.facts import CudaDeviceInfo, GpuFacts, HealthFacts, LayerError, MigDeviceFacts

H100_NAME = "NVIDIA H100 80GB HBM3"
A100_NAME = "NVIDIA A100-SXM4-80GB"


def gpu_uuid(index: int) -> str:
    return f"GPU-00000000-0000-0000-0000-{index:012x}"


def mig_uuid(gpu: int, slot: int) -> str:
    return f"MIG-00000000-0000-0000-{gpu:04x}-{slot:012x}"


def healthy_gpu(index: int = 0, name: str = H100_NAME) -> GpuFacts:
    """A whole GPU with ECC on, no errors, row remapping clean (Ampere and later)."""
    return GpuFacts(
        index=index,
        uuid=gpu_uuid(index),
        name=name,
        health=HealthFacts(
            ecc_enabled=True,
            volatile_uncorrected_ecc=0,
            retired_pages_pending=None,
            row_remap_pending=False,
            row_remap_failure=False,
        ),
    )


def mig_gpu(index: int = 0, profiles: tuple[str, ...] = ("1g.10gb",), name: str = A100_NAME) -> GpuFacts:
    """A GPU in MIG mode exposing one MIG device per entry of `profiles`."""
    migs = tuple(
        MigDeviceFacts(
            uuid=mig_uuid(index, slot),
            name=f"{name} MIG {profile}",
            profile=profile,
            parent_index=index,
            mig_index=slot,
        )
        for slot, profile in enumerate(profiles)
    )
    return replace(healthy_gpu(index, name), mig_enabled=True, mig_devices=migs)


def cuda_info_for(uuid: str, ordinal: int, name: str = H100_NAME) -> CudaDeviceInfo:
    """The CUDA view of a device whose NVML UUID is `uuid`."""
    return CudaDeviceInfo(ordinal=ordinal, name=name, uuid_hex=uuid.split("-", 1)[1], total_memory=80 << 30)


@dataclass
class FakeNvml:
    """NvmlLayer returning what it is given; `*_error` fields make that call raise."""

    driver: str = "580.65.06"
    cuda: int = 13000
    devices: list[GpuFacts] = field(default_factory=lambda: [healthy_gpu(0)])
    init_error: LayerError | None = None
    driver_error: LayerError | None = None
    gpus_error: LayerError | None = None
    shut_down: bool = False

    def init(self) -> None:
        if self.init_error:
            raise self.init_error

    def driver_version(self) -> str:
        if self.driver_error:
            raise self.driver_error
        return self.driver

    def cuda_driver_version(self) -> int:
        return self.cuda

    def gpus(self) -> list[GpuFacts]:
        if self.gpus_error:
            raise self.gpus_error
        return list(self.devices)

    def shutdown(self) -> None:
        self.shut_down = True


@dataclass
class FakeCuda:
    """CudaLayer over in-memory 'devices'. `corrupt` ordinals flip a byte on the way back."""

    infos: list[CudaDeviceInfo] = field(default_factory=lambda: [cuda_info_for(gpu_uuid(0), 0)])
    init_error: LayerError | None = None
    roundtrip_error: LayerError | None = None
    corrupt: frozenset[int] = frozenset()
    hang: threading.Event | None = None  # roundtrip blocks until set: a wedged driver call
    calls: list[str] = field(default_factory=list)

    def init(self) -> None:
        self.calls.append("init")
        if self.init_error:
            raise self.init_error

    def driver_version(self) -> int:
        return 13000

    def device_count(self) -> int:
        self.calls.append("device_count")
        return len(self.infos)

    def describe(self, ordinal: int) -> CudaDeviceInfo:
        self.calls.append(f"describe:{ordinal}")
        return self.infos[ordinal]

    def roundtrip(self, ordinal: int, payload: bytes) -> bytes:
        self.calls.append(f"roundtrip:{ordinal}")
        if self.hang is not None:
            self.hang.wait()
        if self.roundtrip_error:
            raise self.roundtrip_error
        if ordinal in self.corrupt:
            data = bytearray(payload)
            data[len(data) // 2] ^= 0x01
            return bytes(data)
        return bytes(payload)
