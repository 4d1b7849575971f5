# Two commands matter: `make run` (set up, then serve the demo model) and
# `make test` (set up, then run every check CI runs).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
PROTOS := $(wildcard protos/serving/v1/*.proto protos/inference/*.proto)
# `make test` fails when coverage of server, client and wire in the pytest process (see
# [tool.coverage.run] in pyproject.toml) drops below this: the level measured when it was set, rounded down.
COV_FAIL_UNDER := 92

.PHONY: setup run test test-unit lint typecheck generate check-generated check-deploy docs check-docs model bench clean

setup: $(VENV)/.installed

$(VENV)/.deps: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps pyproject.toml
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(BUF):
	npm install --silent --no-save --no-package-lock --prefix .tools @bufbuild/buf@$(BUF_VERSION)

run: setup
	$(PY) -m server

generate: $(VENV)/.deps
	rm -rf generated && mkdir -p generated
	$(PY) -m grpc_tools.protoc -I protos -I third_party/googleapis \
		--python_out=generated --pyi_out=generated --grpc_python_out=generated $(PROTOS)
	touch generated/serving/__init__.py generated/serving/v1/__init__.py generated/inference/__init__.py

check-generated: generate
	@git status --porcelain -- generated | grep . && \
		{ echo "generated/ is stale: run 'make generate' and commit it"; exit 1; } || true

# Protos with buf; Python with ruff (generated/, third_party/ and build/ are excluded in pyproject.toml).
lint: $(BUF) setup
	$(BUF) lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy over server, client, wire (strict), tests, benchmarks and models/*.py (settings in pyproject.toml).
typecheck: setup
	$(VENV)/bin/mypy

# docs/configuration.md is rendered from server.config.Settings; check-docs fails when the committed copy differs.
docs: $(VENV)/.deps
	$(PY) -m server.config_reference --out docs/configuration.md

check-docs: docs
	@git status --porcelain -- docs/configuration.md | grep . && \
		{ echo "docs/configuration.md is stale: run 'make docs' and commit it"; exit 1; } || true

# Kubernetes manifests against the bundled schemas, and the Dockerfile lint; both offline.
check-deploy: setup
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/k8s/*.yaml
	$(VENV)/bin/hadolint Dockerfile

model: setup
	$(PY) models/train_digits.py --out models/digits/1
	$(PY) models/train_digits_decoder.py --out models/digits_decoder/1
	$(PY) models/export_digits_keras.py --saved-model models/digits/1 --out models/digits_keras/1

test: setup lint typecheck check-generated check-docs check-deploy
	$(PY) -m pytest -q --cov --cov-report=term:skip-covered --cov-fail-under=$(COV_FAIL_UNDER)

# The fast lane: tests that start no process, server or listening socket (about half a minute).
test-unit: setup
	$(PY) -m pytest -q -m "not integration and not slow"

# The serving benchmark (h2load from Debian's nghttp2-client drives the load): prints the table for
# docs/benchmarks.md and writes docs/bench-digits.png.
bench: setup
	$(PY) -m benchmarks.serving

clean:
	rm -rf $(VENV) .tools
