"""The CUDA layer: the CUDA driver API (`libcuda.so.1`) through ctypes, no framework.

The smoke test must prove what a task's framework will need first: that the driver library the
container runtime mounted loads, `cuInit` succeeds, and on every device a context can be made
and memory written and read back. Going through ctypes keeps the image free of PyTorch/CuPy and
of any CUDA toolkit; only the driver's own library is used, exactly as a framework would.

`CudaLayer` is the surface the checks use; `RealCuda` implements it. The library is loaded on
`init()`, never at import time.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Protocol

from .facts import CudaDeviceInfo, LayerError

LIBCUDA = "libcuda.so.1"


class CudaLayer(Protocol):
    """What the smoke test asks of CUDA. Every method may raise LayerError."""

    def init(self) -> None: ...

    def driver_version(self) -> int: ...

    def device_count(self) -> int: ...

    def describe(self, ordinal: int) -> CudaDeviceInfo: ...

    def roundtrip(self, ordinal: int, payload: bytes) -> bytes: ...


def format_uuid(raw: bytes) -> str:
    """16 UUID bytes -> 'xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx' (NVML's spelling, minus prefix)."""
    h = raw.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class _CUuuid(ctypes.Structure):
    # c_ubyte, not c_char: a c_char array reads back as a NUL-terminated string and would cut
    # a UUID at its first zero byte.
    _fields_ = [("bytes", ctypes.c_ubyte * 16)]


class RealCuda:
    """CudaLayer over libcuda.so.1 via ctypes.

    Each round trip retains the device's primary context (the one CUDA runtime and every
    framework use), allocates with cuMemAlloc, copies host->device->host and frees everything,
    releasing the context even when a step fails.
    """

    def __init__(self, library: str = LIBCUDA, loader: Callable[[str], Any] = ctypes.CDLL) -> None:
        self._library = library
        self._loader = loader
        self._lib: Any = None

    def _fn(self, name: str) -> Any:
        try:
            return getattr(self._lib, name)
        except AttributeError as error:
            raise LayerError("cuda-error", f"{self._library} has no symbol {name}: driver too old?") from error

    def _error_text(self, result: int) -> str:
        name = ctypes.c_char_p()
        text = ctypes.c_char_p()
        try:
            self._lib.cuGetErrorName(result, ctypes.byref(name))
            self._lib.cuGetErrorString(result, ctypes.byref(text))
        except Exception:  # noqa: BLE001 - describing an error must not raise another
            pass
        label = name.value.decode() if name.value else f"CUresult {result}"
        return f"{label}: {text.value.decode()}" if text.value else label

    def _check(self, what: str, result: int, code: str = "cuda-error") -> None:
        if result != 0:
            raise LayerError(code, f"{what} failed with {self._error_text(result)}")

    def init(self) -> None:
        try:
            self._lib = self._loader(self._library)
        except OSError as error:
            raise LayerError(
                "libcuda-missing",
                f"{self._library} could not be loaded ({error}): the NVIDIA driver's CUDA library is"
                " not mounted into this container (NVIDIA_DRIVER_CAPABILITIES must include compute)",
            ) from error
        self._check("cuInit", self._fn("cuInit")(0), code="cuda-init-failed")

    def driver_version(self) -> int:
        version = ctypes.c_int()
        self._check("cuDriverGetVersion", self._fn("cuDriverGetVersion")(ctypes.byref(version)))
        return version.value

    def device_count(self) -> int:
        count = ctypes.c_int()
        self._check("cuDeviceGetCount", self._fn("cuDeviceGetCount")(ctypes.byref(count)))
        return count.value

    def _device(self, ordinal: int) -> ctypes.c_int:
        device = ctypes.c_int()
        self._check(f"cuDeviceGet({ordinal})", self._fn("cuDeviceGet")(ctypes.byref(device), ordinal))
        return device

    def describe(self, ordinal: int) -> CudaDeviceInfo:
        device = self._device(ordinal)
        name = ctypes.create_string_buffer(256)
        self._check("cuDeviceGetName", self._fn("cuDeviceGetName")(name, 256, device))
        uuid = _CUuuid()
        get_uuid = getattr(self._lib, "cuDeviceGetUuid_v2", None) or self._fn("cuDeviceGetUuid")
        self._check("cuDeviceGetUuid", get_uuid(ctypes.byref(uuid), device))
        total = ctypes.c_size_t()
        self._check("cuDeviceTotalMem", self._fn("cuDeviceTotalMem_v2")(ctypes.byref(total), device))
        return CudaDeviceInfo(
            ordinal=ordinal,
            name=name.value.decode(errors="replace"),
            uuid_hex=format_uuid(bytes(uuid.bytes)),
            total_memory=total.value,
        )

    def roundtrip(self, ordinal: int, payload: bytes) -> bytes:
        size = len(payload)
        device = self._device(ordinal)
        context = ctypes.c_void_p()
        self._check("cuDevicePrimaryCtxRetain", self._fn("cuDevicePrimaryCtxRetain")(ctypes.byref(context), device))
        try:
            self._check("cuCtxPushCurrent", self._fn("cuCtxPushCurrent_v2")(context))
            try:
                pointer = ctypes.c_uint64()
                self._check(f"cuMemAlloc({size} bytes)",
                            self._fn("cuMemAlloc_v2")(ctypes.byref(pointer), ctypes.c_size_t(size)))
                try:
                    source = ctypes.create_string_buffer(payload, size)
                    self._check("cuMemcpyHtoD", self._fn("cuMemcpyHtoD_v2")(pointer, source, ctypes.c_size_t(size)))
                    target = ctypes.create_string_buffer(size)
                    self._check("cuMemcpyDtoH", self._fn("cuMemcpyDtoH_v2")(target, pointer, ctypes.c_size_t(size)))
                    self._check("cuCtxSynchronize", self._fn("cuCtxSynchronize")())
                    return target.raw
                finally:
                    self._lib.cuMemFree_v2(pointer)
            finally:
                self._lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        finally:
            self._lib.cuDevicePrimaryCtxRelease_v2(device)
