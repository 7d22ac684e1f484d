"""A real Airflow 3 deployment for e2e tests: PostgreSQL, API server, scheduler (LocalExecutor), DAG processors.

`airflow dags test` runs tasks one by one in its own process and ignores pools, so the pool tests
need the real thing: the scheduler queues task instances by pool, the LocalExecutor runs them in
parallel, the DAG processor applies the cluster policy. LocalExecutor refuses SQLite (one writer),
so the metadata database is a throw-away PostgreSQL cluster from Debian's packages (`make
db-deps` installs them): `initdb` in a temp dir, started with `pg_ctl` as the unprivileged
`postgres` user when the tests run as root (PostgreSQL refuses root), fsync off.

Everything listens on 127.0.0.1 ports picked at start; every process is stopped at the end and
dies with the test process (PR_SET_PDEATHSIG). A process that does not come up fails the test with
its log tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve import free_port

AIRFLOW = [sys.executable, "-m", "airflow"]
PG_BIN = Path("/usr/lib/postgresql")
PG_USER = "postgres"
TAIL = 60


class StackError(RuntimeError):
    pass


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = TAIL) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pg_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin dir (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(PG_BIN.glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise StackError("PostgreSQL is not installed: run `make db-deps` (apt-get install postgresql)")
    return found[-1].parent


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust auth, superuser ``airflow``, fsync off)."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpu-e2e-pg-", dir="/dev/shm")))
    port: int = field(default_factory=free_port)

    def _run(self, *args: str, timeout: float = 60) -> None:
        as_user: Callable[[], None] | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the user Debian's package makes
            try:
                pw = pwd.getpwnam(PG_USER)
            except KeyError:
                raise StackError(f"no user {PG_USER!r} to run PostgreSQL as: run `make db-deps`") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

            def as_user() -> None:
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
        proc = subprocess.run([str(pg_bin_dir() / args[0]), *args[1:]], cwd=self.root, preexec_fn=as_user,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise StackError(f"{args[0]} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}\n"
                             f"{_tail(self.root / 'server.log')}")

    def start(self) -> str:
        """Create and start the cluster; the SQLAlchemy URL of its ``postgres`` database."""
        self._run("initdb", "-D", str(self.root / "data"), "-U", "airflow", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"), "-o", options,
                  "-w", "-t", "60", "start")
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(StackError, subprocess.TimeoutExpired):  # best effort: the dir goes anyway
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


class AirflowStack:
    """``airflow api-server``, ``scheduler`` and one ``dag-processor`` per DAG bundle, sharing one database.

    ``bundles``: bundle name -> (folder, extra environment of that bundle's DAG processor). One
    DAG processor per bundle lets two processors parse with different ``[gpu_webhook]`` settings.
    """

    def __init__(self, home: Path, db_url: str, env: dict[str, str],
                 bundles: dict[str, tuple[Path, dict[str, str]]]) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bundles = bundles
        self.processes: list[Process] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env = {**base, **env,
                    "AIRFLOW_HOME": str(home),
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
                    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                    "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "0",
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                    "AIRFLOW__API__BASE_URL": self.url,
                    "AIRFLOW__API_AUTH__JWT_SECRET": "gpu-webhook-e2e-only",
                    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([
                        {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                         "kwargs": {"path": str(folder), "refresh_interval": 2}}
                        for name, (folder, _) in bundles.items()]),
                    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                    "AIRFLOW__GPU_WEBHOOK__AIRFLOW_API_URL": self.url}

    # ---------------------------------------------------------------------------------- processes
    def airflow(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([*AIRFLOW, *args], env=self.env, cwd=self.home, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise StackError(f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                             f"{proc.stderr[-3000:]}")
        return proc.stdout

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Process:
        log = self.home / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen([*AIRFLOW, *args], env={**self.env, **(extra_env or {})}, cwd=self.home,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_api(self) -> None:
        """Migrate the database and start the API server; returns once it answers."""
        self.airflow("db", "migrate")
        self.spawn("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"])
        self.wait_for(lambda: self.get("/api/v2/version") is not None, 120, "the API server to answer")

    def start_scheduling(self) -> None:
        """Start one DAG processor per bundle, then the scheduler (after the pools exist, so parsing
        sees them). The processors start one after another: each writes every configured bundle into
        the database when it starts, and two doing it at once collide on the table's primary key
        (``dag_bundle_pkey``), which kills one of them; a processor has written them once it logs
        that it watches its own bundle."""
        for name, (_, extra) in self.bundles.items():
            process = self.spawn(f"dag-processor-{name}", ["dag-processor", "--bundle-name", name], extra)
            self.wait_for(lambda p=process, n=name: f"Checking for new files in bundle {n}" in _tail(p.log, 10**6),
                          120, f"the DAG processor of bundle {name} to write the bundles")
        self.spawn("scheduler", ["scheduler"])

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def tails(self) -> str:
        return "\n".join(f"--- {p.name} (exit {p.popen.poll()}) ---\n{_tail(p.log, 25)}" for p in self.processes)

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            dead = [p.name for p in self.processes if p.popen.poll() is not None]
            if dead:
                raise StackError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.tails()}")
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.tails()}")
            time.sleep(0.5)

    # --------------------------------------------------------------------------------- REST API
    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        """GET ``path``; None when it is not there (yet) or the server does not answer."""
        try:
            return self.call("GET", path)
        except (urllib.error.URLError, OSError):
            return None

    def trigger(self, dag_id: str) -> str:
        run = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})
        return str(run["dag_run_id"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        return self.wait_for(lambda: (r := self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))
                             and r["state"] in ("success", "failed") and r, timeout, f"DAG run {dag_id} {run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
                    ["task_instances"])
