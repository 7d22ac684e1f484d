"""The layout's boundaries, checked: imports point one way, and the core stays pure.

Allowed directions (docs/architecture.md): ``cli`` may import every part; ``server``, ``cluster``
and ``airflow`` import only ``core``; ``validator`` only ``core/names.py`` (stdlib only: the init
container loads no policy model); ``core`` imports nothing else of the package and none of the HTTP, TLS or cluster libraries. Checked twice: statically, on the
syntax tree of every module (every import statement, inside functions and ``TYPE_CHECKING``
blocks too, relative or absolute), and at runtime, in a fresh interpreter that imports every
core module, which also sees what the core's own dependencies import. Each checker is also fed
bad sources, to show that it can fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "webhook"
#: The import name (pyproject's package-dir maps it to the folder webhook/).
PACKAGE = "airflow_gpu_webhook"
#: The folder's own name: importing it as a package would load a second copy of every module.
FOLDER = SOURCE.name

#: part -> the parts it may import. The package root (its ``__init__``: the version) is open to all.
ALLOWED = {
    "core": set(),
    "server": {"core"},
    "cluster": {"core"},
    "airflow": {"core"},
    "validator": {"core"},  # only core/names.py: checked at runtime below
    "cli": {"core", "server", "cluster", "airflow", "validator"},
}
#: Top-level modules the pure core must never load: HTTP, TLS, the cluster client, metrics.
FORBIDDEN_IN_CORE = {"fastapi", "starlette", "uvicorn", "kubernetes", "urllib3", "ssl", "prometheus_client", "celpy"}


def module_name(path: Path) -> str:
    """``webhook/core/pod.py`` -> ``airflow_gpu_webhook.core.pod`` (a package: its ``__init__``)."""
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            # `from . import x` may name a module: count each name as one
            found += [(node.lineno, f"{stem}.{alias.name}") for alias in node.names] if not node.module \
                else [(node.lineno, stem)]
    return found


def part_of(name: str) -> str | None:
    """The part a name of this package belongs to ("" for the package root), None if outside."""
    pieces = name.split(".")
    if pieces[0] != PACKAGE:
        return None
    return pieces[1] if len(pieces) > 1 and pieces[1] in ALLOWED else ""


def boundary_violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (module ``module``) that crosses the layout's boundaries."""
    own = part_of(module)
    problems = []
    for line, name in imported_names(source, module, is_package):
        top = name.split(".")[0]
        if top == FOLDER:
            problems.append(f"{module}:{line} imports {name}: the folder's name; import {PACKAGE} or relatively")
        target = part_of(name)
        if own and target and target != own and target not in ALLOWED[own]:
            problems.append(f"{module}:{line} imports {name}: {own}/ may not import {target}/")
        if own == "core" and top in FORBIDDEN_IN_CORE:
            problems.append(f"{module}:{line} imports {name}: the core imports no {top}")
    return problems


def package_modules() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def repo_python_files() -> list[Path]:
    """Every Python file of the repository outside the virtual environment and hidden folders."""
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part.startswith(".") or part in {"build", "dist"} for part in p.relative_to(ROOT).parts))


# -- the checkers can fail ---------------------------------------------------------------------

