"""Import and start-up costs, each in a fresh interpreter, against `python -c pass` in the same run.

What is measured is the wall time of a whole `python -c STATEMENT` (start-up included), many
times, the statements interleaved so that a busy moment of the machine falls on all of them
alike; the table gives the median and the minimum, the median's excess over the baseline (the
import's own cost) and the ratios to two baselines: `python -c pass` (the interpreter) and
`from pydantic import BaseModel` (the floor of any module that defines a pydantic model).

    python -m benchmarks.imports [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "airflow_gpu_webhook"
CORE_MODULES = sorted(p.stem for p in (ROOT / "webhook" / "core").glob("*.py") if p.stem != "__init__")
_FIRST_DECISION = f"""
import json
from {PKG}.core.mutate import decide_mutation
from {PKG}.core.policy import load_policy
from {PKG}.core.validate import decide_validation
policy = load_policy("manifests/policy.yaml")
case = json.load(open("tests/fixtures/airflow/kpo_mig_1g_xcom.json"))
decide_mutation(case["pod"], case["namespace"], policy)
decide_validation(case["pod"], case["namespace"], policy, {{}})
"""

BASELINE, PYDANTIC = "baseline: `python -c pass`", "baseline: `from pydantic import BaseModel`"
#: (row, statement) in the order of the table.
STATEMENTS = [
    (BASELINE, "pass"),
    (PYDANTIC, "from pydantic import BaseModel"),
    (f"the core: `import {PKG}.core.validate`", f"import {PKG}.core.validate"),
    ("every core module", "; ".join(f"import {PKG}.core.{m}" for m in CORE_MODULES)),
    ("the core + the first `load_policy` (YAML, validators built)",
     f"from {PKG}.core.policy import load_policy; load_policy('manifests/policy.yaml')"),
    ("the core + first load + first mutate and validate of a GPU pod", _FIRST_DECISION),
    (f"the server: `import {PKG}.server.app` (FastAPI, Prometheus)", f"import {PKG}.server.app"),
    ("`gpu-webhook --help`", f"import sys; sys.argv[1:] = ['--help']; from {PKG}.cli.main import main; main()"),
    ("Airflow's own `import airflow.policies` (where the cluster policy runs)", "import airflow.policies"),
    (f"the Airflow cluster policy: `import {PKG}.airflow.policy`", f"import {PKG}.airflow.policy"),
]


def wall_seconds(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run(repeat: int = 15) -> list[tuple[str, float, float]]:
    """(row, median s, min s) per statement; one warm-up round first (bytecode caches)."""
    for _, statement in STATEMENTS:
        wall_seconds(statement)
    times: dict[str, list[float]] = {row: [] for row, _ in STATEMENTS}
    for _ in range(repeat):
        for row, statement in STATEMENTS:
            times[row].append(wall_seconds(statement))
    return [(row, statistics.median(times[row]), min(times[row])) for row, _ in STATEMENTS]


def report(rows: list[tuple[str, float, float]]) -> str:
    medians = {row: median for row, median, _ in rows}
    base, floor = medians[BASELINE], medians[PYDANTIC]
    lines = ["| fresh interpreter, wall time | median ms | min ms | median - baseline ms | x `pass` | x pydantic |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row} | {median * 1e3:.0f} | {least * 1e3:.0f} | {(median - base) * 1e3:.0f} | "
              f"{median / base:.1f} | {median / floor:.2f} |" for row, median, least in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs of each statement (default 15)")
    print(report(run(parser.parse_args().repeat)))
