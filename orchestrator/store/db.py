"""GenerationStore: one SQLite file (WAL) of generations, their errors and the server's
request logs, shared by every process of a user.

WAL with synchronous=NORMAL: a commit survives a killed process (SIGKILL) at once, and a power
loss after the next checkpoint. Every write is one short `BEGIN IMMEDIATE` transaction, and a
writer waits up to `busy_s` for another process's, so two runs can share one store.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import StoreError
from .logs import RequestLogs, to_json
from .schema import ensure_readable, ensure_schema, translate

STORE_FILE = "store.sqlite"
_CHUNK = 900  # keys per SELECT ... IN (...), under SQLite's variable limit


def default_store_path() -> Path:
    """ORCHESTRATOR_STORE, else store.sqlite in ORCHESTRATOR_CACHE, else in
    $XDG_CACHE_HOME/orchestrator, else ~/.cache/orchestrator."""
    if os.environ.get("ORCHESTRATOR_STORE"):
        return Path(os.environ["ORCHESTRATOR_STORE"]).expanduser()
    if os.environ.get("ORCHESTRATOR_CACHE"):
        return Path(os.environ["ORCHESTRATOR_CACHE"]).expanduser() / STORE_FILE
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "orchestrator" / STORE_FILE


@dataclass(frozen=True)
class StoredGeneration:
    key: bytes
    expert_id: str
    query_id: str
    text: str
    answer: str | None
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    seconds: float | None
    created: float


class Row(NamedTuple):
    """One generation to write (a tuple: cheap to build, bound as is)."""

    key: bytes
    expert_key: bytes
    expert_id: str
    query_id: str
    reusable: bool
    text: str
    answer: str | None = None
    finish_reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float | None = None


def _sql_text(text: str) -> str | bytes:
    """SQLite holds UTF-8; a text with lone surrogates is kept byte-exact as a BLOB."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _bindable(row: Row) -> Row:
    return row._replace(query_id=_sql_text(row.query_id), text=_sql_text(row.text),
                        answer=None if row.answer is None else _sql_text(row.answer))


def _py_text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


