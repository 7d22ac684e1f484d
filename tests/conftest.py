"""Shared test helpers: the reference policy, Airflow-built pod fixtures, golden files.

Pod fixtures under tests/fixtures/airflow/ are built by Airflow's own code
(scripts/generate-fixtures.sh); golden files under tests/golden/ are rewritten with
``pytest --update-golden`` and reviewed in the diff like any other change.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_gpu_webhook.core.policy import Policy, load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "airflow"
GOLDEN = ROOT / "tests" / "golden"
POLICY_FILE = ROOT / "manifests" / "policy.yaml"
#: The reference policy plus DRA profiles (claim and extendedResource forms).
DRA_POLICY_FILE = ROOT / "docs" / "examples" / "policy-dra.yaml"


def airflow_env(tmp: Path, **settings: str) -> dict[str, str]:
    """The environment of an Airflow run in a test: this one without any AIRFLOW_* variable, a fresh
    AIRFLOW_HOME under ``tmp``, no example DAGs, and ``settings`` (AIRFLOW__SECTION__KEY=value)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp / "home"), AIRFLOW__CORE__LOAD_EXAMPLES="False", **settings)
    return env


def run_with_policy(script: str, tmp: Path) -> Any:
    """Run a Python script under Airflow with the reference policy as [gpu_webhook] policy_file, in a
    fresh process (Airflow's settings are read once); its last output line, as JSON."""
    env = airflow_env(tmp, AIRFLOW__GPU_WEBHOOK__POLICY_FILE=str(POLICY_FILE))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/ from the current code")


def airflow_fixture(case_id: str) -> dict[str, Any]:
    """One Airflow-built case: ``{"id", "description", "kind", "namespace", "pod"}`` (a fresh copy)."""
    return json.loads((FIXTURES / f"{case_id}.json").read_text())


def airflow_fixture_ids() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


def admission_review(pod: dict[str, Any], namespace: str, *, operation: str = "CREATE",
                     dry_run: bool = False, old: dict[str, Any] | None = None,
                     user: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AdmissionReview request as kube-apiserver sends it for a pod CREATE (an UPDATE with
    ``old``, the pod before the change); ``user`` replaces the requester's userInfo."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": (pod.get("metadata") or {}).get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": user or {"username": "system:serviceaccount:airflow:airflow-worker",
                                 "groups": ["system:serviceaccounts", "system:serviceaccounts:airflow",
                                            "system:authenticated"]},
            "object": copy.deepcopy(pod),
            "oldObject": copy.deepcopy(old),
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def claim_template_review(template: dict[str, Any] | None, namespace: str, *, operation: str = "CREATE",
                          old: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AdmissionReview request as kube-apiserver sends it for a write to a resource.k8s.io/v1
    ResourceClaimTemplate (an UPDATE with ``old``), made by a namespace user."""
    review = admission_review(template or {}, namespace, operation=operation, old=old,
                              user={"username": "system:serviceaccount:ml-jobs:tenant",
                                    "groups": ["system:serviceaccounts", "system:authenticated"]})
    review["request"]["object"] = copy.deepcopy(template)   # None on DELETE
    group_version = {"group": "resource.k8s.io", "version": "v1"}
    review["request"].update(kind={**group_version, "kind": "ResourceClaimTemplate"},
                             resource={**group_version, "resource": "resourceclaimtemplates"},
                             requestKind={**group_version, "kind": "ResourceClaimTemplate"},
                             requestResource={**group_version, "resource": "resourceclaimtemplates"})
    return review


def dra_template(profile: str, **exactly_changes: Any) -> dict[str, Any]:
    """The DRA example policy's ResourceClaimTemplate of ``profile`` in ml-jobs, as the API server
    stores it (its defaults explicit), with fields of the device request's ``exactly`` changed
    (None removes one)."""
    from airflow_gpu_webhook.core.dra import claim_template

    template = claim_template(profile, load_policy(DRA_POLICY_FILE).spec.profiles[profile], "ml-jobs")
    exactly = template["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    for key, value in exactly_changes.items():
        if value is None:
            exactly.pop(key, None)
        else:
            exactly[key] = value
    return template


def policy_with(**spec_changes: Any) -> Policy:
    """The reference policy with some spec fields replaced."""
    import yaml

    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"].update(spec_changes)
    return parse_policy(data, "test-policy")


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy(POLICY_FILE)


@pytest.fixture(scope="session")
def dra_policy() -> Policy:
    return load_policy(DRA_POLICY_FILE)


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """Compare a JSON-able value with tests/golden/<name>.json (or rewrite it with --update-golden)."""
    update = request.config.getoption("--update-golden")

    def check(name: str, value: Any) -> None:
        path = GOLDEN / f"{name}.json"
        text = json.dumps(value, indent=2, sort_keys=True) + "\n"
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"no golden file {path}; run pytest --update-golden and review the diff"
        assert json.loads(path.read_text()) == json.loads(text), f"{name} differs from {path}"

    return check
