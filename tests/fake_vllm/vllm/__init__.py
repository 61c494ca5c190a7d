"""A simulated vLLM for tests (tests/fake_vllm): the classes and signatures the backend uses
(vllm/entrypoints/llm.py, vllm/sampling_params.py, vllm/lora/request.py of vLLM 0.33) over
simulated GPUs with vLLM's memory accounting (`_sim.py`). Put on sys.path by the `fake_vllm`
fixture of tests/fake_vllm/__init__.py."""

from .entrypoints.llm import LLM
from .sampling_params import SamplingParams

__version__ = "0.33.0"
__all__ = ["LLM", "SamplingParams"]
