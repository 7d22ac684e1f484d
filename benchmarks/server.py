"""The HTTPS server's reviews/s and p50/p99 latency, against a bare uvicorn endpoint (same TLS,
same uvicorn) measured in the same run, with wrk as the load generator (apt-get install wrk).

Targets: >= 70% of the bare endpoint's reviews/s, p99 within 2x of it. Saturated (wrk as fast
as it can), p99 is mostly queueing and mirrors the throughput ratio, so latency is also
measured paced (:data:`PACE_MS`): what a review takes at a steady rate both servers keep up
with. Each round measures the baseline and then every scenario, so the ratios compare
neighbours in time on a shared machine; a warm-up pass comes first (a cold server answers its
first seconds about a third slower). The last row is the ceiling (benchmarks/noop_app.py):
the webhook's own HTTP path with no decision.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jsonpatch

from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.core.policy import load_policy
from benchmarks.core import CPU_CASE, GPU_CASE, ROOT, case, review_bytes
from tests.e2e.ports import free_port

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "rb"); wrk.body = f:read("*a"); f:close()
"""
#: Paced: each connection waits this long before each request, so 8 connections offer at most
#: 2,000 reviews/s, below both servers' capacity: latency at a steady load, not in a queue.
PACE_MS = 4
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float


def _wait(port: int, ca: Path, process: subprocess.Popen, limit: float = 30) -> None:
    context = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost"):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} not up in {limit}s")


def _start(command: list[str], port: int, ca: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               cwd=ROOT)
    _wait(port, ca, process)
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def _wrk(url: str, body: Path, lua: Path, seconds: int, connections: int) -> Result:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, env={**os.environ, "BODY_FILE": str(body)}, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s))$", out, re.M))
    if "Non-2xx" in out or not latency:
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def ms(text: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(number) * _UNITS[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return Result(rps, ms(latency["50"]), ms(latency["99"]))


Results = dict[str, dict[str, list[tuple[Result, Result]]]]  # mode -> scenario -> (bare, ours) per round


def run(seconds: int = 8, rounds: int = 2, connections: int = 8, warm_up: int = 3) -> Results:
    if shutil.which("wrk") is None:
        sys.exit("benchmarks.server needs wrk: apt-get install wrk")
    policy = load_policy(ROOT / "manifests" / "policy.yaml")
    gpu, cpu = case(GPU_CASE), case(CPU_CASE)
    mutated = jsonpatch.apply_patch(gpu["pod"], list(decide_mutation(gpu["pod"], gpu["namespace"], policy).patch))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cli = [sys.executable, "-m", "airflow_gpu_webhook.cli.main"]
        subprocess.run([*cli, "certs", "generate", "--out", str(tmp), "--service", "b", "--namespace", "b"], check=True,
                       capture_output=True)
        tls = ["--ssl-certfile", str(tmp / "tls.crt"), "--ssl-keyfile", str(tmp / "tls.key")]
        lua, paced = tmp / "post.lua", tmp / "paced.lua"
        lua.write_text(LUA)
        paced.write_text(LUA + f"function delay() return {PACE_MS} end\n")
        bodies = {"mutate": (gpu["pod"], gpu["namespace"]), "validate": (mutated, gpu["namespace"]),
                  "passthrough": (cpu["pod"], cpu["namespace"])}
        for name, (pod, namespace) in bodies.items():
            (tmp / f"{name}.json").write_bytes(review_bytes(pod, namespace))
        base_port, hook_port, noop_port = free_port(), free_port(), free_port()
        # uvicorn's own defaults (loop and http "auto": uvloop and httptools), as `serve` uses them
        uvicorn = [sys.executable, "-m", "uvicorn", "--lifespan", "off", "--no-access-log", "--log-level", "warning",
                   *tls]
        baseline = _start([*uvicorn, "benchmarks.bare_app:app", "--port", str(base_port)], base_port, tmp / "ca.crt")
        ceiling = _start([*uvicorn, "benchmarks.noop_app:app", "--port", str(noop_port)], noop_port, tmp / "ca.crt")
        webhook = _start([*cli, "serve", "--policy", str(ROOT / "manifests" / "policy.yaml"), "--port", str(hook_port),
                          "--host", "127.0.0.1", "--tls-cert", str(tmp / "tls.crt"), "--tls-key", str(tmp / "tls.key")],
                         hook_port, tmp / "ca.crt")
        scenarios = {
            "Airflow GPU pod, /mutate": ("mutate", "/mutate"),
            "mutated GPU pod, /validate": ("validate", "/validate"),
            "pass-through CPU pod, /validate": ("passthrough", "/validate"),
            "ceiling: mutated GPU pod, HTTP path only": ("validate", "/validate"),
        }
        ports = {name: noop_port if name.startswith("ceiling") else hook_port for name in scenarios}
        modes = {"saturated": lua, "paced": paced}
        results: Results = {mode: {name: [] for name in scenarios} for mode in modes}
        try:
            for url in (f"https://127.0.0.1:{base_port}/", f"https://127.0.0.1:{hook_port}/validate",
                        f"https://127.0.0.1:{noop_port}/validate"):
                _wrk(url, tmp / "validate.json", lua, warm_up, connections)
            for _ in range(rounds):
                for (mode, script), (name, (body, path)) in itertools.product(modes.items(), scenarios.items()):
                    body_file = tmp / f"{body}.json"
                    base = _wrk(f"https://127.0.0.1:{base_port}/", body_file, script, seconds, connections)
                    ours = _wrk(f"https://127.0.0.1:{ports[name]}{path}", body_file, script, seconds, connections)
                    results[mode][name].append((base, ours))
        finally:
            for process in (baseline, ceiling, webhook):
                _stop(process)
    return results


def _medians(pairs: list[tuple[Result, Result]]) -> tuple[Result, Result, float, float]:
    """Median bare and ours figures, and the median per-round reviews/s and p99 ratios."""
    base = Result(*(statistics.median(getattr(b, f) for b, _ in pairs) for f in ("rps", "p50_ms", "p99_ms")))
    ours = Result(*(statistics.median(getattr(o, f) for _, o in pairs) for f in ("rps", "p50_ms", "p99_ms")))
    return (base, ours, statistics.median(o.rps / b.rps for b, o in pairs),
            statistics.median(o.p99_ms / b.p99_ms for b, o in pairs))


def report(results: Results) -> str:
    lines = ["| HTTPS server, saturated (wrk, 1 thread, 8 connections) | bare reviews/s | ours reviews/s | ratio | "
             "bare p50 / p99 ms | ours p50 / p99 ms | p99 ratio |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, pairs in results["saturated"].items():
        base, ours, rps_ratio, p99_ratio = _medians(pairs)
        lines.append(f"| {name} | {base.rps:,.0f} | {ours.rps:,.0f} | {rps_ratio:.0%} | {base.p50_ms:.2f} / "
                     f"{base.p99_ms:.2f} | {ours.p50_ms:.2f} / {ours.p99_ms:.2f} | {p99_ratio:.2f}x |")
    lines += ["", f"| HTTPS server, paced (8 connections, {PACE_MS} ms between requests) | bare reviews/s | "
                  "bare p50 / p99 ms | ours p50 / p99 ms | p99 ratio |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, pairs in results["paced"].items():
        base, ours, _, p99_ratio = _medians(pairs)
        lines.append(f"| {name} | {base.rps:,.0f} | {base.p50_ms:.2f} / {base.p99_ms:.2f} | "
                     f"{ours.p50_ms:.2f} / {ours.p99_ms:.2f} | {p99_ratio:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
