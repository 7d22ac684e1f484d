"""What one new connection to the webhook costs: CPU per AdmissionReview of the API server's side
(a Go client set up as client-go's webhook transport: crypto/tls defaults, HTTP/1.1, no TLS
session cache) and of ``gpu-webhook serve``, with a fresh connection per review against
kept-alive connections, in one run; the difference is one TCP connect and one full TLS handshake
on each side. With ``--client-ca`` the API server also presents its client certificate.

benchmarks/admission.py counts the new connections per pod create; this prices them. Needs the
Go toolchain (the testbed's; the client uses only the standard library).

    python -m benchmarks.handshake [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.core import GPU_CASE, ROOT, case, review_bytes

sys.path[:0] = [str(ROOT / "tests")]

from serve import WebhookServer  # noqa: E402


def _client(tmp: Path) -> Path:
    binary = tmp / "handshake"
    subprocess.run(["go", "build", "-o", str(binary), str(ROOT / "benchmarks" / "handshake" / "main.go")],
                   check=True, env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}, cwd=tmp)
    return binary


def run(requests: int = 2000, rounds: int = 3, workers: int = 4) -> dict[tuple[str, bool], list[tuple[float, ...]]]:
    """(setting, fresh) -> per round (client ms CPU/review, server ms CPU/review, reviews/s)."""
    results: dict[tuple[str, bool], list[tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-handshake-") as name:
        tmp = Path(name)
        client = _client(tmp)
        body = tmp / "review.json"
        body.write_bytes(review_bytes(case(GPU_CASE)["pod"], case(GPU_CASE)["namespace"]))
        for setting, client_ca in (("no client certificate", False), ("--client-ca", True)):
            with WebhookServer(tmp / setting.strip("-"), client_ca=client_ca) as server:
                identity = ([] if server.client_certs is None else
                            ["-cert", str(server.client_certs / "apiserver-client.crt"),
                             "-key", str(server.client_certs / "apiserver-client.key")])
                for _ in range(rounds):
                    for fresh in (False, True):
                        out = subprocess.run(
                            [str(client), "-url", f"https://127.0.0.1:{server.port}/mutate",
                             "-ca", str(server.certs / "ca.crt"), *identity, "-body", str(body),
                             "-n", str(requests), "-c", str(workers), "-pid", str(server.process.pid),
                             f"-fresh={str(fresh).lower()}"], check=True, capture_output=True, text=True).stdout
                        results.setdefault((setting, fresh), []).append(tuple(float(x) for x in out.split()))
    return results


def report(results: dict[tuple[str, bool], list[tuple[float, ...]]]) -> str:
    lines = ["| ms CPU per review (median of rounds) | API server side (Go) | webhook (serve) | reviews/s |",
             "| --- | ---: | ---: | ---: |"]
    medians = {key: [statistics.median(r[i] for r in runs) for i in range(3)] for key, runs in results.items()}
    for (setting, fresh), (client, server, rate) in medians.items():
        lines.append(f"| {setting}, {'a new connection each' if fresh else 'kept-alive'} | {client:.3f} | "
                     f"{server:.3f} | {rate:.0f} |")
    for setting in dict.fromkeys(s for s, _ in medians):
        kept, fresh = medians[(setting, False)], medians[(setting, True)]
        lines.append(f"| {setting}: one new connection costs | {fresh[0] - kept[0]:.3f} | {fresh[1] - kept[1]:.3f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(report(run(args.requests, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
