"""The package's shape, read from its source: its modules import each other without a
circle (every import counts, those for type checking and inside functions too), so the
map of modules can be drawn floor by floor with every arrow pointing down."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dropbox_daemon"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its source."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            names += [base, *(f"{base}.{a.name}" for a in node.names)]
    out = set()
    for n in names:
        while n and n not in known:
            n = n.rpartition(".")[0]
        if n and n != name:
            out.add(n)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_reader_sees_imports_of_every_kind() -> None:
    edges = graph()
    assert "dropbox_daemon.store" in edges["dropbox_daemon.daemon"]  # from-import
    assert "dropbox_daemon.worker" in edges["dropbox_daemon.daemon"]  # inside a function
    assert "dropbox_daemon.worker" in edges["dropbox_daemon.supervise"]  # for type checking
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert circles(graph()) == []


def floors(edges: dict[str, set[str]]) -> dict[int, list[str]]:
    """Each module on the floor above the highest one it imports."""
    level: dict[str, int] = {}

    def of(m: str) -> int:
        if m not in level:
            level[m] = 1 + max((of(d) for d in edges[m]), default=-1)
        return level[m]

    out: dict[int, list[str]] = {}
    for m in edges:
        if m != "dropbox_daemon":
            out.setdefault(of(m), []).append(m.removeprefix("dropbox_daemon."))
    return {k: sorted(v) for k, v in out.items()}


def test_the_map_in_docs_architecture_is_the_packages() -> None:
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = doc.split("## The map of modules", 1)[1].split("```")[1]
    drawn = {
        int(line.split()[0]): sorted(line.split()[1:])
        for line in block.strip().splitlines()
        if line.strip()
    }
    assert drawn == floors(graph()), "redraw the map in docs/architecture.md"


LIMITS = {"module": 400, "class": 250, "function": 60}  # lines: one idea fits a screenful


def sizes() -> dict[str, tuple[str, int]]:
    """Every module, class and function of the package with its kind and length in lines."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        src = path.read_text(encoding="utf-8")
        out[rel] = ("module", len(src.splitlines()))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                key = f"{rel}:{node.name}"
                out[key] = max(out.get(key, (kind, 0)), (kind, size), key=lambda t: t[1])
    return out


def test_no_module_class_or_function_is_past_its_limit() -> None:
    grown = {name: size for name, (kind, size) in sizes().items() if size > LIMITS[kind]}
    assert grown == {}, "split these by idea (tests/test_layout.py LIMITS)"