BAD_AND_GOOD = [
    # (id, module, source, what the checker must say, or None when it must pass)
    ("a relative import of server/ from the core is refused",
     "airflow_gpu_webhook.core.plan", "from ..server.review import UserInfo\n", "core/ may not import server/"),
    ("an import of server/ hidden under TYPE_CHECKING in the core is refused",
     "airflow_gpu_webhook.core.plan", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from ..server import review\n", "core/ may not import server/"),
    ("an absolute import of cluster/ inside a core function is refused",
     "airflow_gpu_webhook.core.quota", "def f():\n    from airflow_gpu_webhook.cluster import tracker\n",
     "core/ may not import cluster/"),
    ("`from .. import cli` in the core is refused",
     "airflow_gpu_webhook.core.quota", "from .. import cli\n", "core/ may not import cli/"),
    ("fastapi in the core is refused", "airflow_gpu_webhook.core.rules", "import fastapi\n",
     "the core imports no fastapi"),
    ("a kubernetes submodule in the core is refused", "airflow_gpu_webhook.core.pod",
     "from kubernetes.utils.quantity import parse_quantity\n", "the core imports no kubernetes"),
    ("ssl imported lazily inside a core function is refused", "airflow_gpu_webhook.core.policy",
     "def load():\n    import ssl\n", "the core imports no ssl"),
    ("server/ importing cluster/ is refused", "airflow_gpu_webhook.server.app",
     "from ..cluster.ledger import Ledger\n", "server/ may not import cluster/"),
    ("cluster/ importing server/ is refused", "airflow_gpu_webhook.cluster.wiring",
     "from ..server import metrics\n", "cluster/ may not import server/"),
    ("airflow/ importing server/ is refused", "airflow_gpu_webhook.airflow.policy",
     "from airflow_gpu_webhook.server.admission import review_chain\n", "airflow/ may not import server/"),
    ("the validator importing the server is refused", "airflow_gpu_webhook.validator.cli",
     "from ..server.review import parse_review\n", "validator/ may not import server/"),
    ("the folder's name as a top-level package is refused, even in the right direction",
     "airflow_gpu_webhook.server.app", "from webhook.core.policy import Policy\n", "the folder's name"),
    ("`import webhook` is refused outside the package too", "tests.test_x", "import webhook.core.pod as pod\n",
     "the folder's name"),
    ("the core importing its own modules passes", "airflow_gpu_webhook.core.mutate",
     "from .pod import labels\nfrom . import patch\n", None),
    ("the core reading the package root (the version) passes", "airflow_gpu_webhook.core.mutate",
     "from .. import __version__\n", None),
    ("server/ importing the core passes", "airflow_gpu_webhook.server.admission",
     "from ..core.mutate import decide_mutation\nimport fastapi\n", None),
    ("cli/ importing every part passes", "airflow_gpu_webhook.cli.main",
     "from ..server import app\nfrom ..cluster import ledger\nfrom ..airflow import policy\nfrom ..validator import cli\n"
     "import kubernetes\n", None),
    ("a module merely named like the folder passes", "airflow_gpu_webhook.core.pod", "import webhooks\n", None),
    ("tests importing the package by its installed name pass", "tests.test_x",
     "from airflow_gpu_webhook.core.pod import labels\n", None),
]


@pytest.mark.parametrize(("module", "source", "expected"), [c[1:] for c in BAD_AND_GOOD],
                         ids=[c[0] for c in BAD_AND_GOOD])
def test_the_static_checker_flags_what_crosses_a_boundary(module, source, expected):
    problems = boundary_violations(module, source)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems


def test_relative_imports_resolve_from_a_package_init():
    assert imported_names("from .core import pod\nfrom . import cli\n", PACKAGE, is_package=True) == [
        (1, f"{PACKAGE}.core"), (2, f"{PACKAGE}.cli")]
    assert boundary_violations(f"{PACKAGE}.core", "from ..server import app\n", is_package=True) == [
        f"{PACKAGE}.core:1 imports {PACKAGE}.server: core/ may not import server/"]


# -- the package as it is ----------------------------------------------------------------------

@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_imports_only_in_the_allowed_direction(path):
    assert boundary_violations(module_name(path), path.read_text(encoding="utf-8"), path.name == "__init__.py") == []


def test_every_part_is_a_folder_of_the_package():
    folders = {p.name for p in SOURCE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED), "a new part needs its row in ALLOWED (and in docs/architecture.md)"


def test_no_python_file_of_the_repository_imports_the_folder_name():
    files = repo_python_files()
    assert any(p.parts[-2] == "tests" for p in files) and any(p.parts[-2] == "benchmarks" for p in files)
    problems = []
    for path in files:
        for line, name in imported_names(path.read_text(encoding="utf-8"), "repo.file"):
            if name.split(".")[0] == FOLDER:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert problems == []


# -- at runtime: what importing really loads ---------------------------------------------------

def loaded_after_running(code: str) -> set[str]:
    """Every module a fresh interpreter holds after running ``code`` (a SystemExit is fine)."""
    probe = f"import json, sys\ntry:\n    exec({code!r})\nexcept SystemExit:\n    pass\n" \
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(done.stderr.splitlines()[-1]))


