"""Adapters for pool experts: LoRA training on benchmark files (`orchestrate lora train`).

Nothing heavy is imported here: `train` and `data` import torch, transformers and peft only
inside the functions that need them.
"""
