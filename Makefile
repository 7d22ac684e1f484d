# The two commands a person needs: `make run` (the service, locally, with dev certs and the
# reference policy) and `make test` (every test suite). Both build the virtual environment
# from nothing on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8443
CERTS  ?= dev-certs

.PHONY: venv run lint test bench fixtures image image-deps db-deps clean

$(BIN)/gpu-webhook: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,e2e]'
	@touch $@

venv: $(BIN)/gpu-webhook

$(CERTS)/tls.crt: | venv
	$(BIN)/gpu-webhook certs generate --out $(CERTS) --service gpu-webhook --namespace gpu-webhook

run: venv $(CERTS)/tls.crt
	$(BIN)/gpu-webhook serve --policy manifests/policy.yaml \
	  --tls-cert $(CERTS)/tls.crt --tls-key $(CERTS)/tls.key --port $(PORT)

# buildah and debootstrap, for `make image` and tests/test_image.py (Debian 12, as root).
image-deps:
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq buildah debootstrap; }

# PostgreSQL server binaries, for tests/e2e/test_airflow_pools.py: a real Airflow scheduler with the
# LocalExecutor needs a database other than SQLite; the test starts its own throw-away cluster.
db-deps:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq postgresql; }

image: venv image-deps
	scripts/build-image.sh

# The static layer, seconds: lint (ruff check; never ruff format) and types (mypy; settings in
# pyproject.toml: strict on webhook/core/ and webhook/validator/).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint image-deps db-deps
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m benchmarks

fixtures:
	scripts/generate-fixtures.sh

clean:
	rm -rf $(VENV) $(CERTS) dist .pytest_cache .hypothesis .mypy_cache .ruff_cache
