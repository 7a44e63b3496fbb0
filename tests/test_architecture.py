"""The layering of ``dnmf/`` and ``benchmarks/``, checked on their source (AST; nothing imported).

1. No module uses another module's private name (``_name``, not a dunder): neither
   ``from dnmf.x import _y`` nor ``x._y`` / ``getattr(x, "_y")`` where ``x`` is a module bound
   by an import (at module level or inside a function), nor an import of a private module
   (``dnmf.io._common``) other than the version module ``dnmf._version``.
2. No import circle: the graph of module -> the dnmf / benchmarks modules it imports (imports
   inside functions count: a lazy import is still a dependency; ``if TYPE_CHECKING:`` imports do
   not, they never run) has no strongly connected component of more than one module.
3. ``dnmf.factorize`` stays a short sequence of named stages.

How test 2 reads an import, so that a package's re-export facade adds no cycle of its own:

- ``import a.b`` / ``from a import b`` where ``a.b`` is a module: an edge to ``a.b``;
- ``from pkg import name`` where ``name`` is not a submodule: an edge to the module that
  defines ``name`` as ``pkg/__init__.py`` sees it — the module it imports ``name`` from (at
  module level or in a lazy ``__getattr__``), followed through packages; else ``pkg`` itself
  where ``__init__`` defines it; else the module among those ``__init__`` imports that binds it
  at top level (``dnmf/__init__``'s ``__getattr__`` hands out ``getattr(api, name)``);
- ``import pkg`` of a package: each use ``pkg.x.y`` is resolved the same way;
- the implicit import of a module's parent packages is not an edge (else every package with
  a re-exporting ``__init__`` would be a cycle with its submodules).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dnmf", "benchmarks")
#: private modules any module may import: the version module (``__version__`` only)
ALLOWED_PRIVATE_MODULES = frozenset({"dnmf._version"})
#: statement lines (blank and comment-only lines not counted) of factorize after its docstring
FACTORIZE_MAX_LINES = 60


# --- the modules and their imports ------------------------------------------------------------


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of :data:`PACKAGES`: dotted name -> file (a package is its ``__init__``)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def is_private(name: str) -> bool:
    """``_x`` and ``__x`` are private; a dunder ``__x__`` is not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_private_module(module: str) -> bool:
    return module not in ALLOWED_PRIVATE_MODULES and any(map(is_private, module.split(".")))


def ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def site(module: str, line: int) -> str:
    return f"{modules()[module].relative_to(ROOT)}:{line}"


@functools.cache
def tree(module: str) -> ast.Module:
    path = modules()[module]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@dataclass(frozen=True)
class Import:
    """One imported module: ``import module [as asname]``, ``from module import names`` or
    ``importlib.import_module("module")``."""

    line: int
    module: str
    names: tuple[tuple[str, str | None], ...] = ()  # from-imports: (name, asname)
    asname: str | None = None
    is_from: bool = False
    type_only: bool = False  # under ``if TYPE_CHECKING:``
    dynamic: bool = False  # importlib.import_module("module"): binds no name

    def text(self) -> str:
        if self.dynamic:
            return f'importlib.import_module("{self.module}")'
        if self.is_from:
            return f"from {self.module} import " + ", ".join(
                n + (f" as {a}" if a else "") for n, a in self.names)
        return f"import {self.module}" + (f" as {self.asname}" if self.asname else "")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(module: str, level: int, name: str | None) -> str:
    """The module a relative ``from`` import names, seen from ``module``."""
    parts = module.split(".") if is_package(module) else module.split(".")[:-1]
    parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def _imports_in(module: str, node: ast.AST, type_only: bool) -> Iterator[Import]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _imports_in(module, ast.Module(body=[stmt], type_ignores=[]), True)
            for stmt in child.orelse:
                yield from _imports_in(module, ast.Module(body=[stmt], type_ignores=[]),
                                       type_only)
            continue
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield Import(child.lineno, alias.name, asname=alias.asname, type_only=type_only)
        elif isinstance(child, ast.ImportFrom):
            name = (_absolute(module, child.level, child.module) if child.level
                    else child.module or "")
            yield Import(child.lineno, name, tuple((a.name, a.asname) for a in child.names),
                         is_from=True, type_only=type_only)
        elif (isinstance(child, ast.Call) and child.args
              and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)
              and ((isinstance(child.func, ast.Attribute) and child.func.attr == "import_module")
                   or (isinstance(child.func, ast.Name) and child.func.id == "import_module"))
              and not child.args[0].value.startswith(".")):
            yield Import(child.lineno, child.args[0].value, type_only=type_only, dynamic=True)
        yield from _imports_in(module, child, type_only)