class GenerationStore(RequestLogs):
    """Open (creating or migrating) the store at `path` (default: `default_store_path()`).
    Every failure is a `StoreError` naming the file. Thread-safe; use as a context manager."""

    def __init__(self, path: str | Path | None = None, *, busy_s: float = 30.0,
                 readonly: bool = False):
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.readonly = readonly
        self._lock = threading.RLock()
        self._known_experts: set[bytes] = set()
        self._conn = self._open(busy_s)

    # -- opening ------------------------------------------------------------------------------

    def _open(self, busy_s: float) -> sqlite3.Connection:
        path = self.path
        if path.is_dir():
            raise StoreError(f"The generation store {path} is a folder; give a file path "
                             "(e.g. store.sqlite) with --store PATH.")
        if self.readonly:
            if not path.is_file():
                raise StoreError(f"The generation store {path} does not exist. Run something "
                                 "first, or name an existing store with --store PATH.")
            uri = f"{path.resolve().as_uri()}?mode=ro"
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise translate(err, path, "creating its folder") from None
            uri = path.resolve().as_uri()
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=busy_s, isolation_level=None,
                                   check_same_thread=False)
            if self.readonly:
                conn = _readable(conn, uri, busy_s)
        except sqlite3.Error as err:
            raise translate(err, path, "opening it") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_s * 1000)}")
            if self.readonly:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                ensure_readable(conn, path)
                return conn
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone(), busy_s)
            conn.execute("PRAGMA synchronous = NORMAL")
            # fewer checkpoints (the only fsyncs under NORMAL): one per ~40 MB of WAL
            conn.execute("PRAGMA wal_autocheckpoint = 10000")
            conn.execute("BEGIN IMMEDIATE")  # proves the file is writable before any work
            try:
                ensure_schema(conn, path)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            conn.close()
            raise translate(err, path, "opening it") from None
        except StoreError:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> GenerationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, doing: str, work) -> Any:
        """Run `work(conn)` inside one write transaction; SQLite errors become StoreError."""
        if self.readonly:
            raise StoreError(f"The generation store {self.path} was opened read-only; "
                             f"{doing} needs it writable.")
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    value = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise translate(err, self.path, doing) from None
            return value

    def _read(self, doing: str, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise translate(err, self.path, doing) from None

    # -- file hashes (keys.FileHashes) ---------------------------------------------------------

    def file_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        rows = self._read("reading file hashes", "SELECT sha256 FROM file_hashes WHERE path=? "
                          "AND size=? AND mtime_ns=?", (path, size, mtime_ns))
        return rows[0][0] if rows else None

    def remember_file_hash(self, path: str, size: int, mtime_ns: int, digest: str) -> None:
        if self.readonly:
            return
        self._write("remembering a file hash", lambda c: c.execute(
            "INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)",
            (path, size, mtime_ns, digest)))

    # -- generations ---------------------------------------------------------------------------

    def lookup(self, keys: Iterable[bytes], *, reuse_unseeded: bool = False
               ) -> dict[bytes, StoredGeneration]:
        """The stored generations among `keys` (unseeded samples only if `reuse_unseeded`)."""
        keys = list(dict.fromkeys(keys))
        found: dict[bytes, StoredGeneration] = {}
        for lo in range(0, len(keys), _CHUNK):
            chunk = keys[lo:lo + _CHUNK]
            rows = self._read(
                "looking generations up",
                "SELECT key, expert_id, query_id, text, answer, finish_reason, tokens_in, "
                "tokens_out, seconds, created FROM generations "
                f"WHERE key IN ({','.join('?' * len(chunk))}) AND (reusable OR ?)",
                (*chunk, int(reuse_unseeded)))
            for r in rows:
                found[r[0]] = StoredGeneration(
                    r[0], r[1], _py_text(r[2]), _py_text(r[3]),
                    None if r[4] is None else _py_text(r[4]), *r[5:])
        return found

    def count_present(self, keys: Iterable[bytes], *, reuse_unseeded: bool = False) -> int:
        keys = list(dict.fromkeys(keys))
        present = 0
        for lo in range(0, len(keys), _CHUNK):
            chunk = keys[lo:lo + _CHUNK]
            (n,), = self._read(
                "counting stored generations",
                f"SELECT count(*) FROM generations WHERE key IN ({','.join('?' * len(chunk))}) "
                "AND (reusable OR ?)", (*chunk, int(reuse_unseeded)))
            present += n
        return present

    def put(self, rows: Sequence[Row], errors: Sequence[tuple[bytes, str, str, str]] = (),
            experts: Mapping[bytes, tuple[str, Mapping[str, Any]]] | None = None) -> None:
        """Commit one batch: generations (replacing any row with the same key), failures
        (key, expert id, query id, error) and unseen experts (key -> (id, identity))."""
        now = time.time()
        new_experts = [(k, eid, to_json(ident), now) for k, (eid, ident) in (experts or {}).items()
                       if k not in self._known_experts]

        def work(conn: sqlite3.Connection) -> None:
            if new_experts:
                conn.executemany("INSERT OR IGNORE INTO experts VALUES (?, ?, ?, ?)", new_experts)
            if rows:
                # rows are bound as they are (no copy per row); `created` is one literal
                conn.executemany(
                    "INSERT OR REPLACE INTO generations (key, expert_key, expert_id, query_id, "
                    "reusable, text, answer, finish_reason, tokens_in, tokens_out, seconds, "
                    f"created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {float(now)!r})",
                    [r if r[5].isascii() and r[3].isascii() and (r[6] is None or r[6].isascii())
                     else _bindable(r) for r in rows])
            if errors:
                conn.executemany(
                    "INSERT INTO errors (key, expert_id, query_id, error, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(k, e, _sql_text(q), _sql_text(m), now) for k, e, q, m in errors])

        self._write("storing generations", work)
        self._known_experts.update(k for k, *_ in new_experts)

    def set_answers(self, answers: Mapping[bytes, str | None]) -> None:
        """Record extracted answers of stored generations."""
        self._write("storing answers", lambda c: c.executemany(
            "UPDATE generations SET answer=? WHERE key=?",
            [(a, k) for k, a in answers.items()]))

    # -- maintenance -------------------------------------------------------------------------------

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in
                   (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists())

    def stats(self) -> dict[str, Any]:
        """Counts per expert id (generations, errors, tokens, oldest and newest), the size on
        disk and the number of logged requests."""
        experts: dict[str, dict[str, Any]] = {}
        for eid, n, tokens, oldest, newest, unseeded in self._read(
                "reading stats", "SELECT expert_id, count(*), sum(tokens_out), min(created), "
                "max(created), sum(reusable = 0) FROM generations GROUP BY expert_id"):
            experts[eid] = {"generations": n, "tokens_out": tokens or 0, "oldest": oldest,
                            "newest": newest, "unseeded": unseeded or 0, "errors": 0}
        for eid, n in self._read("reading stats",
                                 "SELECT expert_id, count(*) FROM errors GROUP BY expert_id"):
            experts.setdefault(eid, {"generations": 0, "tokens_out": 0, "oldest": None,
                                     "newest": None, "unseeded": 0})["errors"] = n
        (requests,), = self._read("reading stats", "SELECT count(*) FROM requests")
        return {"path": str(self.path), "size_bytes": self.size_bytes(), "experts": experts,
                "generations": sum(e["generations"] for e in experts.values()),
                "errors": sum(e["errors"] for e in experts.values()), "requests": requests}

    def prune(self, *, older_than_s: float | None = None,
              experts: Sequence[str] | None = None) -> dict[str, int]:
        """Delete generations and errors older than `older_than_s` and/or of `experts` (and,
        by age alone, logged requests); returns the counts deleted."""
        if older_than_s is None and not experts:
            raise StoreError("Say what to prune: an age (--older-than 30d) and/or experts "
                             "(--expert ID).")
        where, params = [], []
        if older_than_s is not None:
            where.append("created < ?")
            params.append(time.time() - older_than_s)
        if experts:
            where.append(f"expert_id IN ({','.join('?' * len(experts))})")
            params.extend(experts)
        clause = " AND ".join(where)

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            gens = conn.execute(f"DELETE FROM generations WHERE {clause}", params).rowcount
            errs = conn.execute(f"DELETE FROM errors WHERE {clause}", params).rowcount
            logs = 0
            if older_than_s is not None and not experts:
                logs = conn.execute("DELETE FROM requests WHERE created < ?", params).rowcount
            return {"generations": gens, "errors": errs, "requests": logs}

        counts = self._write("pruning", work)
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:  # another process reads: the WAL shrinks later
                pass
        return counts

    def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system (rewrites the file)."""
        with self._lock:
            try:
                self._conn.execute("VACUUM")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                raise translate(err, self.path, "vacuuming") from None


def _retry_busy(step, busy_s: float):
    """Run `step`, retrying while SQLite says the file is locked or busy, for up to `busy_s`.
    Switching a new file to WAL takes an exclusive lock and does not wait through the busy
    handler: two processes opening one new store at once would otherwise fail at once."""
    deadline = time.monotonic() + busy_s
    while True:
        try:
            return step()
        except sqlite3.OperationalError as err:
            text = str(err).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _readable(conn: sqlite3.Connection, uri: str, busy_s: float) -> sqlite3.Connection:
    """A read-only connection that can read: a WAL store on read-only media whose -shm file
    is gone (a clean close removes it) opens only as immutable."""
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as err:
        if "unable to open" not in str(err):
            raise
    conn.close()
    return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=busy_s,
                           isolation_level=None, check_same_thread=False)
