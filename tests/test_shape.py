"""The shape of the package: no class over 300 lines, no function over 80, no module over
600, and no import cycle at run time (module-level imports, TYPE_CHECKING blocks aside)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "kmigratedd"
LIMITS = {"class": 300, "function": 80, "module": 600}


def modules() -> dict[str, tuple[Path, ast.Module, bool]]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, ast.parse(p.read_text()), is_pkg)
    return out


def test_no_class_function_or_module_is_too_long():
    over = []
    for name, (path, tree, _) in modules().items():
        lines = path.read_text().count("\n")
        if lines > LIMITS["module"]:
            over.append(f"module {name}: {lines} lines")
        for node in ast.walk(tree):
            kind = ("class" if isinstance(node, ast.ClassDef) else "function"
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None)
            if kind is not None:
                n = node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]
                if n > LIMITS[kind]:
                    over.append(f"{kind} {name}.{node.name}: {n} lines")  # type: ignore
    assert not over, "split them:\n" + "\n".join(over)


def runtime_imports(name: str, tree: ast.Module, is_pkg: bool, known: set[str]) -> set[str]:
    """The package modules ``name`` imports when it is imported (not its own parents)."""
    deps: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for n in body:
            if isinstance(n, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(n.test):
                    visit(n.body)
                visit(n.orelse)
            elif isinstance(n, ast.Try):
                visit(n.body)
                for h in n.handlers:
                    visit(h.body)
            elif isinstance(n, ast.Import):
                deps.update(a.name for a in n.names if a.name.startswith("kmigratedd"))
            elif isinstance(n, ast.ImportFrom):
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                if n.level:
                    base = base[:len(base) - (n.level - 1)]
                    target = ".".join(base + ([n.module] if n.module else []))
                else:
                    target = n.module or ""
                if target.startswith("kmigratedd"):
                    for a in n.names:
                        sub = f"{target}.{a.name}"
                        deps.add(sub if sub in known else target)

    visit(tree.body)
    out = set()
    for d in deps:
        parts = d.split(".")
        for i in range(1, len(parts) + 1):
            m = ".".join(parts[:i])
            if m in known and m != name and not name.startswith(m + "."):
                out.add(m)
    return out


def test_no_import_cycle_at_run_time():
    mods = modules()
    graph = {n: runtime_imports(n, t, p, set(mods)) for n, (_, t, p) in mods.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                walk(dep, path + [dep])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            walk(n, [n])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
