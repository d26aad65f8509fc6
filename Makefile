# Content Studio: `make run` serves the app on the local CPU profile, `make test` runs the test suite.
# Both do all set-up first: a .venv, the pinned dependencies, and the tiny offline models.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
MODELS := .cache/models/tiny/BUILD_STAMP
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup models browser h2load redis broker run test bench-smoke test-unit test-integration lint format manifests gpu-check eval-recs bench bench-quick bench-soak bench-streaming bench-jobs bench-recs stop-broker clean

setup: $(INSTALLED) models browser h2load redis

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever the dependency list changes.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Debian's Chromium for the web studio's browser test; installed when missing and we may (root, apt). axe-core
# (accessibility checks in that test) from the npm registry, pinned, into .cache/npm.
AXE := .cache/npm/node_modules/axe-core/axe.min.js
browser: $(AXE)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: no chromium and no root to install it: the browser test will be skipped"; fi; }

$(AXE):
	@if command -v npm >/dev/null 2>&1; then \
	  mkdir -p .cache/npm && npm install --silent --no-audit --no-fund --prefix .cache/npm axe-core@4.14.1; \
	else echo "note: no npm: the accessibility checks will be skipped"; fi

# h2load (Debian's nghttp2-client), the C load generator that sends and times the benchmarks' bursts
# (bench/burst.py); installed when missing and we may (root, apt), as Chromium is.
h2load:
	@command -v h2load >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; \
	  else echo "note: no h2load and no root to install it: the benchmarks' bursts cannot run"; fi; }

# redis-server, the content jobs' broker in the local profile; installed when missing and we may (root, apt).
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "note: no redis-server and no root to install it: content jobs need a broker (docs/jobs.md)"; fi; }

# The local profile's private broker: Redis on 127.0.0.1:6390, append-only under data/redis (a job queued
# before a stop is still queued after it); started when it is not running. `make stop-broker` stops it.
BROKER_DIR := $(CURDIR)/data/redis
broker: redis
	@mkdir -p $(BROKER_DIR)
	@redis-cli -p 6390 ping >/dev/null 2>&1 || redis-server --port 6390 --bind 127.0.0.1 --dir $(BROKER_DIR) \
	  --appendonly yes --appendfsync everysec --daemonize yes --pidfile $(BROKER_DIR)/redis.pid \
	  --logfile $(BROKER_DIR)/redis.log

stop-broker:
	@redis-cli -p 6390 shutdown 2>/dev/null || true

# The builder is a no-op when a build by the current recipe exists.
models: $(INSTALLED)
	$(BIN)/python -m scripts.build_tiny_models

# Serve's direct ingress (per Ray instance): the edge fronts the ingress replicas' own ports (docs/edge.md).
run: setup broker
	@echo "Content Studio: http://127.0.0.1:8000  (API docs /docs, health /v1/health, Ray dashboard http://127.0.0.1:8265)"
	RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=3 $(BIN)/serve run configs/local.yaml

test: setup
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -m "not slow and not gpu and not bench" $(PYTEST_ARGS)

# The benchmark harness end to end with tiny settings, so that it cannot rot (no timing asserted). Not part of
# `make test`: it starts Ray instances of its own and takes minutes; CI (.ci/run) runs it after the suite.
bench-smoke: setup
	$(BIN)/python -m pytest -m bench tests/integration/test_bench_smoke.py $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The app against an all-in-one baseline, local and heavier CPU profiles: bench/results/{*.json,summary.md,*.png}.
bench: setup
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.streaming
	$(BIN)/python -m bench.jobs
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m bench.recs
	@cat bench/results/summary.md bench/results/soak.md bench/results/streaming.md bench/results/jobs.md bench/results/recs.md

# The recommender swept over 10k, 100k and 1M items: registering, recommending, memory, ANN recall (recs.{json,md,png}).
bench-recs: setup
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m bench.recs

# The streamed composition against the sequential one (heavy text, a real-sized voice): bench/results/streaming.*.
bench-streaming: setup
	$(BIN)/python -m bench.streaming

# A burst of 300 content jobs through the C edge; the queue drains, the consumer scales: bench/results/jobs.*.
bench-jobs: setup
	$(BIN)/python -m bench.jobs

# A burst at the edge and a bounded soak (mixed load; memory growth and failures): bench/results/soak.{json,md}.
bench-soak: setup
	$(BIN)/python -m bench.soak

bench-quick: setup
	$(BIN)/python -m bench.run --profile local --quick

# Recommender quality on a seeded planted-community data set: popularity vs. ALS vs. hybrid (eval/results/).
eval-recs: $(INSTALLED)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m scripts.eval_recs

# Render the KubeRay RayService manifest from serve_config.yaml (a test fails when it is stale).
manifests: $(INSTALLED)
	$(BIN)/python -m cluster.render_rayservice

# On a machine with a CUDA GPU: the tiny profile with real GPU allocation; prints device, dtype, memory, latency.
gpu-check: setup
	$(BIN)/python -m scripts.gpu_check

clean:
	rm -rf .cache data .pytest_cache .ruff_cache
