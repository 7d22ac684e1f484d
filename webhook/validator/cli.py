"""`gpu-webhook validate-driver`: arguments, deadline, and where each report goes.

Outputs, by design:
- termination log (default /dev/termination-log): one line, pass or fail, so `kubectl describe
  pod` and Airflow's task log say what happened without anyone opening the init container's
  logs. A path that is missing or not writable is reported on stderr and otherwise ignored: the
  validator's verdict must not depend on it.
- stdout: the JSON report on success, and on failure too with `--json`.
- stderr: the full human report on failure (every check, timing and fact).
- exit code: 0, or the failing check's code (`report.EXIT_CODES`); 2 for bad arguments.

The checks run in a daemon thread and the main thread waits at most `--timeout` seconds: a
driver call stuck in the kernel cannot be interrupted from Python, but it can be abandoned, so
the init container still ends (exit 10) with a reason naming the check that hung.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from ..core.names import GPU_RESOURCE, MIG_PREFIX
from .checks import Request, parse_resource, validate
from .cuda import CudaLayer, RealCuda
from .nvml import NvmlLayer, RealNvml
from .report import EXIT_TIMEOUT, Failure, Report, human_text, one_line, to_json
from .versions import Version, VersionError, parse_version

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
DEFAULT_TIMEOUT = 60.0


def _version(text: str) -> Version:
    try:
        return parse_version(text)
    except VersionError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _resource(text: str) -> str:
    try:
        parse_resource(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-webhook validate-driver",
        description=(
            "Prove the GPUs given to this container work before an Airflow task starts: NVML, driver"
            " and CUDA versions, the devices against the request, memory health, and a CUDA"
            " context with a memory round trip on every device."
        ),
        epilog=(
            "exit codes: 0 ok, 2 bad arguments, 3 NVML missing/failed, 4 driver too old, 5 CUDA too old,"
            " 6 devices do not match the request, 7 memory health (ECC, page retirement, row remap),"
            " 8 GPU lost / needs reset, 9 CUDA smoke test (libcuda missing, cuInit, copy mismatch),"
            " 10 timeout, 1 internal error"
        ),
    )
    parser.add_argument("--min-driver-version", required=True, type=_version, metavar="V", help="e.g. 535.104.05")
    parser.add_argument("--min-cuda-version", required=True, type=_version, metavar="V", help="e.g. 12.2")
    parser.add_argument(
        "--resource",
        default=GPU_RESOURCE,
        type=_resource,
        metavar="NAME",
        help=f"{GPU_RESOURCE} or {MIG_PREFIX}<profile> (default: %(default)s)",
    )
    parser.add_argument("--count", default=1, type=_count, metavar="N", help="devices requested, >= 1 (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout on failure too")
    parser.add_argument(
        "--termination-log",
        default=DEFAULT_TERMINATION_LOG,
        metavar="PATH",
        help="where the one-line verdict goes (default: %(default)s); unwritable is not an error",
    )
    parser.add_argument(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        type=_timeout,
        metavar="SECONDS",
        help="give up and exit 10 after this long (default: %(default)s)",
    )
    return parser


def write_termination_log(path: str, line: str, stderr: TextIO) -> bool:
    """Write the one-line verdict; on any OSError say so on stderr and carry on."""
    if not path:
        return False
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError as error:
        print(f"gpu-webhook validate-driver: could not write termination log {path}: {error}", file=stderr)
        return False
    return True


def run_with_deadline(
    request: Request,
    nvml: NvmlLayer,
    cuda: CudaLayer,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Run `validate` in a daemon thread; past `timeout`, return a snapshot failed with 'timeout'."""
    report = Report(request=request.as_dict(), node=os.environ.get("NODE_NAME") or None)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            validate(request, nvml, cuda, report=report, clock=clock)
        except BaseException as error:  # noqa: BLE001 - surfaced below as an internal error
            errors.append(error)

    started = clock()
    worker = threading.Thread(target=target, name="gpu-validate", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        snapshot = copy.copy(report)
        snapshot.checks = list(report.checks)
        snapshot.cuda_devices = list(report.cuda_devices)
        running = report.running or "startup"
        snapshot.running = running
        snapshot.failure = Failure(
            running,
            "timeout",
            f"check '{running}' did not finish within {timeout:g}s: a driver call is hanging (GPU or driver wedged?)",
        )
        snapshot.total_seconds = clock() - started
        return snapshot
    if errors:
        report.failure = Failure(report.running or "startup", "internal-error",
                                 f"{type(errors[0]).__name__}: {errors[0]}")
    return report


def main(
    argv: Sequence[str] | None = None,
    *,
    nvml: NvmlLayer | None = None,
    cuda: CudaLayer | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Parse, validate, report; return the exit code. `nvml`/`cuda`/streams are for tests."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exit_:  # argparse already printed usage and the error to stderr
        return int(exit_.code or 0)
    request = Request(
        min_driver=args.min_driver_version,
        min_cuda=args.min_cuda_version,
        resource=args.resource,
        count=args.count,
    )
    report = run_with_deadline(request, nvml or RealNvml(), cuda or RealCuda(), args.timeout)
    write_termination_log(args.termination_log, one_line(report), stderr)
    if report.failure is None:
        print(to_json(report), file=stdout)
    else:
        if args.json:
            print(to_json(report), file=stdout)
        print(human_text(report), file=stderr)
    stdout.flush()
    stderr.flush()
    return report.exit_code


def run_as_program(argv: Sequence[str] | None = None) -> None:
    """Process entry: exit with main's code; after a timeout, exit hard (a thread may hang)."""
    code = main(argv)
    if code == EXIT_TIMEOUT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
