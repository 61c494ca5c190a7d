"""`orchestrate store stats|export|prune` and `orchestrate logs [list|show ID]`: thin commands
over orchestrator.store."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UserError
from .common import err, handle_errors, out, split_ids

app = typer.Typer(help="The generation store: stats, export to a replay pool, prune.",
                  no_args_is_help=True)
logs_app = typer.Typer(help="Requests that `orchestrate serve` recorded in the store.",
                       invoke_without_command=True)

StoreOption = Annotated[Optional[Path], typer.Option(
    "--store", help="Store file (default: ORCHESTRATOR_STORE, else store.sqlite under the user "
    "cache folder).")]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """'90m', '12h', '30d', '2w' -> seconds."""
    match = _AGE.match(text)
    if not match:
        raise UserError(f"--older-than '{text}' is not an age; give a number and a unit: "
                        "90m, 12h, 30d or 2w.")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _open(path: Path | None, readonly: bool = False):
    """Reading commands open an existing store read-only (a read-only file still works)."""
    from ..store import GenerationStore, default_store_path

    path = path or default_store_path()
    return GenerationStore(path, readonly=readonly and path.is_file())


def _printable(text: str) -> str:
    """Any text, lone surrogates included, as something a UTF-8 terminal can show."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _age(created: float | None) -> str:
    if created is None:
        return "-"
    seconds = max(0.0, time.time() - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@app.command("stats")
@handle_errors
def stats(store: StoreOption = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Generations per expert, their age, errors, and the store's size on disk."""
    with _open(store) as db:
        record = db.stats()
    if as_json:
        out.print(json.dumps(record, indent=2), markup=False)
        return
    out.print(f"{record['path']}: {record['generations']:,} generations, {record['errors']:,} "
              f"errors, {record['requests']:,} logged requests, "
              f"{record['size_bytes'] / 1e6:.2f} MB", markup=False, soft_wrap=True)
    table = Table()
    for col in ("expert", "generations", "unseeded", "errors", "tokens out", "oldest", "newest"):
        table.add_column(col, justify="left" if col == "expert" else "right")
    for expert, s in sorted(record["experts"].items()):
        table.add_row(escape(_printable(expert)), f"{s['generations']:,}", f"{s['unseeded']:,}",
                      f"{s['errors']:,}", f"{s['tokens_out']:,}", _age(s["oldest"]),
                      _age(s["newest"]))
    out.print(table)


@app.command("export")
@handle_errors
def export(
    bench: Annotated[Path, typer.Argument(help="Benchmark file the pool was run on.")],
    pool: Annotated[Path, typer.Option(help="Pool manifest that generated the answers.")],
    out_path: Annotated[Path, typer.Option("--out", help="Recordings file to write (JSONL).")],
    pool_out: Annotated[Optional[Path], typer.Option(
        "--pool-out", help="Also write a replay pool manifest over the recordings.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        help="Run preset the pool was run with (its max_tokens, sampling, seed).")] = None,
    experts: Annotated[Optional[str], typer.Option(
        help="Comma-separated expert ids (default: the whole pool).")] = None,
    partial: Annotated[bool, typer.Option(
        "--partial", help="Keep questions some experts did not answer (the replay reads them "
        "as no answer).")] = False,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.")] = None,
    store: StoreOption = None,
) -> None:
    """Write the stored generations of POOL over BENCH as a replay recordings file."""
    from ..benchmarks.readers import read_benchmark
    from ..core import Orchestrator
    from ..store.export import collect, write_outputs

    for target in filter(None, (out_path, pool_out)):
        if target.is_dir():
            raise UserError(f"--out {target} is a folder; give a file path.")
    queries = read_benchmark(bench, fmt, limit)
    with _open(store, readonly=True) as db, Orchestrator.from_files(pool, config) as orch:
        result = collect(db, orch, queries, split_ids(experts), partial)
        write_outputs(result, out_path, pool_out, orch.pool.name, bench)
    err.print(f"exported {len(result.lines)} of {result.questions} questions x "
              f"{len(result.experts)} experts ({result.stored:,} stored generations, "
              f"{result.skipped} questions skipped) to {out_path}"
              + (f"; replay pool: {pool_out}" if pool_out else ""), markup=False, soft_wrap=True)


@app.command("prune")
@handle_errors
def prune(
    older_than: Annotated[Optional[str], typer.Option(
        "--older-than", help="Remove generations older than this (90m, 12h, 30d, 2w).")] = None,
    expert: Annotated[Optional[str], typer.Option(
        help="Remove the generations of these expert ids (comma-separated).")] = None,
    vacuum: Annotated[bool, typer.Option(
        "--vacuum", help="Then shrink the file (rewrites it; other processes must wait).")] = False,
    store: StoreOption = None,
) -> None:
    """Remove generations and their errors by age and/or expert (by age alone: request logs too)."""
    age = parse_age(older_than) if older_than is not None else None
    with _open(store) as db:
        counts = db.prune(older_than_s=age, experts=split_ids(expert))
        before = db.size_bytes()
        if vacuum:
            db.vacuum()
        size = (f"; {before / 1e6:.2f} MB -> {db.size_bytes() / 1e6:.2f} MB" if vacuum else
                " (their space is reused; --vacuum shrinks the file)")
    out.print(f"removed {counts['generations']:,} generations, {counts['errors']:,} errors and "
              f"{counts['requests']:,} request logs from {db.path}{size}", markup=False,
              soft_wrap=True)


@logs_app.callback()
@handle_errors
def logs(ctx: typer.Context, store: StoreOption = None,
         limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20) -> None:
    """List the latest logged requests (`orchestrate logs show ID` for one in full)."""
    ctx.obj = store
    if ctx.invoked_subcommand is None:
        _list(store, limit)


def _list(store: Path | None, limit: int) -> None:
    if limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit}).")
    with _open(store, readonly=True) as db:
        rows = db.list_requests(limit)
    if not rows:
        out.print(f"no logged requests in {db.path} (start the server with request logging on)",
                  markup=False, soft_wrap=True)
        return
    table = Table(title=f"{db.path}: latest {len(rows)} requests", title_justify="left")
    for col in ("id", "when", "model", "status", "seconds", "question"):
        table.add_column(col, overflow="ellipsis", no_wrap=col != "question")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))
        seconds = "-" if r["duration_s"] is None else f"{r['duration_s']:.2f}"
        question = r["question"] if r["status"] == "ok" else f"{r['question']} [{r['error']}]"
        table.add_row(str(r["id"]), when, escape(_printable(r["model"] or "-")), r["status"],
                      seconds, escape(_printable(question[:200])))
    out.print(table)


@logs_app.command("list")
@handle_errors
def logs_list(ctx: typer.Context,
              limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
              store: StoreOption = None) -> None:
    """List the latest logged requests."""
    _list(store or ctx.obj, limit)


@logs_app.command("show")
@handle_errors
def logs_show(ctx: typer.Context,
              log_id: Annotated[int, typer.Argument(metavar="ID", help="A log id (logs list).")],
              store: StoreOption = None) -> None:
    """Print one logged request in full (request, routing, response) as JSON."""
    with _open(store or ctx.obj, readonly=True) as db:
        record = db.get_request(log_id)
    if record is None:
        raise UserError(f"No logged request with id {log_id} in {db.path}; "
                        "`orchestrate logs list` shows the ids.")
    out.print(_printable(json.dumps(record, indent=2, ensure_ascii=False)), markup=False)
