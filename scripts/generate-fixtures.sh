#!/usr/bin/env bash
# Regenerate tests/fixtures/airflow/*.json: test pods built by Airflow's own code.
#
# Airflow is heavy (~440 MB, ~150 packages) and must not enter the project's venv, so it
# lives in a pinned venv under the user cache, built on first use and reused after.
# Airflow runs with a throwaway AIRFLOW_HOME: no metadata DB, no cluster, no network is
# needed to build pod objects.
#
# Usage: scripts/generate-fixtures.sh [--out DIR]   (extra args go to generate_fixtures.py)
# Env:   PYTHON=python3.x to pick the interpreter the venv is built from.
set -euo pipefail

# The pins: change them here only (the venv path follows).
AIRFLOW_VERSION=3.3.2
PROVIDER_VERSION=10.25.0

PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/airflow-gpu-webhook/venvs/airflow-${AIRFLOW_VERSION}-${PROVIDER_VERSION}"
stamp="$venv/.installed"   # written last, so a half-built venv is never reused

if [[ -f "$stamp" ]]; then
  echo "==> reusing venv $venv"
else
  echo "==> building venv $venv (apache-airflow==$AIRFLOW_VERSION, cncf.kubernetes==$PROVIDER_VERSION)"
  start=$SECONDS
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet \
    "apache-airflow==$AIRFLOW_VERSION" \
    "apache-airflow-providers-cncf-kubernetes==$PROVIDER_VERSION"
  "$venv/bin/python" -m pip freeze > "$stamp"
  echo "==> venv ready in $((SECONDS - start))s"
fi

AIRFLOW_HOME=$(mktemp -d -t airflow-fixtures.XXXXXX)
trap 'rm -rf "$AIRFLOW_HOME"' EXIT
export AIRFLOW_HOME
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$AIRFLOW_HOME/dags"
export AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING
export TZ=UTC PYTHONDONTWRITEBYTECODE=1
# Nothing from the caller's environment may shape the pods: no local-settings module or
# pod_mutation_hook on the path, no kubeconfig or Airflow connection picked up.
unset PYTHONPATH KUBECONFIG
while IFS= read -r var; do unset "$var"; done < <(env | grep -oE '^AIRFLOW_(CONN|VAR)_[A-Za-z0-9_]*' || true)
mkdir -p "$AIRFLOW__CORE__DAGS_FOLDER"

echo "==> building pods with Airflow $AIRFLOW_VERSION / cncf.kubernetes $PROVIDER_VERSION"
"$venv/bin/python" "$here/generate_fixtures.py" "$@"
