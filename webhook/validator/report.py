"""What the validator found, and the three ways it says so.

- `one_line`: the termination-log message. Kubernetes shows it in `kubectl describe pod` (and
  keeps at most 4096 bytes), and Airflow's KubernetesPodOperator copies it into the task log, so
  it must name the failing check and the fact that failed it in one line.
- `to_dict`: the JSON report (stdout on success; also on failure with `--json`).
- `human_text`: the full report on stderr: every check with its timing, and all facts gathered.

Exit codes are per failing check, so a DAG or an alert can tell "bad node" from "bad request".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .facts import CudaDeviceInfo, GpuFacts

#: The checks, in the order they run.
CHECKS = ("nvml", "driver", "cuda-version", "devices", "health", "cuda-smoke")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_TIMEOUT = 10

#: Failure code -> process exit code. One exit code per check; the code string says which way.
EXIT_CODES: dict[str, int] = {
    "internal-error": EXIT_INTERNAL,
    "nvml-missing": 3,
    "nvml-init-failed": 3,
    "nvml-error": 3,
    "driver-too-old": 4,
    "cuda-too-old": 5,
    "device-count-mismatch": 6,
    "mig-profile-mismatch": 6,
    "ecc-uncorrectable": 7,
    "page-retirement-pending": 7,
    "row-remap-failure": 7,
    "row-remap-pending": 7,
    "gpu-lost": 8,
    "gpu-reset-required": 8,
    "libcuda-missing": 9,
    "cuda-init-failed": 9,
    "cuda-error": 9,
    "cuda-device-count": 9,
    "cuda-copy-mismatch": 9,
    "timeout": EXIT_TIMEOUT,
}

TERMINATION_LOG_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


@dataclass(frozen=True)
class Failure:
    """Why validation stopped: the check, a stable code, and a one-line human reason."""

    check: str
    code: str
    reason: str
    details: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.code, EXIT_INTERNAL)


@dataclass
class CheckRecord:
    name: str
    status: str  # "pass" | "fail"
    seconds: float
    detail: str


@dataclass
class Report:
    """Filled in as the checks run; a timeout renders whatever was reached."""

    request: dict[str, Any]
    checks: list[CheckRecord] = field(default_factory=list)
    failure: Failure | None = None
    running: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: list[GpuFacts] = field(default_factory=list)
    units: list[dict[str, Any]] = field(default_factory=list)
    cuda_devices: list[dict[str, Any]] = field(default_factory=list)
    total_seconds: float = 0.0
    node: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and [c.name for c in self.checks] == list(CHECKS)

    @property
    def exit_code(self) -> int:
        if self.failure is not None:
            return self.failure.exit_code
        return EXIT_OK if self.ok else EXIT_INTERNAL


def _gpu_dict(gpu: GpuFacts) -> dict[str, Any]:
    out: dict[str, Any] = {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name, "mig_enabled": gpu.mig_enabled}
    if gpu.lost_code:
        out["lost"] = {"code": gpu.lost_code, "detail": gpu.lost_detail}
    if gpu.mig_enabled:
        out["mig_devices"] = [
            {"uuid": m.uuid, "name": m.name, "profile": m.profile, "mig_index": m.mig_index} for m in gpu.mig_devices
        ]
    h = gpu.health
    out["health"] = {
        "ecc_enabled": h.ecc_enabled,
        "volatile_uncorrected_ecc": h.volatile_uncorrected_ecc,
        "retired_pages_pending": h.retired_pages_pending,
        "row_remap_pending": h.row_remap_pending,
        "row_remap_failure": h.row_remap_failure,
    }
    return out


def cuda_device_dict(info: CudaDeviceInfo, uuid: str | None, copy_bytes: int, seconds: float) -> dict[str, Any]:
    return {
        "ordinal": info.ordinal,
        "name": info.name,
        "uuid": uuid,
        "total_memory_mib": info.total_memory // (1 << 20),
        "copy_bytes": copy_bytes,
        "roundtrip_seconds": round(seconds, 6),
    }


def to_dict(report: Report) -> dict[str, Any]:
    failure = report.failure
    return {
        "ok": report.ok,
        "exit_code": report.exit_code,
        "node": report.node,
        "request": report.request,
        "driver_version": report.driver_version,
        "cuda_driver_version": report.cuda_driver_version,
        "devices": report.units,
        "gpus": [_gpu_dict(g) for g in report.gpus],
        "cuda_devices": report.cuda_devices,
        "checks": [
            {"name": c.name, "status": c.status, "seconds": round(c.seconds, 6), "detail": c.detail}
            for c in report.checks
        ],
        "failure": None
        if failure is None
        else {
            "check": failure.check,
            "code": failure.code,
            "exit_code": failure.exit_code,
            "reason": failure.reason,
            "details": list(failure.details),
        },
        "total_seconds": round(report.total_seconds, 6),
    }


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, sort_keys=False)


def one_line(report: Report) -> str:
    """The termination message: one line, at most TERMINATION_LOG_LIMIT bytes."""
    where = f" on node {report.node}" if report.node else ""
    if report.failure is not None:
        f = report.failure
        text = f"GPU driver validation failed{where} at check '{f.check}' [{f.code}, exit {f.exit_code}]: {f.reason}"
    else:
        kinds = ", ".join(u.get("profile") or u.get("name") or "?" for u in report.units) or "no devices"
        text = (
            f"GPU driver validation passed{where}: driver {report.driver_version}, CUDA {report.cuda_driver_version},"
            f" {len(report.units)} device(s): {kinds}, in {report.total_seconds:.2f}s"
        )
    text = " ".join(text.split())  # one line, whatever a reason contained
    encoded = text.encode()
    if len(encoded) > TERMINATION_LOG_LIMIT:
        text = encoded[: TERMINATION_LOG_LIMIT - 3].decode(errors="ignore") + "..."
    return text


def human_text(report: Report) -> str:
    """The full report for stderr: outcome, request, each check with timing, then the facts."""
    lines = []
    if report.failure is not None:
        f = report.failure
        lines.append(f"gpu-webhook validate-driver: FAILED at check '{f.check}' ({f.code}, exit {f.exit_code})")
        lines.append(f"  reason: {f.reason}")
        lines.extend(f"  {d}" for d in f.details)
    else:
        lines.append("gpu-webhook validate-driver: passed")
    if report.node:
        lines.append(f"node: {report.node}")
    req = report.request
    lines.append(
        "request: resource={resource} count={count} min-driver={min_driver_version} "
        "min-cuda={min_cuda_version}".format(**req)
    )
    lines.append("checks:")
    done = {c.name: c for c in report.checks}
    for name in CHECKS:
        record = done.get(name)
        if record is None:
            timed_out = report.running == name and report.failure and report.failure.code == "timeout"
            state = "TIMEOUT" if timed_out else "not run"
            lines.append(f"  {name:<13} {state}")
        else:
            lines.append(f"  {name:<13} {record.status.upper():<5} {record.seconds * 1000:9.1f} ms  {record.detail}")
    lines.append(f"driver: {report.driver_version or '?'}   CUDA driver API: {report.cuda_driver_version or '?'}")
    for gpu in report.gpus:
        d = _gpu_dict(gpu)
        lines.append(f"gpu {gpu.index}: {gpu.name or '?'} {gpu.uuid or '?'} mig={'on' if gpu.mig_enabled else 'off'}")
        if gpu.lost_code:
            lines.append(f"  LOST: {gpu.lost_detail}")
        for m in gpu.mig_devices:
            lines.append(f"  mig {m.mig_index}: {m.profile or '?'} {m.uuid}")
        lines.append(f"  health: {json.dumps(d['health'])}")
    for dev in report.cuda_devices:
        lines.append(
            f"cuda {dev['ordinal']}: {dev['name']} {dev['uuid']} {dev['total_memory_mib']} MiB,"
            f" {dev['copy_bytes']} bytes round trip in {dev['roundtrip_seconds'] * 1000:.1f} ms"
        )
    lines.append(f"total: {report.total_seconds * 1000:.1f} ms")
    return "\n".join(lines)
