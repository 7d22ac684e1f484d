"""The container image, built and run here (docs/image.md).

`scripts/build-image.sh` builds it without Docker (a no-op when its inputs are unchanged); each
test runs it with buildah as its non-root user: `buildah from` + `buildah run --isolation chroot`
(podman run cannot set rlimits on this kind of machine). A process run that way shares the host's
network, so the host calls the served webhook on 127.0.0.1.

Needs root, buildah and debootstrap. Missing ones FAIL these tests with what to install.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from airflow_gpu_webhook import __version__

from conftest import POLICY_FILE, ROOT, admission_review, airflow_fixture
from serve import free_port

BUILD_SCRIPT = ROOT / "scripts" / "build-image.sh"
USER = "10001:10001"
#: A PEM private key block: the BEGIN line, optional headers, then base64 (not a mere constant
#: such as cryptography's b"-----BEGIN OPENSSH PRIVATE KEY-----").
PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\r?\n(?:[\w-]+:[^\n]*\n)*\s*[A-Za-z0-9+/=]{40,}")
MAX_MB_ABOVE_BASE = 200


def _buildah(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True, timeout=300, **kwargs)


def _inspect(image: str) -> dict[str, Any]:
    return json.loads(_buildah("inspect", "--type", "image", image).stdout)


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    """The image reference from scripts/build-image.sh (progress shown live; cached when unchanged)."""
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.fail("the image tests need root and buildah + debootstrap "
                    f"({'not root' if os.geteuid() else 'missing: ' + ' '.join(missing)}); "
                    "install: apt-get update && apt-get install -y buildah debootstrap", pytrace=False)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    log: list[str] = []
    started = time.monotonic()
    with subprocess.Popen([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            log.append(line.rstrip())
            with capman.global_and_fixture_disabled():
                print(line.rstrip(), flush=True)
        out = proc.stdout.read().split()
    if proc.returncode != 0 or not out:
        pytest.fail(f"scripts/build-image.sh failed ({proc.returncode}):\n" + "\n".join(log[-40:]), pytrace=False)
    print(f"image {out[-1]} ready in {time.monotonic() - started:.0f}s")
    return out[-1]


class Container:
    """A working container of the image; commands run in it as the image's non-root user."""

    def __init__(self, image: str) -> None:
        self.name = f"gpu-webhook-test-{uuid.uuid4().hex[:8]}"
        _buildah("from", "--pull=never", "--quiet", "--name", self.name, image)

    def command(self, *cmd: str, volumes: dict[Path, str] | None = None, user: str | None = USER) -> list[str]:
        args = ["buildah", "run", "--isolation", "chroot"]
        args += ["--user", user] if user else []
        for host, inside in (volumes or {}).items():
            args += ["--volume", f"{host}:{inside}"]
        return [*args, self.name, "--", *cmd]

    def run(self, *cmd: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*cmd, **kwargs), capture_output=True, text=True, timeout=120)


@contextmanager
def container(image: str) -> Iterator[Container]:
    c = Container(image)
    try:
        yield c
    finally:
        subprocess.run(["buildah", "rm", c.name], capture_output=True, timeout=60)


