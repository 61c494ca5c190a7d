"""The package's shape: module-level imports form no circle, and run, sweep, profile,
evaluation and chat reach generation through the one pipeline (no stage calls the executor on
its own)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    base = PACKAGE.joinpath(rel)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def import_graph() -> nx.DiGraph:
    """Edges module -> module for imports at module level (imports inside functions are the
    lazy ones and may point anywhere)."""
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] \
                    if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names
                        if _is_module(f"{target}.{a.name}")]
                targets = subs if subs and node.module is None else [target, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.startswith("orchestrator") and target != name:
                    graph.add_edge(name, target)
    return graph


def test_module_imports_form_no_cycle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_only_the_generation_interface_runs_the_executor():
    """`executor.execute(` appears only where generation is implemented (the pipeline's
    Generation and the workers themselves), not in stages that should go through it."""
    allowed = {"orchestrator.generation", "orchestrator.workers.cache",
               "orchestrator.workers.executor"}
    callers = {_module(p) for p in PACKAGE.rglob("*.py")
               if ".executor.execute(" in p.read_text(encoding="utf-8")
               or "self.inner.execute(" in p.read_text(encoding="utf-8")}
    assert callers <= allowed, sorted(callers - allowed)
