"""A real Kubernetes control plane for end-to-end tests, on loopback, with simulated GPU nodes.

Starts etcd, kube-apiserver, kube-controller-manager (its resourceclaim controller only),
kube-scheduler and kwok (built by ``testbed/build.sh`` from upstream Go modules) as child
processes, so the webhook is tested against the real admission chain, the real scheduler's
placement decisions (device plugin and DRA) and a pod lifecycle that Airflow's operators accept.

Usage from Python::

    cp = ControlPlane(build()).start()      # PKI, etcd, apiserver, controller-manager, scheduler, kwok
    cp.create_gpu_nodes()                    # testbed/nodes.yaml -> Ready fake nodes
    dra_cluster.install(cp)                  # testbed/dra-nodes.yaml, ResourceSlices, DeviceClasses
    cp.apply([webhook_configuration, pod])  # server-side apply of any dicts / YAML
    client = cp.api_client()                 # kubernetes.client.ApiClient (admin)
    cp.stop()                                # kills every process group, removes temp dirs

By hand: ``python -m tests.e2e.controlplane up`` (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import ctypes
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .ports import free_port

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO / "testbed"
NODES_FILE = TESTBED / "nodes.yaml"
#: Label that makes kwok finish a Running pod (value: Go duration, e.g. "2s"); see testbed/.
COMPLETE_AFTER_LABEL = "testbed.gpu.platform/complete-after"
#: Testbed label naming the simulated pool of a node (a key of `pools` in testbed/nodes.yaml).
POOL_LABEL = "testbed.gpu.platform/pool"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.96.0.0/16"
LOG_TAIL_LINES = 40


class ControlPlaneError(RuntimeError):
    """A component could not start; the message names it and carries its log tail."""

    def __init__(self, component: str, reason: str, log_tail: str = "") -> None:
        self.component = component
        msg = f"testbed component {component!r} {reason}"
        if log_tail:
            msg += f"\n--- last {LOG_TAIL_LINES} lines of the {component} log ---\n{log_tail}"
        super().__init__(msg)


# --------------------------------------------------------------------------------------- build
def build(*, echo: Callable[[str], None] | None = None) -> Path:
    """Run testbed/build.sh (a no-op when the cache is warm) and return the bin dir.

    ``TESTBED_BIN_DIR`` skips the build and uses that directory as is.
    """
    if pre := os.environ.get("TESTBED_BIN_DIR"):
        return Path(pre)
    proc = subprocess.Popen(
        [str(TESTBED / "build.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if echo and line.startswith("[testbed/build"):
            echo(line.rstrip("\n"))
    if proc.wait() != 0:
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        raise ControlPlaneError("build", f"failed: testbed/build.sh exited {proc.returncode}", tail)
    return Path(lines[-1])


# ----------------------------------------------------------------------------------------- PKI
def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class CertificateAuthority:
    """A throwaway CA (ECDSA P-256: fast to generate, accepted by every component)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, cn: str = "gpu-testbed-ca") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, cn: str, *, org: str | None = None, hosts: Iterable[str] = (), client: bool = False
    ) -> tuple[bytes, bytes]:
        """Return (cert PEM, key PEM): a serving cert for `hosts` (IPs or DNS names), or a client cert."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), _pem_key(key)


# ----------------------------------------------------------------------------------- processes
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Child pre-exec: SIGKILL this process if the test process dies (even by SIGKILL)."""
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Component:
    """One running binary: its own process group, its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError as e:
            return f"(no log: {e})"

    def kill(self, grace: float = 5.0) -> None:
        """SIGTERM the component's process group, SIGKILL after `grace` seconds.

        Signals go only while the leader is not yet reaped, so the group id is still ours.
        """
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:
                return
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def _probe(url: str, ctx: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
        return r.read().decode()


_DIR_PREFIX = "gpu-testbed-"
_SHM = Path("/dev/shm")


def _sweep_stale_dirs() -> None:
    """Remove temp dirs of testbeds whose owner died by SIGKILL (their children died with them,
    via PR_SET_PDEATHSIG, but nothing removed the dirs; the etcd one sits in RAM)."""
    for base in {Path(tempfile.gettempdir()), _SHM}:
        for d in base.glob(_DIR_PREFIX + "*"):
            try:
                pid = int((d / "owner.pid").read_text())
            except (OSError, ValueError):
                continue  # not ours to judge (pid file not written yet, other user)
            try:  # a zombie is dead too
                alive = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                alive = False
            if not alive:
                shutil.rmtree(d, ignore_errors=True)


# -------------------------------------------------------------------------------- control plane
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1 with
    TLS and RBAC.

    The admin identity (client cert, O=system:masters) is in ``kubeconfig``; every component uses
    it. Webhooks are registered by ``apply()``-ing their configurations (``url:`` to 127.0.0.1).
    """

    def __init__(self, bin_dir: Path, *, keep_dir: bool = False) -> None:
        self.bin_dir = Path(bin_dir)
        self.keep_dir = keep_dir or bool(os.environ.get("TESTBED_KEEP_DIR"))
        _sweep_stale_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        self.etcd_dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX + "etcd-", dir=_SHM if _SHM.is_dir() else None))
        for d in (self.dir, self.etcd_dir):
            (d / "owner.pid").write_text(str(os.getpid()))
        self.components: dict[str, Component] = {}
        self.ca = CertificateAuthority.create()
        self.ports = {k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler",
                                               "kwok")}
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"
        self.kubeconfig = self.dir / "admin.kubeconfig"
        #: The API server's webhook client pair and its CA (client-ca.crt, apiserver-client.crt/.key).
        self.webhook_client = self.dir / "webhook-client"
        self.admission_config = self.dir / "admission-config.yaml"
        self.startup_seconds: dict[str, float] = {}
        self._api_client: Any = None
        self._dynamic: Any = None
        atexit.register(self.stop)

    # ---- lifecycle
    def start(self, timeout: float = 120.0) -> Self:
        """Start every component in order, each waited for (bounded by `timeout` in total).

        On failure everything started so far is stopped and ControlPlaneError is raised.
        """
        deadline = time.monotonic() + timeout
        try:
            self._write_pki()
            t0 = time.monotonic()
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self._start_controller_manager()
            self._start_scheduler_and_kwok(deadline)
            self._wait_controller_manager(deadline)
            self.startup_seconds["total"] = round(time.monotonic() - t0, 1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every component (reverse start order) and remove the temp dirs. Idempotent."""
        for c in reversed(list(self.components.values())):
            c.kill()
        self.components.clear()
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        shutil.rmtree(self.etcd_dir, ignore_errors=True)
        if self.keep_dir:
            (self.dir / "owner.pid").unlink(missing_ok=True)  # kept dirs are not swept
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- components
    def _write_pki(self) -> None:
        pki = self.dir / "pki"
        pki.mkdir()
        (pki / "ca.crt").write_bytes(self.ca.pem)
        crt, key = self.ca.issue(
            "kube-apiserver",
            hosts=["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local", str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))],
        )
        (pki / "apiserver.crt").write_bytes(crt)
        (pki / "apiserver.key").write_bytes(key)
        crt, key = self.ca.issue("testbed-admin", org="system:masters", client=True)
        (pki / "admin.crt").write_bytes(crt)
        (pki / "admin.key").write_bytes(key)
        sa = ec.generate_private_key(ec.SECP256R1())
        (pki / "sa.key").write_bytes(_pem_key(sa))
        (pki / "sa.pub").write_bytes(
            sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "testbed",
            "clusters": [{"name": "testbed", "cluster": {
                "server": self.server, "certificate-authority-data": _b64(self.ca.pem)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": _b64((pki / "admin.crt").read_bytes()),
                "client-key-data": _b64((pki / "admin.key").read_bytes())}}],
            "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "admin"}}],
        }))
        self._admin_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._admin_ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        self._write_webhook_client()

    def _write_webhook_client(self) -> None:
        """The client certificate kube-apiserver presents to every admission webhook, as documented
        for authenticating API servers to webhooks: an AdmissionConfiguration whose two webhook
        plugins read a kubeconfig with one user, ``*`` (any webhook), holding the pair.

        The pair and its CA come from the webhook's own ``certs generate --client`` code; webhooks
        served here with ``--client-ca`` ``self.webhook_client / "client-ca.crt"`` accept only this
        API server."""
        from airflow_gpu_webhook.cli.certs import generate_client

        files = generate_client(self.webhook_client)
        kubeconfig = self.dir / "webhook-client.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "users": [{"name": "*", "user": {"client-certificate": str(files.cert), "client-key": str(files.key)}}],
        }))
        plugin = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "WebhookAdmissionConfiguration",
                  "kubeConfigFile": str(kubeconfig)}
        self.admission_config.write_text(yaml.safe_dump({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": [{"name": name, "configuration": plugin}
                        for name in ("ValidatingAdmissionWebhook", "MutatingAdmissionWebhook")],
        }))

    def _spawn(self, name: str, args: list[str]) -> Component:
        log = self.dir / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as f:
            try:
                popen = subprocess.Popen(
                    [str(self.bin_dir / name), *args], stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                    cwd=self.dir, start_new_session=True, preexec_fn=_die_with_parent,  # PR_SET_PDEATHSIG needs preexec_fn
                )
            except OSError as e:
                raise ControlPlaneError(name, f"could not be executed from {self.bin_dir}: {e}") from e
        c = self.components[name] = Component(name, popen, log)
        return c

    def _wait(self, c: Component, ready: Callable[[], bool], deadline: float) -> None:
        """Poll `ready` until true; fail fast if the process exits, or at the deadline."""
        t0, last = time.monotonic(), "no probe yet"
        while True:
            if (rc := c.popen.poll()) is not None:
                raise ControlPlaneError(c.name, f"exited with code {rc} during start-up", c.tail())
            try:
                if ready():
                    self.startup_seconds[c.name] = round(time.monotonic() - t0, 1)
                    return
                last = "probe returned not ready"
            except Exception as e:  # noqa: BLE001 (any probe error means "not yet")
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                reason = f"not ready before the start-up deadline (last probe: {last})"
                raise ControlPlaneError(c.name, reason, c.tail())
            time.sleep(0.25)

    def _start_etcd(self, deadline: float) -> None:
        client, peer = (f"http://127.0.0.1:{self.ports[k]}" for k in ("etcd", "etcd-peer"))
        c = self._spawn("etcd", [
            "--name=testbed", f"--data-dir={self.etcd_dir / 'data'}", "--unsafe-no-fsync",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=testbed={peer}", "--log-level=warn",
        ])
        self._wait(c, lambda: json.loads(_probe(f"{client}/health")).get("health") == "true", deadline)

    def _start_apiserver(self, deadline: float) -> None:
        pki = self.dir / "pki"
        c = self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['apiserver']}",
            "--advertise-address=127.0.0.1",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC", "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            # kube-controller-manager runs only the resourceclaim controller: nothing creates default
            # ServiceAccounts or lifts the not-ready taint, so these two plugins would block every
            # pod / every node.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
            "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            f"--admission-control-config-file={self.admission_config}",
        ])
        self._wait(c, lambda: _probe(f"{self.server}/readyz", self._admin_ctx) == "ok", deadline)

    def _start_controller_manager(self) -> None:
        """kube-controller-manager with one controller: ``resourceclaim-controller`` (the canonical
        name in k8s 1.36's cmd/kube-controller-manager/names; alias ``resource-claim-controller``).
        It creates a pod's ResourceClaims from its ResourceClaimTemplates (and writes
        ``status.resourceClaimStatuses``, which the scheduler waits for), drops done or deleted pods
        from ``status.reservedFor``, deallocates a claim nobody reserves any more, and deletes the
        generated claims of finished pods. Nothing else runs: no garbage collector, namespace,
        ServiceAccount, ResourceQuota or Job controller, so the tests that set ResourceQuota status
        or run Jobs by hand, and the never-deleted namespaces, behave as before. The generated claim
        of a *deleted* pod stays (the garbage collector would remove it), deallocated.

        Feature gates: none passed, on any component. What the testbed's DRA needs is on by default
        in 1.36 (pkg/features/kube_features.go): DynamicResourceAllocation (GA since 1.34, locked on
        since 1.35: resource.k8s.io/v1, claims from templates, CEL selectors, this controller) and
        DRAExtendedResource (KEP-5004, beta and on by default since 1.36: DeviceClass
        ``spec.extendedResourceName``, the scheduler's extended-resource claims, the pod's
        ``status.extendedResourceClaimStatus``; read by kube-apiserver and kube-scheduler, not by
        this controller). tests/e2e/test_dra_testbed.py proves both."""
        kc = str(self.kubeconfig)
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--controllers=resourceclaim-controller",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={self.ports['controller-manager']}",
            f"--cert-dir={self.dir / 'controller-manager-certs'}",
        ])

    def _wait_controller_manager(self, deadline: float) -> None:
        insecure = ssl._create_unverified_context()  # its self-signed serving cert
        self._wait(self.components["kube-controller-manager"], lambda: _probe(
            f"https://127.0.0.1:{self.ports['controller-manager']}/healthz", insecure) == "ok", deadline)

    def _start_scheduler_and_kwok(self, deadline: float) -> None:
        kc = str(self.kubeconfig)
        sched = self._spawn("kube-scheduler", [
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={self.ports['scheduler']}",
            f"--cert-dir={self.dir / 'scheduler-certs'}",
        ])
        stages = sorted((self.bin_dir / "kwok-stages").glob("*.yaml")) + [TESTBED / "kwok-pod-complete.yaml"]
        kwok = self._spawn("kwok", [
            f"--kubeconfig={kc}", *(f"--config={s}" for s in stages),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector={}={}".format(*KWOK_NODE_ANNOTATION),
            "--cidr=10.244.0.0/16", "--node-ip=127.0.0.1",
            # No --node-port: kwok could serve containerLogs, but a follow=true stream never ends
            # (v0.8.0 has no container status to stop on), so KubernetesPodOperator(get_logs=True)
            # would hang until its timeout. With no kubelet port, log requests fail at once.
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
        ])
        insecure = ssl._create_unverified_context()  # the scheduler's self-signed cert
        self._wait(sched, lambda: _probe(f"https://127.0.0.1:{self.ports['scheduler']}/readyz", insecure) == "ok",
                   deadline)
        self._wait(kwok, lambda: _probe(f"http://127.0.0.1:{self.ports['kwok']}/readyz") == "ok", deadline)

    # ---- clients and helpers
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, for subprocesses (kubectl, airflow)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient authenticated as the admin (shared, closed on stop)."""
        if self._api_client is None:
            from kubernetes import config

            self._api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api_client

    def apply(self, objs: Any, *, field_manager: str = "testbed") -> list[dict[str, Any]]:
        """Server-side apply (create or update) of objects, returning what the server stored.

        `objs`: a dict, a YAML string (multi-document), a Path to a YAML file, or a list of
        those; `kind: List` is expanded. Namespaced objects without a namespace go to "default".
        Admission webhooks run on these calls, exactly as for kubectl apply --server-side.
        """
        from kubernetes.dynamic import DynamicClient

        if self._dynamic is None:
            self._dynamic = DynamicClient(self.api_client())
        out = []
        for obj in _flatten(objs):
            res = self._dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            ns = obj["metadata"].get("namespace", "default") if res.namespaced else None
            r = self._dynamic.server_side_apply(
                res, body=obj, namespace=ns, field_manager=field_manager, force_conflicts=True
            )
            out.append(r.to_dict())
        return out

    def create_gpu_nodes(self, path: Path = NODES_FILE, timeout: float = 60.0) -> list[str]:
        """Create the simulated pools of `path` and wait until kwok reports every node Ready.

        Status (capacity/allocatable) is kept on Node create, as when a kubelet registers.
        """
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(self.api_client())
        names = []
        for node in node_objects(path):
            try:
                core.create_node(node)
            except ApiException as e:
                if e.status != 409:
                    raise
            names.append(node["metadata"]["name"])
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for n in sorted(pending):
                conds = core.read_node_status(n).status.conditions or []
                if any(c.type == "Ready" and c.status == "True" for c in conds):
                    pending.discard(n)
            if pending and time.monotonic() > deadline:
                c = self.components["kwok"]
                raise ControlPlaneError("kwok", f"did not make nodes Ready within {timeout}s: {sorted(pending)}",
                                        c.tail())
            time.sleep(0.25)
        return names

    def wait_for_pod(self, namespace: str, name: str, predicate: Callable[[Any], bool],
                     timeout: float = 30.0) -> Any:
        """Poll a pod (V1Pod) until `predicate(pod)` holds; TimeoutError shows its last status."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        deadline = time.monotonic() + timeout
        while True:
            pod = core.read_namespaced_pod(name, namespace)
            if predicate(pod):
                return pod
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {namespace}/{name} after {timeout}s: {pod.status.to_dict()}")
            time.sleep(0.2)


def _flatten(objs: Any) -> Iterable[dict[str, Any]]:
    if isinstance(objs, Path):
        objs = objs.read_text()
    if isinstance(objs, str):
        objs = [d for d in yaml.safe_load_all(objs) if d]
    if isinstance(objs, dict):
        objs = objs.get("items", []) if objs.get("kind", "").endswith("List") else [objs]
    for o in objs:
        yield from ([o] if isinstance(o, dict) and not o.get("kind", "").endswith("List") else _flatten(o))


def node_objects(path: Path = NODES_FILE) -> list[dict[str, Any]]:
    """Expand the pools of testbed/nodes.yaml into Node manifests (read it for the layout)."""
    spec = yaml.safe_load(path.read_text())
    d = spec["defaults"]
    nodes = []
    for pool, p in spec["pools"].items():
        for i in range(p["count"]):
            name = f"{pool}-{i}"
            cap = {**d["capacity"], **p.get("capacity", {})}
            nodes.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": dict([KWOK_NODE_ANNOTATION]),
                    "labels": {**d["labels"], **p.get("labels", {}), "kubernetes.io/hostname": name, POOL_LABEL: pool},
                },
                "spec": {"taints": p.get("taints", [])},
                "status": {"capacity": cap, "allocatable": cap},
            })
    return nodes


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    """`up`: build, start, create the node pools, print how to use it, run until Ctrl-C."""
    ap = argparse.ArgumentParser(prog="python -m tests.e2e.controlplane", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up"])
    ap.add_argument("--no-nodes", action="store_true", help="do not create the simulated node pools")
    args = ap.parse_args(argv)
    bin_dir = build(echo=lambda s: print(s, file=sys.stderr))
    cp = ControlPlane(bin_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        cp.start()
        if not args.no_nodes:
            from . import dra_cluster  # imports this module: not at the top

            cp.create_gpu_nodes()
            dra_cluster.install(cp)
        print(f"""
testbed up in {cp.startup_seconds['total']}s: {cp.server}  (components: {', '.join(cp.components)})
logs: {cp.dir / 'logs'}

  export KUBECONFIG={cp.kubeconfig}
  export PATH={bin_dir}:$PATH      # kubectl, kube-apiserver, etcd, kwok ...
  kubectl get nodes -L {POOL_LABEL},nvidia.com/gpu.product,nvidia.com/mig.strategy
  kubectl get deviceclasses,resourceslices     # the DRA pool (tests/e2e/dra_cluster.py)
  # a pod kwok will run, then finish after 5s:
  #   metadata.labels: {{{COMPLETE_AFTER_LABEL}: 5s}}

Airflow: KubernetesPodOperator(..., config_file="{cp.kubeconfig}", in_cluster=False,
         get_logs=False)  or  [kubernetes_executor] config_file = {cp.kubeconfig}

Ctrl-C stops everything.""", flush=True)
        while True:
            for c in cp.components.values():
                if (rc := c.popen.poll()) is not None:
                    raise ControlPlaneError(c.name, f"exited with code {rc}", c.tail())
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
