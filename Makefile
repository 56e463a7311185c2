# Fapiao developer commands. One target per intent; every target installs what it needs.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
GEN := build/gen/python
KAFKA_LIBS := .cache/kafka/libs
BUF_VERSION := 1.75.0
BUF := .cache/buf/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto' | sort)
# What `buf breaking` compares protos/ with: the last release tag (v*) in HEAD's history, else main.
BUF_AGAINST ?= .git\#$(shell tag=$$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null || true); \
	if [ -n "$$tag" ]; then echo "tag=$$tag"; else echo branch=main; fi),subdir=protos
PYTEST_ARGS ?=

.PHONY: help setup protos kafka-jars buf browser prometheus up down status demo cluster-up cluster-down cluster-status test test-unit test-cluster test-prometheus lint fmt bench fuzz faults clean images deploy-test

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	printf '%s\n' "$(CURDIR)/services" "$(CURDIR)/deploy/local" "$(CURDIR)/$(GEN)" \
		> "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fapiao_paths.pth"
	touch $@

$(GEN)/.stamp: $(VENV)/.installed $(PROTOS)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc >/dev/null -I protos --python_out=$(GEN) --grpc_python_out=$(GEN) --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc $(PROTOS)
	touch $@

$(KAFKA_LIBS)/.stamp: deploy/local/kafka/pom.xml
	rm -rf $(KAFKA_LIBS)
	cd deploy/local/kafka && mvn --batch-mode --quiet package
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .cache/buf @bufbuild/buf@$(BUF_VERSION)

browser: ## Debian's Chromium for the browser tests, and a CJK font for PDFs and pages (apt-get; root when missing)
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "chromium is missing: run 'sudo apt-get install -y chromium'" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	fi
	@if [ ! -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "note: no CJK font; PDFs write Chinese as code points ('sudo apt-get install fonts-wqy-microhei')" >&2; \
		else DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-wqy-microhei >/dev/null \
			|| (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-wqy-microhei >/dev/null); fi; \
	fi

GRPCURL_VERSION := v1.9.4
GRPCURL := .cache/go/bin/grpcurl

prometheus: ## Debian's Prometheus and promtool, and grpcurl (go install); check deploy/prometheus with promtool
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
		if [ "$$(id -u)" != 0 ]; then echo "prometheus is missing: run 'sudo apt-get install -y prometheus'" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
			|| (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null); \
	fi
	@if [ ! -x $(GRPCURL) ]; then \
		if command -v go >/dev/null; then GOBIN=$(CURDIR)/.cache/go/bin go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION); \
		else echo "note: no Go toolchain; grpcurl not installed (tests/platform/test_refused_lock_details.py skips it)" >&2; fi; \
	fi
	cd deploy/prometheus && promtool check config prometheus.yml >/dev/null && promtool test rules rules/fapiao.rules.test.yml >/dev/null

setup: $(VENV)/.installed $(GEN)/.stamp $(KAFKA_LIBS)/.stamp ## install everything: virtualenv, packages, generated code, Kafka jars

protos: $(GEN)/.stamp ## generate Python code from protos/ into build/gen/python

kafka-jars: $(KAFKA_LIBS)/.stamp ## resolve the Apache Kafka broker from Maven Central into .cache/kafka

up: setup ## start Kafka, PostgreSQL and every service; wait for SERVING; keep running
	$(PY) -m fapiao_stack up

down: ## stop everything started by `make up`
	@if [ -x $(PY) ]; then $(PY) -m fapiao_stack down; fi

status: setup ## health of every process of the local stack
	$(PY) -m fapiao_stack status

demo: setup ## start the stack, walk the end-to-end story, stop the stack
	$(PY) -m fapiao_cli.demo

cluster-up: setup ## the multi-host cluster: every process on its own network namespace (root); wait for SERVING
	$(PY) -m fapiao_stack up --hosts

cluster-down: ## stop the multi-host cluster and delete its namespaces
	@if [ -x $(PY) ]; then $(PY) -m fapiao_stack down --hosts; fi

cluster-status: setup ## health of every host of the multi-host cluster, seen from its ops host
	$(PY) -m fapiao_stack status --hosts

test: setup $(BUF) browser prometheus ## run the whole test suite against a real Kafka and PostgreSQL (browser tests included)
	$(BUF) lint protos
	$(PY) -m pytest --basetemp=build/pytest --durations=25 $(PYTEST_ARGS)

test-unit: setup prometheus ## unit tests only (no broker, no database)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-cluster: setup ## the whole multi-host cluster up, one payment across its hosts, down (root; a few minutes)
	FAPIAO_TEST_CLUSTER=1 $(PY) -m pytest --basetemp=build/pytest-cluster tests/e2e/test_cluster_stack.py $(PYTEST_ARGS)

test-prometheus: setup prometheus ## Debian's Prometheus against a local stack: every target up, the rules load, a stopped validator alerts (a few minutes)
	FAPIAO_TEST_PROMETHEUS=1 $(PY) -m pytest --basetemp=build/pytest-prometheus tests/e2e/test_prometheus_stack.py $(PYTEST_ARGS)

lint: setup $(BUF) ## buf lint (comments required), buf breaking against the last release or main, ruff, mypy
	$(BUF) lint protos
	$(BUF) breaking protos --against '$(BUF_AGAINST)'
	$(PY) -m ruff check services deploy/local tests
	$(PY) -m ruff format --check services deploy/local tests
	$(PY) -m mypy services deploy/local
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/k8s/*.yaml

fmt: setup ## format the code
	$(PY) -m ruff format services deploy/local tests
	$(PY) -m ruff check --fix services deploy/local tests

bench: setup ## run the benchmarks; writes build/bench/results.json
	$(PY) -m fapiao_bench

FUZZ_ARGS ?=
fuzz: setup ## 100,000 mutated and random inputs against a private stack; writes build/fuzz/summary.json
	$(PY) -m tests.fuzz --inputs 100000 $(FUZZ_ARGS)

faults: setup ## fault suite: 10 min of workload under >= 20 seeded faults, then the checker (SEED=n reproduces a run)
	$(PY) -m fapiao_faults $(if $(SEED),--seed $(SEED)) $(FAULTS_ARGS)

images: setup ## the container images, built by podman from deploy/containers/Containerfile (root; base image from Debian's archive)
	bash deploy/containers/build-images.sh

deploy-test: images prometheus ## the demo story against the images: compose in podman (and Prometheus against it), then `podman kube play` (root; 1 min, 4½ from nothing)
	source deploy/containers/env.sh && $(PY) deploy/containers/deploy_test.py

clean: down ## remove generated code, caches and local state
	rm -rf build .run .cache/buf $(VENV)