def loaded_after_importing(modules: list[str]) -> set[str]:
    return loaded_after_running("\n".join(f"import {name}" for name in modules))


def forbidden_for_core(loaded: set[str]) -> list[str]:
    return sorted(n for n in loaded if n.split(".")[0] in FORBIDDEN_IN_CORE or part_of(n) not in (None, "", "core"))


def core_modules() -> list[str]:
    return [module_name(p) for p in sorted((SOURCE / "core").glob("*.py"))]


def test_importing_every_core_module_loads_no_forbidden_module():
    loaded = loaded_after_importing(core_modules())
    assert set(core_modules()) <= loaded
    assert forbidden_for_core(loaded) == []


def test_the_driver_validator_loads_only_the_names_of_the_core():
    validator = [module_name(p) for p in sorted((SOURCE / "validator").glob("*.py"))]
    loaded = loaded_after_importing(validator)
    assert set(validator) <= loaded
    heavy = FORBIDDEN_IN_CORE | {"pydantic", "yaml", "orjson", "jsonpatch", "cryptography"}
    assert sorted(n for n in loaded if n.split(".")[0] in heavy) == []
    assert sorted(n for n in loaded if part_of(n) == "core") == [f"{PACKAGE}.core", f"{PACKAGE}.core.names"]


def test_the_runtime_probe_sees_transitive_imports():
    # server/app.py imports fastapi, which imports starlette: neither is named by the probe
    flagged = forbidden_for_core(loaded_after_importing([f"{PACKAGE}.server.app"]))
    assert {"fastapi", "starlette", f"{PACKAGE}.server.app"} <= set(flagged)


# -- import time: what is deferred stays deferred (benchmarks/imports.py measures it) -----------

_BUILT_MODELS = f"""
from pydantic import BaseModel
from {PACKAGE}.core import policy
print(sorted(n for n, v in vars(policy).items()
             if isinstance(v, type) and issubclass(v, BaseModel) and v.__pydantic_complete__))
"""


@pytest.mark.parametrize(("first", "built", "yaml_loaded"), [
    ("", "[]", False),
    (f"from {PACKAGE}.core.policy import load_policy; load_policy('manifests/policy.yaml')", "Policy", True),
], ids=["importing the core builds no policy validator and reads no yaml",
        "the first policy load pays for both"])
def test_the_policy_models_are_built_on_first_load(first, built, yaml_loaded):
    code = f"import sys\nimport {PACKAGE}.core.validate\n{first}\n{_BUILT_MODELS}\nprint('yaml' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    models, has_yaml = done.stdout.splitlines()[-2:]
    assert built in models and has_yaml == str(yaml_loaded)


def test_gpu_webhook_help_loads_neither_the_core_nor_the_heavy_libraries():
    # the flags' defaults come from cluster/wiring.py and server/reload.py, which import the core lazily
    loaded = loaded_after_running(f"from {PACKAGE}.cli.main import main\nmain(['--help'])")
    assert f"{PACKAGE}.cli.main" in loaded
    heavy = {"pydantic", "yaml", "orjson", "kubernetes", "fastapi", "starlette", "uvicorn", "prometheus_client"}
    assert sorted(n for n in loaded if n.split(".")[0] in heavy or part_of(n) == "core") == []
