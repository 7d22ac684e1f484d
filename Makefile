# The two commands a person needs: `make run` (the service, locally, with dev certs and the
# reference policy) and `make test` (every test suite). Both build the virtual environment
# from nothing on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8443
CERTS  ?= dev-certs

.PHONY: venv run test bench fixtures clean

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

test: venv
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m benchmarks

fixtures:
	scripts/generate-fixtures.sh

clean:
	rm -rf $(VENV) $(CERTS) .pytest_cache .hypothesis
