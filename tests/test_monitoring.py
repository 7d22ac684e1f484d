"""manifests/monitoring/ for real: promtool, built from its Go module (testbed/build-promtool.sh,
cached like the e2e testbed), checks the PrometheusRule and runs its unit tests on synthetic DCGM,
kube-state-metrics and webhook series. Every Grafana query must parse as PromQL and read only
series that the rules record or that the webhook and the exporters expose, so a renamed metric
breaks a test here rather than a panel in production.

No Prometheus or DCGM runs here: what the exporters emit is taken from their documentation and
source (see docs/observability.md); the webhook's own metric names come from its real exposition.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_gpu_webhook.core.decision import Decision
from airflow_gpu_webhook.core.policy import load_policy
from airflow_gpu_webhook.server.app import Runtime

from conftest import ROOT

MONITORING = ROOT / "manifests" / "monitoring"
BUILD_PROMTOOL = ROOT / "testbed" / "build-promtool.sh"
TEST_FILES = sorted(p.name for p in (MONITORING / "tests").glob("*.yaml"))

#: Series the rules and the dashboard may read from other exporters, and where they come from.
EXPORTED = {
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_DEV_FB_USED",   # NVIDIA DCGM exporter
    "kube_pod_labels", "kube_pod_container_resource_requests", "kube_pod_status_phase",  # kube-state-metrics
    "kube_pod_start_time",
    "up",                                                                                # Prometheus itself
    "airflow_pool_open_slots", "airflow_pool_running_slots", "airflow_pool_queued_slots",  # Airflow's scheduler
    "airflow_pool_scheduled_slots", "airflow_pool_deferred_slots",                       # (OpenTelemetry)
}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}
_GRAFANA_VARIABLES = re.compile(r"\$(\w+)|\$\{(\w+)[^}]*\}")


# --- helpers --------------------------------------------------------------------------------------

def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (a small lexer: enough for our own queries)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                 # strings
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)                # matchers, ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for _number, name, call in re.findall(r"(\d[\w.]*)|([A-Za-z_:][\w:]*)(\s*\()?", text):
        if name and not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def rule_spec() -> dict[str, Any]:
    return yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_spec()["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    return json.loads((MONITORING / "gpu-webhook-dashboard.json").read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable, Grafana variables filled in."""
    found = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            assert inner, f"variable {variable['name']}: only label_values(series, label) is supported here"
            found.append((f"variable ${variable['name']}", inner.group(1)))
    return [(where, _GRAFANA_VARIABLES.sub(".*", expr)) for where, expr in found]


