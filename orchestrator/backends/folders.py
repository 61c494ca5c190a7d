"""Finding the folders a manifest names beside `model` (a LoRA adapter, a LoRA-MoE gate):
relative to the pool manifest's folder first, then to the working directory."""

from __future__ import annotations

from pathlib import Path

from ..errors import FolderNotFoundError


def find_folder(expert_id: str, field: str, value: str, marker: str, base_dir: Path | None,
                what: str, hint: str) -> Path:
    """The resolved folder holding `marker`; otherwise a FolderNotFoundError (a UserError)
    naming every place tried."""
    path = Path(value).expanduser()
    tried = [path]
    if not path.is_absolute() and base_dir is not None:
        tried.insert(0, Path(base_dir) / path)
    for candidate in tried:
        if (candidate / marker).is_file():
            return candidate.resolve()
    raise FolderNotFoundError(
        f"Expert '{expert_id}': {field} '{value}' is not a {what} folder (no {marker} in "
        f"{' or '.join(repr(str(p)) for p in tried)}). {hint}"
    )