def _owned_dir(path: Path) -> Path:
    """A directory the image's user may write (files made there are readable by root on the host)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 10001, 10001)
    return path


# ---------------------------------------------------------------------------------------- config
def test_image_config_runs_gpu_webhook_as_a_numeric_non_root_user(image):
    config = _inspect(image)["OCIv1"]["config"]
    assert config["User"] == USER
    assert config["Entrypoint"] == ["gpu-webhook"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in config["Env"]
    assert "8443/tcp" in config["ExposedPorts"]


def test_version_as_the_images_own_user(image):
    with container(image) as c:
        version = c.run("gpu-webhook", "--version")
        ids = c.run("python3", "-c", "import os; print(os.getuid(), os.getgid())", user=None)  # image's USER
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"gpu-webhook {__version__}"
    assert ids.stdout.split() == ["10001", "10001"], ids.stderr


# ----------------------------------------------------------------------------------------- serve
def _review(case_id: str) -> bytes:
    case = airflow_fixture(case_id)
    return orjson.dumps(admission_review(case["pod"], case["namespace"]))


def test_serve_answers_over_verified_tls_with_certs_from_certs_generate(image, tmp_path):
    certs = _owned_dir(tmp_path / "certs")
    port = free_port()
    with container(image) as c:
        made = c.run("gpu-webhook", "certs", "generate", "--out", "/certs", "--service", "gpu-webhook",
                     "--namespace", "gpu-webhook", volumes={certs: "/certs"})
        assert made.returncode == 0, made.stderr
        log = (tmp_path / "serve.log").open("w+")
        server = subprocess.Popen(
            c.command("gpu-webhook", "serve", "--policy", "/policy/policy.yaml", "--tls-cert", "/certs/tls.crt",
                      "--tls-key", "/certs/tls.key", "--host", "127.0.0.1", "--port", str(port),
                      volumes={certs: "/certs:ro", POLICY_FILE.parent: "/policy:ro"}),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        tls = ssl.create_default_context(cafile=certs / "ca.crt")  # verifies chain and name (localhost)
        try:
            with httpx.Client(base_url=f"https://localhost:{port}", verify=tls, timeout=10) as client:
                deadline = time.monotonic() + 60
                while True:
                    assert server.poll() is None, f"serve exited {server.returncode}:\n{Path(log.name).read_text()}"
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, f"not ready in 60s:\n{Path(log.name).read_text()}"
                    time.sleep(0.2)
                headers = {"Content-Type": "application/json"}
                allowed = client.post("/mutate", content=_review("kpo_h100_count2"), headers=headers).json()["response"]
                denied = client.post("/mutate", content=_review("kpo_unknown_profile"), headers=headers).json()["response"]
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # buildah run and the server share its session
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(15)
            log.close()
    assert allowed["allowed"] is True and allowed["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(allowed["patch"]))
    assert {"op": "add", "path": "/metadata/labels/gpu.platform~1managed", "value": "true"} in patch
    assert denied["allowed"] is False and denied["status"]["code"] == 403
    assert "a100-40gb" in denied["status"]["message"]
    assert "event loop uvloop.Loop, HTTP protocol HttpToolsProtocol" in Path(log.name).read_text()   # the fast paths


# ------------------------------------------------------------------------------- validate-driver
def test_validate_driver_fails_clearly_without_a_gpu(image, tmp_path):
    # /dev is read-only under chroot isolation, so the termination log goes to a mounted dir.
    logs = _owned_dir(tmp_path / "log")
    with container(image) as c:
        result = c.run("gpu-webhook", "validate-driver", "--min-driver-version", "535.104.05",
                       "--min-cuda-version", "12.2", "--termination-log", "/log/termination-log",
                       volumes={logs: "/log"})
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == "gpu-webhook validate-driver: FAILED at check 'nvml' (nvml-missing, exit 3)"
    reason = (logs / "termination-log").read_text()
    assert len(reason.strip().splitlines()) == 1
    assert reason.startswith("GPU driver validation failed at check 'nvml' [nvml-missing, exit 3]: libnvidia-ml.so.1")


# ------------------------------------------------------------------------------------ contents
@pytest.fixture(scope="module")
def layers(image, tmp_path_factory) -> list[tuple[str, Path]]:
    """Every layer of the image, uncompressed: [(diff id, tar file)], base layers first."""
    layout = tmp_path_factory.mktemp("oci") / "layout"
    _buildah("push", "--quiet", "--disable-compression", image, f"oci:{layout}:image")
    index = json.loads((layout / "index.json").read_text())
    blob = lambda digest: layout / "blobs" / "sha256" / digest.split(":")[1]  # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_text())
    return [(layer["digest"], blob(layer["digest"])) for layer in manifest["layers"]]


def test_no_private_key_or_git_directory_in_any_layer(layers):
    found = []
    for digest, path in layers:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.name.endswith(".key") or ".git" in parts:
                    found.append(f"{digest[:19]} {member.name}")
                elif member.isfile():
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    # ELF files are skipped: libgnutls carries its FIPS self-test keys compiled in.
                    if not data.startswith(b"\x7fELF") and PEM_PRIVATE_KEY.search(data):
                        found.append(f"{digest[:19]} {member.name} (PEM private key)")
    assert found == []


def test_final_stage_has_no_compilers_pip_or_caches_and_stays_small(image, layers):
    base_layers = set(_inspect(_inspect(image)["OCIv1"]["config"]["Labels"]["io.gpu-webhook.base"])
                      ["OCIv1"]["rootfs"]["diff_ids"])
    added = [(digest, path) for digest, path in layers if digest not in base_layers]
    names = set()
    for _, path in added:
        with tarfile.open(path) as tar:
            names.update(m.name.lstrip("./") for m in tar)
    mb_above_base = sum(path.stat().st_size for _, path in added) / 1e6
    print(f"image: {len(added)} layer(s), {mb_above_base:.0f} MB above the base")
    assert mb_above_base < MAX_MB_ABOVE_BASE
    assert "opt/gpu-webhook/bin/gpu-webhook" in names
    assert not {"opt/gpu-webhook/bin/pip", "opt/gpu-webhook/bin/pip3"} & names
    assert not [n for n in names if n.startswith(("root/.cache", "wheels/", "tmp/")) or "/pip/" in n]
    with container(image) as c:
        tools = c.run("sh", "-c", "for t in gcc cc c++ make ld; do command -v $t; done; true")
        passwd = c.run("getent", "passwd", "10001")
    assert tools.stdout.split() == []
    assert passwd.stdout.startswith("gpu-webhook:x:10001:10001:")
