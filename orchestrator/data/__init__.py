"""Files the package ships, so that a wheel install needs no checkout: the default skill
vocabulary (`skills/general.yaml`) and the sample benchmark files (`samples/*.jsonl`, licences in
`samples/LICENSE.md`). The repository's `skills/` and `samples/` hold links to these files."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..errors import UnknownNameError


def data_path(*parts: str) -> Path:
    """A shipped file as a filesystem path (wheels install unzipped, so this is a real path)."""
    return Path(str(files(__name__).joinpath(*parts)))


DEFAULT_VOCABULARY = data_path("skills", "general.yaml")

# name -> (file, what it holds)
SAMPLES: dict[str, tuple[str, str]] = {
    "demo": ("demo.jsonl", "12 MMLU-Pro, 12 MedMCQA, 12 GSM8K questions (test splits)"),
    "validation": ("validation.jsonl", "8 MMLU-Pro, 8 MedMCQA, 8 GSM8K (training splits), to profile on"),
}


def sample_path(name: str) -> Path:
    """The path of a bundled sample benchmark file, by name (`demo`, `validation`)."""
    if name not in SAMPLES:
        raise UnknownNameError("sample", name, SAMPLES)
    return data_path("samples", SAMPLES[name][0])
