"""RealCuda's ctypes sequence (airflow_gpu_webhook.validator.cuda), over a fake libcuda."""

from __future__ import annotations

import ctypes

import pytest

from airflow_gpu_webhook.validator.cuda import RealCuda, format_uuid
from airflow_gpu_webhook.validator.facts import LayerError

CUDA_SUCCESS, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_NO_DEVICE = 0, 2, 100
NAMES = {CUDA_ERROR_OUT_OF_MEMORY: b"CUDA_ERROR_OUT_OF_MEMORY", CUDA_ERROR_NO_DEVICE: b"CUDA_ERROR_NO_DEVICE"}


class FakeLibcuda:
    """libcuda's functions as Python callables; ctypes.byref(x)._obj is the x they fill in."""

    def __init__(self, devices=1, fail=None, corrupt=False, missing=()):
        self.devices = devices
        self.fail = fail or {}
        self.corrupt = corrupt
        self.memory = {}
        self.log = []
        self.retained = 0
        self.missing = set(missing)
        self._keep = []  # C strings handed out must outlive the call

    def __getattr__(self, name):
        if name.startswith("cu") and name not in self.missing and hasattr(type(self), "_" + name):
            method = getattr(self, "_" + name)

            def call(*args):
                self.log.append(name)
                if name in self.fail:
                    return self.fail[name]
                return method(*args)

            return call
        raise AttributeError(name)

    def _cuGetErrorName(self, result, out):
        text = ctypes.c_char_p(NAMES.get(result, b"CUDA_ERROR_UNKNOWN"))
        self._keep.append(text)
        out._obj.value = text.value
        return 0

    def _cuGetErrorString(self, result, out):
        out._obj.value = b"described"
        return 0

    def _cuInit(self, flags):
        return 0

    def _cuDriverGetVersion(self, out):
        out._obj.value = 13000
        return 0

    def _cuDeviceGetCount(self, out):
        out._obj.value = self.devices
        return 0

    def _cuDeviceGet(self, out, ordinal):
        out._obj.value = ordinal
        return 0

    def _cuDeviceGetName(self, buffer, size, device):
        ctypes.memmove(buffer, b"NVIDIA H100 80GB HBM3\0", 22)
        return 0

    def _cuDeviceGetUuid_v2(self, out, device):
        ctypes.memmove(ctypes.addressof(out._obj), bytes(range(16)), 16)  # starts with a zero byte
        return 0

    def _cuDeviceTotalMem_v2(self, out, device):
        out._obj.value = 80 << 30
        return 0

    def _cuDevicePrimaryCtxRetain(self, out, device):
        self.retained += 1
        out._obj.value = 0x1000
        return 0

    def _cuDevicePrimaryCtxRelease_v2(self, device):
        self.retained -= 1
        return 0

    def _cuCtxPushCurrent_v2(self, ctx):
        return 0

    def _cuCtxPopCurrent_v2(self, out):
        return 0

    def _cuCtxSynchronize(self):
        return 0

    def _cuMemAlloc_v2(self, out, size):
        out._obj.value = 0xD000 + len(self.memory)
        self.memory[out._obj.value] = b""
        return 0

    def _cuMemcpyHtoD_v2(self, pointer, source, size):
        self.memory[pointer.value] = ctypes.string_at(source, size.value)
        return 0

    def _cuMemcpyDtoH_v2(self, target, pointer, size):
        data = bytearray(self.memory[pointer.value])
        if self.corrupt:
            data[0] ^= 0xFF
        ctypes.memmove(target, bytes(data), size.value)
        return 0

    def _cuMemFree_v2(self, pointer):
        del self.memory[pointer.value]
        return 0


def layer(fake):
    cuda = RealCuda(loader=lambda name: fake)
    cuda.init()
    return cuda


def test_format_uuid_spells_uuids_like_nvml():
    assert format_uuid(bytes(range(16))) == "00010203-0405-0607-0809-0a0b0c0d0e0f"


def test_a_missing_libcuda_is_libcuda_missing():
    def loader(name):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    with pytest.raises(LayerError) as caught:
        RealCuda(loader=loader).init()
    assert caught.value.code == "libcuda-missing"
    assert "libcuda.so.1" in caught.value.message


def test_a_library_that_does_not_exist_really_fails_to_load():
    with pytest.raises(LayerError) as caught:
        RealCuda(library="libcuda-that-does-not-exist.so.1").init()
    assert caught.value.code == "libcuda-missing"


def test_cuinit_failing_is_cuda_init_failed_with_the_error_name():
    with pytest.raises(LayerError) as caught:
        RealCuda(loader=lambda name: FakeLibcuda(fail={"cuInit": CUDA_ERROR_NO_DEVICE})).init()
    assert caught.value.code == "cuda-init-failed"
    assert "CUDA_ERROR_NO_DEVICE" in caught.value.message


def test_a_missing_symbol_is_a_cuda_error():
    cuda = layer(FakeLibcuda(missing={"cuDeviceGetCount"}))
    with pytest.raises(LayerError) as caught:
        cuda.device_count()
    assert caught.value.code == "cuda-error" and "cuDeviceGetCount" in caught.value.message


def test_describe_reads_name_uuid_and_memory():
    info = layer(FakeLibcuda()).describe(0)
    assert (info.name, info.uuid_hex, info.total_memory) == (
        "NVIDIA H100 80GB HBM3",
        "00010203-0405-0607-0809-0a0b0c0d0e0f",
        80 << 30,
    )


def test_a_roundtrip_returns_what_was_written_and_frees_everything():
    fake = FakeLibcuda()
    payload = bytes(range(256)) * 64
    assert layer(fake).roundtrip(0, payload) == payload
    assert fake.memory == {} and fake.retained == 0
    order = [c for c in fake.log if c not in {"cuInit", "cuDeviceGet"}]
    assert order == [
        "cuDevicePrimaryCtxRetain",
        "cuCtxPushCurrent_v2",
        "cuMemAlloc_v2",
        "cuMemcpyHtoD_v2",
        "cuMemcpyDtoH_v2",
        "cuCtxSynchronize",
        "cuMemFree_v2",
        "cuCtxPopCurrent_v2",
        "cuDevicePrimaryCtxRelease_v2",
    ]


def test_a_corrupting_device_returns_different_bytes():
    payload = b"\x00" * 64
    assert layer(FakeLibcuda(corrupt=True)).roundtrip(0, payload) != payload


@pytest.mark.parametrize(
    "failing",
    ["cuMemAlloc_v2", "cuMemcpyHtoD_v2", "cuMemcpyDtoH_v2", "cuCtxPushCurrent_v2"],
    ids=lambda v: f"{v} failing still releases the context",
)
def test_a_failing_step_raises_and_still_releases(failing):
    fake = FakeLibcuda(fail={failing: CUDA_ERROR_OUT_OF_MEMORY})
    with pytest.raises(LayerError) as caught:
        layer(fake).roundtrip(0, b"x" * 128)
    assert caught.value.code == "cuda-error" and "CUDA_ERROR_OUT_OF_MEMORY" in caught.value.message
    assert fake.retained == 0
    assert fake.memory == {}
