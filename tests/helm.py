"""helm for the chart's tests: built from its Go module (testbed/build-helm.sh, cached in
~/.cache/airflow-gpu-webhook/testbed), run with its own config and cache folders so a test never
reads or writes the user's Helm repositories or plugins."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from conftest import ROOT

CHART = ROOT / "charts" / "airflow-gpu-webhook"
BUILD = ROOT / "testbed" / "build-helm.sh"


def build_helm() -> Path:
    """testbed/build-helm.sh (a no-op when cached); ``HELM_BIN`` skips it."""
    if pre := os.environ.get("HELM_BIN"):
        return Path(pre)
    done = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"testbed/build-helm.sh exited {done.returncode}:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


class Helm:
    """One helm binary with private Helm folders under ``home``; ``kubeconfig`` for cluster commands."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_DATA_HOME": str(home / "data")}
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=timeout, env=self.env)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(self.binary), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=self.env)

    def template(self, *args: str, namespace: str = "gpu-webhook", release: str = "gpu-webhook") -> list[dict[str, Any]]:
        """``helm template`` of the chart; every object, parsed. Fails the test on an error."""
        done = self.run("template", release, str(CHART), "--namespace", namespace, *args)
        assert done.returncode == 0, f"helm template {' '.join(args)} failed:\n{done.stderr}"
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    def template_error(self, *args: str) -> str:
        """``helm template`` that must fail: its error output."""
        done = self.run("template", "gpu-webhook", str(CHART), "--namespace", "gpu-webhook", *args)
        assert done.returncode != 0, f"helm template {' '.join(args)} rendered:\n{done.stdout[:2000]}"
        return done.stderr


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the render"
    return found[0]