@functools.cache
def imports(module: str) -> tuple[Import, ...]:
    """Every import of one of :data:`PACKAGES` in ``module``, at any depth."""
    return tuple(i for i in _imports_in(module, tree(module), False) if ours(i.module))


def bindings(module: str) -> dict[str, str]:
    """Names ``module`` binds to a module of ours by an import anywhere in the file."""
    out: dict[str, str] = {}
    for imp in imports(module):
        if imp.is_from:
            for name, asname in imp.names:
                if f"{imp.module}.{name}" in modules():
                    out[asname or name] = f"{imp.module}.{name}"
        elif imp.dynamic:
            continue
        elif imp.asname:
            out[imp.asname] = imp.module
        else:
            out[imp.module.split(".")[0]] = imp.module.split(".")[0]
    return {name: mod for name, mod in out.items() if mod in modules()}


def _parents(node: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(node) for child in ast.iter_child_nodes(parent)}


def module_uses(module: str) -> Iterator[tuple[int, str, str, list[str]]]:
    """``alias.a.b...`` and ``getattr(alias, "a")`` where ``alias`` is bound to a module of ours:
    (line, alias, its module, the attribute chain)."""
    bound = bindings(module)
    parents = _parents(tree(module))
    for node in ast.walk(tree(module)):
        if not (isinstance(node, ast.Name) and node.id in bound):
            continue
        chain: list[str] = []
        up = parents.get(node)
        while isinstance(up, ast.Attribute):
            chain.append(up.attr)
            up = parents.get(up)
        if (not chain and isinstance(up, ast.Call) and isinstance(up.func, ast.Name)
                and up.func.id in ("getattr", "hasattr") and len(up.args) >= 2
                and up.args[0] is node and isinstance(up.args[1], ast.Constant)
                and isinstance(up.args[1].value, str)):
            chain = [up.args[1].value]
        yield node.lineno, node.id, bound[node.id], chain


# --- test 1: private names ---------------------------------------------------------------------


def private_uses(package: str) -> list[str]:
    found: list[str] = []
    for module in sorted(m for m in modules() if m.split(".")[0] == package):
        for imp in imports(module):
            if imp.module == module:
                continue
            if is_private_module(imp.module):
                found.append(f"{site(module, imp.line)}: {imp.text()} (private module "
                             f"{imp.module})")
                continue
            for name, _ in imp.names:
                full = f"{imp.module}.{name}"
                if full in ALLOWED_PRIVATE_MODULES or full == module or not is_private(name):
                    continue
                what = (f"private module {full}" if full in modules()
                        else f"private name of {imp.module}")
                found.append(f"{site(module, imp.line)}: from {imp.module} import {name} "
                             f"({what})")
        for line, alias, target, chain in module_uses(module):
            owner = target
            for attr in chain:
                if is_private(attr):
                    if owner != module and f"{owner}.{attr}" not in ALLOWED_PRIVATE_MODULES:
                        found.append(f"{site(module, line)}: {'.'.join([alias, *chain])} "
                                     f"(private name {attr} of {owner})")
                    break
                if f"{owner}.{attr}" not in modules():
                    break  # an attribute of a module's object, not of a module
                owner = f"{owner}.{attr}"
    return sorted(set(found), key=_site_order)


def _site_order(text: str) -> tuple[str, int, str]:
    path, line, rest = text.split(":", 2)
    return path, int(line), rest


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_uses_another_modules_private_name(package):
    found = private_uses(package)
    assert not found, (
        f"{len(found)} uses of another module's private name (or of a private module) in "
        f"{package}/: make the name public where it is shared, or move it to the module that "
        "uses it\n  " + "\n  ".join(found))


# --- test 2: import cycles ---------------------------------------------------------------------


def _top_level_names(module: str) -> set[str]:
    names: set[str] = set()
    for stmt in tree(module).body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names.add(stmt.target.id)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names.update(a.asname or a.name.split(".")[0] for a in stmt.names)
    return names


@functools.cache
def defining_module(package: str, name: str, seen: frozenset[str] = frozenset()) -> str:
    """The module ``from package import name`` depends on: see the module's docstring."""
    if f"{package}.{name}" in modules():
        return f"{package}.{name}"
    if not is_package(package) or package in seen:
        return package
    seen = seen | {package}
    for imp in imports(package):  # `from m import name` / `import m as name` in __init__
        if imp.is_from:
            for orig, asname in imp.names:
                if (asname or orig) == name:
                    return defining_module(imp.module, orig, seen)
        elif imp.asname == name and imp.module in modules():
            return imp.module
    if name in _top_level_names(package):
        return package
    for imp in imports(package):  # a lazy __getattr__ handing out getattr(submodule, name)
        targets = ([f"{imp.module}.{n}" for n, _ in imp.names] + [imp.module] if imp.is_from
                   else [imp.module])
        for target in targets:
            if (target in modules() and target != package and not is_package(target)
                    and name in _top_level_names(target)):
                return target
    return package


