"""The NVML layer: the only place that calls nvidia-ml-py (`pynvml`).

`NvmlLayer` is the small surface the checks need; `RealNvml` implements it over pynvml and
translates NVML's answers into `facts` values, and its error codes into `LayerError` codes.
`pynvml` is imported when `init()` runs, not at import time, so the package imports where
there is no GPU. Tests pass a fake module to `RealNvml(module=...)` to exercise the
translation itself, or replace the whole layer with a fake `NvmlLayer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .facts import GpuFacts, HealthFacts, LayerError, MigDeviceFacts, mig_profile_from_name


class NvmlLayer(Protocol):
    """What the checks ask of NVML. Every method may raise LayerError."""

    def init(self) -> None: ...

    def driver_version(self) -> str: ...

    def cuda_driver_version(self) -> int: ...

    def gpus(self) -> list[GpuFacts]: ...

    def shutdown(self) -> None: ...


class _GpuLost(Exception):
    """Internal: a query on one GPU answered GPU_IS_LOST or RESET_REQUIRED."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _err_value(module: Any, name: str, default: int) -> int:
    return int(getattr(module, name, default))


class RealNvml:
    """NvmlLayer over pynvml. `module` is the pynvml module (a fake in tests)."""

    def __init__(self, module: Any | None = None) -> None:
        self._nvml: Any = module  # the pynvml module (untyped) or a fake; None until init()
        self._initialised = False

    # -- error translation -------------------------------------------------------------------

    def _code(self, error: BaseException) -> int | None:
        return getattr(error, "value", None)

    def _is(self, error: BaseException, *names: str) -> bool:
        defaults = {
            "NVML_ERROR_NOT_SUPPORTED": 3,
            "NVML_ERROR_NO_PERMISSION": 4,
            "NVML_ERROR_NOT_FOUND": 6,
            "NVML_ERROR_INVALID_ARGUMENT": 2,
            "NVML_ERROR_DRIVER_NOT_LOADED": 9,
            "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
            "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
            "NVML_ERROR_GPU_IS_LOST": 15,
            "NVML_ERROR_RESET_REQUIRED": 16,
        }
        code = self._code(error)
        return any(code == _err_value(self._nvml, name, defaults[name]) for name in names)

    def _lost(self, error: BaseException) -> _GpuLost | None:
        if self._is(error, "NVML_ERROR_GPU_IS_LOST"):
            return _GpuLost("gpu-lost", f"NVML reports the GPU is lost (fallen off the bus): {error}")
        if self._is(error, "NVML_ERROR_RESET_REQUIRED"):
            return _GpuLost("gpu-reset-required", f"NVML reports the GPU needs a reset: {error}")
        return None

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call NVML; a lost GPU becomes _GpuLost, any other NVML error a LayerError."""
        try:
            return fn(*args)
        except self._nvml.NVMLError as error:
            lost = self._lost(error)
            if lost is not None:
                raise lost from error
            raise LayerError("nvml-error", f"{what} failed: {error}") from error

    def _optional(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Like _call, but None where the query is not supported/permitted on this GPU/driver."""
        try:
            return self._call(what, fn, *args)
        except LayerError as error:
            cause = error.__cause__
            if cause is not None and self._is(
                cause, "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_FUNCTION_NOT_FOUND"
            ):
                return None
            raise

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    # -- NvmlLayer ---------------------------------------------------------------------------

    def init(self) -> None:
        if self._nvml is None:
            try:
                import pynvml  # lazy on purpose: no GPU libraries at import time
            except ImportError as error:
                raise LayerError(
                    "nvml-missing", f"the Python package nvidia-ml-py (pynvml) is not installed: {error}"
                ) from error
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as error:
            if self._is(error, "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_FUNCTION_NOT_FOUND"):
                raise LayerError(
                    "nvml-missing",
                    f"libnvidia-ml.so.1 could not be loaded ({error}): the NVIDIA driver is not"
                    " mounted into this container (is the nvidia container runtime in use?)",
                ) from error
            lost = self._lost(error)
            if lost is not None:
                raise LayerError(lost.code, f"NVML initialisation failed: {lost.detail}") from error
            not_loaded = self._is(error, "NVML_ERROR_DRIVER_NOT_LOADED")
            hint = " (the NVIDIA kernel driver is not loaded)" if not_loaded else ""
            raise LayerError("nvml-init-failed", f"NVML initialisation failed: {error}{hint}") from error
        except OSError as error:  # a broken libnvidia-ml surfaces as OSError from ctypes
            raise LayerError("nvml-missing", f"libnvidia-ml.so.1 could not be loaded: {error}") from error
        self._initialised = True

    def shutdown(self) -> None:
        if self._initialised:
            try:  # noqa: SIM105 - the except line says why it passes
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down must never change the outcome
                pass
            self._initialised = False

    def driver_version(self) -> str:
        try:
            return self._text(self._call("nvmlSystemGetDriverVersion", self._nvml.nvmlSystemGetDriverVersion))
        except _GpuLost as lost:
            raise LayerError(lost.code, lost.detail) from lost

    def cuda_driver_version(self) -> int:
        try:
            return int(self._call("nvmlSystemGetCudaDriverVersion", self._nvml.nvmlSystemGetCudaDriverVersion))
        except _GpuLost as lost:
            raise LayerError(lost.code, lost.detail) from lost

    def gpus(self) -> list[GpuFacts]:
        try:
            count = int(self._call("nvmlDeviceGetCount", self._nvml.nvmlDeviceGetCount))
        except _GpuLost as lost:
            raise LayerError(lost.code, lost.detail) from lost
        return [self._gpu(index) for index in range(count)]

    # -- per GPU -----------------------------------------------------------------------------

    def _gpu(self, index: int) -> GpuFacts:
        nvml = self._nvml
        uuid = name = None
        try:
            handle = self._call(f"nvmlDeviceGetHandleByIndex({index})", nvml.nvmlDeviceGetHandleByIndex, index)
            uuid = self._text(self._call("nvmlDeviceGetUUID", nvml.nvmlDeviceGetUUID, handle))
            name = self._text(self._call("nvmlDeviceGetName", nvml.nvmlDeviceGetName, handle))
            mode = self._optional("nvmlDeviceGetMigMode", nvml.nvmlDeviceGetMigMode, handle)
            mig_enabled = bool(mode) and int(mode[0]) == _err_value(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
            migs = self._mig_devices(index, handle) if mig_enabled else ()
            health = self._health(handle)
        except _GpuLost as lost:
            return GpuFacts(index=index, uuid=uuid, name=name, lost_code=lost.code, lost_detail=lost.detail)
        return GpuFacts(
            index=index, uuid=uuid, name=name, mig_enabled=mig_enabled, mig_devices=migs, health=health
        )

    def _mig_devices(self, index: int, handle: Any) -> tuple[MigDeviceFacts, ...]:
        """The MIG devices of one GPU this container may use.

        NVML lists every slot up to the maximum; an empty slot or one belonging to another
        container answers NOT_FOUND / NO_PERMISSION / INVALID_ARGUMENT and is skipped.
        """
        nvml = self._nvml
        found = []
        maximum = int(self._call("nvmlDeviceGetMaxMigDeviceCount", nvml.nvmlDeviceGetMaxMigDeviceCount, handle))
        for slot in range(maximum):
            try:
                mig = self._call("nvmlDeviceGetMigDeviceHandleByIndex", nvml.nvmlDeviceGetMigDeviceHandleByIndex,
                                 handle, slot)
            except LayerError as error:
                cause = error.__cause__
                if cause is not None and self._is(
                    cause, "NVML_ERROR_NOT_FOUND", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_INVALID_ARGUMENT"
                ):
                    continue
                raise
            mig_uuid = self._text(self._call("nvmlDeviceGetUUID", nvml.nvmlDeviceGetUUID, mig))
            mig_name = self._text(self._call("nvmlDeviceGetName", nvml.nvmlDeviceGetName, mig))
            found.append(
                MigDeviceFacts(
                    uuid=mig_uuid,
                    name=mig_name,
                    profile=mig_profile_from_name(mig_name),
                    parent_index=index,
                    mig_index=slot,
                )
            )
        return tuple(found)

    def _health(self, handle: Any) -> HealthFacts:
        nvml = self._nvml
        ecc_mode = self._optional("nvmlDeviceGetEccMode", nvml.nvmlDeviceGetEccMode, handle)
        ecc_enabled = None if ecc_mode is None else bool(int(ecc_mode[0]))
        uncorrected = None
        if ecc_enabled:
            uncorrected = self._optional(
                "nvmlDeviceGetTotalEccErrors",
                nvml.nvmlDeviceGetTotalEccErrors,
                handle,
                _err_value(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                _err_value(nvml, "NVML_VOLATILE_ECC", 0),
            )
        pending = self._optional(
            "nvmlDeviceGetRetiredPagesPendingStatus", nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle
        )
        remap = self._optional("nvmlDeviceGetRemappedRows", nvml.nvmlDeviceGetRemappedRows, handle)
        return HealthFacts(
            ecc_enabled=ecc_enabled,
            volatile_uncorrected_ecc=None if uncorrected is None else int(uncorrected),
            retired_pages_pending=None
            if pending is None
            else int(pending) == _err_value(nvml, "NVML_FEATURE_ENABLED", 1),
            row_remap_pending=None if remap is None else bool(remap[2]),
            row_remap_failure=None if remap is None else bool(remap[3]),
        )
