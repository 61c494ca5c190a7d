"""Adapters for pool experts: LoRA training on benchmark files (`data.py`, `train.py`:
`orchestrate lora train`) and token-level LoRA mixtures (`lora_moe/`).

Nothing heavy is imported here: torch, transformers and peft are imported inside the functions
that need them.
"""