def documented_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every ```promql block of docs/observability.md."""
    text = (ROOT / "docs" / "observability.md").read_text()
    return [(f"docs/observability.md block {i}", block)
            for i, block in enumerate(re.findall(r"```promql\n(.*?)```", text, re.S), 1)]


def webhook_series() -> set[str]:
    """Every sample name the webhook exposes, from a real exposition with the reference policy."""
    runtime = Runtime(policy=load_policy(ROOT / "manifests" / "policy.yaml"))
    runtime.metrics.observe("mutate", Decision.allow("unlabelled"), 0.001)
    runtime.metrics.bad_requests.labels("mutate", "400").inc()
    runtime.metrics.follow_tracking(lambda: {}, {"pods": lambda: True})   # as `serve --track-usage`
    text = runtime.metrics.exposition().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


# --- promtool ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def promtool(request: pytest.FixtureRequest) -> Path:
    """testbed/build-promtool.sh: a no-op when cached, minutes when cold (progress shown live)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    proc = subprocess.Popen([str(BUILD_PROMTOOL)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("[testbed/build-promtool"):
            with capman.global_and_fixture_disabled():
                print(line.rstrip("\n"), flush=True)
    if proc.wait() != 0:
        pytest.fail(f"testbed/build-promtool.sh exited {proc.returncode}:\n" + "\n".join(lines[-30:]))
    return Path(lines[-1])


class _BlockDumper(yaml.SafeDumper):
    """Multi-line expressions as ``|`` blocks, so a failing rule file reads like the source."""


_BlockDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


@pytest.fixture(scope="module")
def rule_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrometheusRule's spec as a plain rule file, beside the unit tests that load it."""
    folder = tmp_path_factory.mktemp("monitoring")
    (folder / "rules.yaml").write_text(yaml.dump(rule_spec(), Dumper=_BlockDumper, sort_keys=False))
    for name in TEST_FILES:
        shutil.copy(MONITORING / "tests" / name, folder / name)
    return folder


def run_promtool(promtool: Path, *args: str, cwd: Path) -> str:
    out = subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"promtool {' '.join(args)} exited {out.returncode}:\n{out.stdout}{out.stderr}"
    return out.stdout


def test_promtool_is_the_pinned_release(promtool):
    version = (ROOT / "testbed" / "versions.env").read_text().split("PROMETHEUS_VERSION=v")[1].split()[0]
    out = subprocess.run([str(promtool), "--version"], capture_output=True, text=True, check=True)
    assert f"version {version} " in out.stdout


def test_the_prometheus_rule_is_a_valid_rule_file(promtool, rule_dir):
    checked = run_promtool(promtool, "check", "rules", "rules.yaml", cwd=rule_dir)
    assert f"SUCCESS: {len(rules())} rules found" in checked


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[f"the rule unit tests in {n} pass" for n in TEST_FILES])
def test_rule_unit_tests_pass_on_synthetic_series(promtool, rule_dir, test_file):
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", test_file, cwd=rule_dir)


def test_every_dashboard_and_documented_query_parses_as_promql(promtool, tmp_path):
    queries = dashboard_queries() + documented_queries()
    assert len(documented_queries()) >= 3
    throwaway = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]}]}
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(throwaway))
    try:
        run_promtool(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)
    except AssertionError as err:
        index = "\n".join(f"dashboard:query_{i} = {where}" for i, (where, _) in enumerate(queries))
        raise AssertionError(f"{err}\n{index}") from None


# --- consistency, no promtool needed -------------------------------------------------------------

def test_the_dashboard_and_the_docs_read_only_recorded_webhook_or_exporter_series():
    known = recorded() | webhook_series() | EXPORTED
    unknown = {f"{where}: {name}" for where, expr in dashboard_queries() + documented_queries()
               for name in metric_names(expr) - known}
    assert not unknown, sorted(unknown)


def test_the_rules_read_only_recorded_webhook_or_exporter_series():
    known = recorded() | webhook_series() | EXPORTED
    unknown = {f"{rule.get('record') or rule['alert']}: {name}" for rule in rules()
               for name in metric_names(rule["expr"]) - known}
    assert not unknown, sorted(unknown)


def test_the_panel_queries_in_the_docs_are_the_dashboard_s_own():
    text = (ROOT / "docs" / "observability.md").read_text()
    section = text.split("## The dashboard's key panels")[1].split("\n## ")[0]
    rows = re.findall(r"^\| ([^|`]+?) \| (`.+`) \|$", section, re.M)
    panels = {p["title"]: {t["expr"] for t in p.get("targets", [])} for p in dashboard()["panels"]}
    assert len(rows) >= 8
    for title, cell in rows:
        for query in re.findall(r"`([^`]+)`", cell):
            assert query.replace("\\|", "|") in panels[title], f"{title}: {query}"


def test_every_recorded_series_is_read_by_a_rule_the_dashboard_or_a_unit_test():
    tests = [yaml.safe_load((MONITORING / "tests" / name).read_text()) for name in TEST_FILES]
    reads = set().union(*(metric_names(rule["expr"]) for rule in rules()),
                        *(metric_names(expr) for _, expr in dashboard_queries()),
                        *(metric_names(case["expr"]) for file in tests for group in file["tests"]
                          for case in group.get("promql_expr_test", [])))
    assert recorded() - reads == set()


def test_every_alert_has_a_unit_test_where_it_fires():
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    tests = [yaml.safe_load((MONITORING / "tests" / name).read_text()) for name in TEST_FILES]
    fired = {case["alertname"] for file in tests for group in file["tests"]
             for case in group.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts - fired == set()


LEXER = [
    ("a selector with matchers and a range", 'rate(gpu_webhook_admissions_total{outcome="denied"}[5m])',
     {"gpu_webhook_admissions_total"}),
    ("grouping clauses and label_replace strings are not series",
     'sum by (tenant) (a:b:c * on (pod) group_left (dag_id) label_replace(d, "x", "$1", "y", "(.*)"))', {"a:b:c", "d"}),
    ("numbers and keywords are not series", "round(x * 1e6) > 0.5 and y or vector(0)", {"x", "y"}),
]


@pytest.mark.parametrize("description, expr, names", LEXER, ids=[c[0] for c in LEXER])
def test_the_metric_name_lexer(description, expr, names):
    assert metric_names(expr) == names


def test_the_service_monitor_scrapes_the_webhook_service_over_verified_tls():
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    service = yaml.safe_load((ROOT / "manifests" / "base" / "service.yaml").read_text())
    endpoint, = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["scheme"] == "https" and endpoint["path"] == "/metrics"
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "gpu-webhook-tls", "key": "ca.crt"}}  # both overlays
    assert not endpoint["tlsConfig"].get("insecureSkipVerify")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert endpoint["tlsConfig"]["serverName"] == f"{name}.{namespace}.svc"
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": service["metadata"]["name"]}


def test_the_kustomization_ships_every_monitoring_file():
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    shipped = set(kustomization["resources"]) | {f for g in kustomization["configMapGenerator"] for f in g["files"]}
    on_disk = {p.name for p in MONITORING.iterdir() if p.is_file() and p.name != "kustomization.yaml"}
    assert shipped == on_disk
