"""Faults the store survives: two writing processes, corrupt / read-only / full files, old and
newer schema versions. Each is a one-line StoreError naming the file, or a migration."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import StoreError, UserError
from orchestrator.store import SCHEMA_VERSION, GenerationStore, Row
from orchestrator.store.schema import TABLES_V0

from .conftest import ROOT


def rows(n: int, prefix: str = "", size: int = 40) -> list[Row]:
    return [Row(f"{prefix}{i}".encode().ljust(32, b"."), b"e" * 32, "e", f"q{i}", True,
                "x" * size, tokens_out=3) for i in range(n)]


def one_line(err: BaseException, path: Path) -> str:
    text = str(err)
    assert "\n" not in text and str(path) in text, text
    return text


# -- two processes ------------------------------------------------------------------------------

WRITER = r"""
import sys
from orchestrator.store import GenerationStore, Row
path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with GenerationStore(path, busy_s=60) as store:
    for batch in range(n):
        # half of the keys are shared by both writers, half are each writer's own
        keys = [f"shared-{batch}-{i}" for i in range(4)] + [f"{tag}-{batch}-{i}" for i in range(4)]
        store.put([Row(k.encode().ljust(32, b"."), b"e" * 32, "e", k, True, f"{tag} text",
                       tokens_out=1) for k in keys], [(b"err", "e", "q", f"{tag} failed")])
        found = store.lookup([k.encode().ljust(32, b".") for k in keys])
        assert len(found) == 8, len(found)
print("done")
"""


def test_two_processes_write_one_store_at_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, "60"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "done", err[-2000:]
    with GenerationStore(path) as store:
        stats = store.stats()
        assert stats["generations"] == 60 * 4 + 2 * 60 * 4 and stats["errors"] == 120
        assert store._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- corrupt, not a store, a folder --------------------------------------------------------------


def test_a_corrupt_file_is_one_line_naming_it(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError) as err:
        GenerationStore(garbage)
    assert "corrupt" in one_line(err.value, garbage)

    truncated = tmp_path / "truncated.sqlite"
    with GenerationStore(truncated) as store:
        store.put(rows(3000, size=400))
    data = truncated.read_bytes()
    truncated.write_bytes(data[:100] + os.urandom(len(data) // 2))  # header kept, pages broken
    with pytest.raises(StoreError) as err:
        with GenerationStore(truncated) as store:
            store.lookup([r.key for r in rows(3000)])
            store.stats()
    assert "corrupt" in one_line(err.value, truncated)
    assert isinstance(err.value, UserError) and err.value.exit_code == 2


def test_another_sqlite_file_or_a_folder_is_refused(tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as err:
        GenerationStore(other)
    assert "songs" in one_line(err.value, other)
    with pytest.raises(StoreError) as err:
        GenerationStore(tmp_path)
    assert "folder" in one_line(err.value, tmp_path)


# -- read-only and full disks --------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs at `path` (root only); skips the test where mounting is not allowed."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def make_read_only(folder: Path, store: Path):
    """chmod for a normal user; root ignores modes, so remount the tmpfs read-only."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        store.chmod(0o444)
        folder.chmod(0o555)


def test_a_read_only_store_is_one_line_and_still_readable(tmp_path):
    with tmpfs(tmp_path / "ro", "4m") as folder:
        path = folder / "store.sqlite"
        with GenerationStore(path) as store:
            store.put(rows(5))
        make_read_only(folder, path)
        with pytest.raises(StoreError) as err:
            GenerationStore(path)
        assert "read-only" in one_line(err.value, path)
        with GenerationStore(path, readonly=True) as store:  # stats, export, logs still work
            assert len(store.lookup([r.key for r in rows(5)])) == 5
            with pytest.raises(StoreError):
                store.put(rows(1, "new"))
        with pytest.raises(StoreError) as err:
            GenerationStore(folder / "sub" / "new.sqlite")  # cannot even make its folder
        assert "read-only" in one_line(err.value, folder / "sub" / "new.sqlite")


def test_a_full_disk_is_one_line_naming_the_store(tmp_path):
    # portable: SQLite's own size limit raises SQLITE_FULL exactly as a full disk does
    path = tmp_path / "limited.sqlite"
    with GenerationStore(path) as store:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages + 8}")
        with pytest.raises(StoreError) as err:
            for batch in range(100):
                store.put(rows(5, f"b{batch}-", size=1000))
        assert "is full" in one_line(err.value, path)
        assert store.stats()["generations"] > 0  # what was committed before is intact


def test_a_really_full_tmpfs_is_one_line(tmp_path):
    with tmpfs(tmp_path / "tiny", "512k") as folder:
        path = folder / "store.sqlite"
        with pytest.raises(StoreError) as err:
            with GenerationStore(path) as store:
                for batch in range(400):
                    store.put(rows(50, f"b{batch}-", size=2000))
        assert "is full" in one_line(err.value, path)


# -- schema versions -------------------------------------------------------------------------------


def test_a_version_0_store_is_migrated_and_keeps_its_generations(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(TABLES_V0)
    conn.execute("INSERT INTO generations VALUES (?, ?, 'e', 'q1', 1, 'The answer is (B).', "
                 "7, 5, 0.1, ?)", (b"k" * 32, b"e" * 32, time.time()))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as err:  # read-only cannot migrate: it says how
        GenerationStore(path, readonly=True)
    assert "migrate" in one_line(err.value, path)
    with GenerationStore(path) as store:
        (hit,) = store.lookup([b"k" * 32]).values()
        assert (hit.text, hit.answer, hit.tokens_in, hit.tokens_out) == (
            "The answer is (B).", None, 7, 5)
        assert store.log_request({"messages": []}) == 1  # tables of version 1 exist
        version = store._conn.execute("SELECT version FROM schema_version").fetchall()
        assert version == [(SCHEMA_VERSION,)]


def test_a_newer_schema_says_how_to_proceed(tmp_path):
    path = tmp_path / "future.sqlite"
    with GenerationStore(path) as store:
        store._conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError) as err:
        GenerationStore(path)
    text = one_line(err.value, path)
    assert "version 99" in text and "Upgrade" in text


def test_a_store_filling_up_during_a_run_stops_it_with_the_one_line_error(tmp_path, fake_pool):
    from orchestrator.core import Orchestrator
    from orchestrator.store import StoredExecutor

    path = tmp_path / "s.sqlite"
    pool = fake_pool(2, resident_limit=2, options={"e0": {"default": "x " * 2000},
                                                   "e1": {"default": "y " * 2000}})
    questions = [f"Question {i}?" for i in range(40)]
    with GenerationStore(path) as store, Orchestrator.from_files(
            pool, router="fixed", k=2, batch_size=4, escalation={"mode": "none"}) as orch:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages + 12}")
        orch.executor = StoredExecutor(orch.executor, store)
        with pytest.raises(StoreError) as err:
            orch.evaluate(questions)
        assert "is full" in one_line(err.value, path)
        fake = orch.backends.get("fake")
        assert 0 < store.stats()["generations"] < len(fake.history) <= 80  # stopped early