def _resolve_chain(start: str, chain: list[str]) -> str:
    current = start
    for attr in chain:
        if not is_package(current):
            break
        if f"{current}.{attr}" not in modules():
            return defining_module(current, attr)
        current = f"{current}.{attr}"
    return current


@functools.cache
def edges() -> dict[str, dict[str, list[str]]]:
    """module -> imported module -> the sites (``path:line statement``) of those imports."""
    found: dict[str, dict[str, dict[tuple[int, str], list[str]]]] = {m: {} for m in modules()}

    def add(module: str, target: str, line: int, text: str, name: str = "") -> None:
        if target in modules() and target != module:
            names = found[module].setdefault(target, {}).setdefault((line, text), [])
            if name and name not in names:
                names.append(name)

    for module in modules():
        runtime = [imp for imp in imports(module) if not imp.type_only]
        for imp in runtime:
            if imp.is_from:
                for name, _ in imp.names:
                    target = (defining_module(imp.module, name) if imp.module in modules()
                              else imp.module)
                    add(module, target, imp.line, f"from {imp.module} import", name)
            elif imp.module in modules() and (imp.dynamic or not is_package(imp.module)):
                add(module, imp.module, imp.line, imp.text())
        # `import pkg` (or `import pkg.sub as x` of a package): what each use reaches
        package_lines = {(imp.asname or imp.module.split(".")[0]): imp.line for imp in runtime
                         if not (imp.is_from or imp.dynamic) and imp.module in modules()
                         and (is_package(imp.module) or not imp.asname)}
        for line, alias, target, chain in module_uses(module):
            if alias in package_lines and is_package(target):
                add(module, _resolve_chain(target, chain), package_lines[alias],
                    f"import {target}:", f"{'.'.join([alias, *chain])} (line {line})")
    return {module: {target: [f"{site(module, line)} {text} {', '.join(names)}".rstrip()
                              for (line, text), names in sorted(sites.items())]
                     for target, sites in targets.items()}
            for module, targets in found.items()}


def strongly_connected(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(out)


def _a_cycle(graph: dict[str, dict[str, list[str]]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module (breadth first)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*paths[node], start]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return component


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = edges()
    cycles = [c for c in strongly_connected(graph) if any(m.split(".")[0] == package for m in c)]
    report = []
    for component in cycles:
        members = set(component)
        report.append(f"cycle of {len(component)} modules: {', '.join(component)}")
        report.append("  for instance " + " -> ".join(_a_cycle(graph, component)))
        for module in component:
            for target, sites in sorted(graph[module].items()):
                if target in members:
                    report += [f"  {module} -> {target}: {s}" for s in sites]
    assert not cycles, (
        f"{len(cycles)} import cycle(s) among the modules of {package}/ (imports inside "
        "functions count; `if TYPE_CHECKING:` imports do not): move what both sides need "
        "into a module below them, or pass it in\n" + "\n".join(report))


# --- test 3: factorize stays short -------------------------------------------------------------


def _find_function(module: str, name: str) -> tuple[str, ast.FunctionDef]:
    """The top-level ``def name`` that ``module.name`` is, following imports."""
    for stmt in tree(module).body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == name:
            return module, stmt
    owner = defining_module(module, name) if is_package(module) else None
    for imp in imports(module):
        for orig, asname in imp.names:
            if (asname or orig) == name and imp.module in modules():
                owner = imp.module
                name = orig
    if owner is None or owner == module:
        raise LookupError(f"no def {name} in {modules()[module]}")
    return _find_function(owner, name)


def test_factorize_body_is_short():
    module, func = _find_function("dnmf.api", "factorize")
    body = func.body
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]
    assert body, "factorize has no statements after its docstring"
    lines = modules()[module].read_text(encoding="utf-8").splitlines()
    first, last = body[0].lineno, func.end_lineno or body[-1].end_lineno or body[-1].lineno

    def counted(start: int, stop: int) -> int:
        return sum(1 for text in lines[start - 1:stop]
                   if text.strip() and not text.strip().startswith("#"))

    n = counted(first, last)
    longest = sorted(((counted(s.lineno, s.end_lineno or s.lineno), s.lineno,
                       lines[s.lineno - 1].strip()[:60]) for s in body), reverse=True)[:5]
    assert n <= FACTORIZE_MAX_LINES, (
        f"{site(module, func.lineno)}: factorize's body after its docstring is {n} lines "
        f"(lines {first}-{last}, blank and comment-only lines not counted), over "
        f"{FACTORIZE_MAX_LINES}: give its stages names of their own. Its longest statements:\n  "
        + "\n  ".join(f"line {line}: {size} lines  {text}" for size, line, text in longest))
