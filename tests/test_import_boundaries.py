"""The layers, as imports: read from the source of every module under ``src/idempo`` (its AST,
so function-level imports count and nothing is executed).

The rules (REVIEW §1.5, §7.3):

- ``idempo.core.*`` is pure: it imports nothing from idempo but ``idempo.core`` and
  ``idempo.errors``, imports no ``logging`` and reads no environment (``os.environ``,
  ``os.getenv``).
- ``idempo.stores.*`` imports only stores, the core, ``idempo.errors`` and
  ``idempo._primitives``: no engine driver (``idempo._async``/``_sync``), no façade, no adapter.
- An adapter (``idempo.asgi``, ``idempo.wsgi``, ``idempo.django``, ``idempo.fastapi``, each
  public ``idempo.consumers.<broker>``) imports no other adapter.
- A private name stays in its package. Take the dotted path of what an import reaches
  (``idempo.consumer._finish`` for ``from idempo.consumer import _finish``,
  ``idempo.stores._threaded`` for ``from idempo.stores import _threaded``) and its first
  component with a leading underscore (dunders such as ``__version__`` are public). What is
  before that component is the package that owns the name, and only modules inside that package
  may import it. So ``idempo.stores._rows`` (or a ``_name`` in ``idempo/stores/__init__.py``)
  serves every ``idempo.stores.*`` module; ``idempo._async.engine`` serves all of ``idempo``;
  ``_finish`` in the public module ``idempo.consumer`` is that module's alone.
- No import cycle among idempo modules, lazy imports included. Imports under
  ``if TYPE_CHECKING:`` never run, so they are left out of this rule (they count for the
  others). An import of ``a.b.c`` is an edge to ``a.b.c`` only: the implied import of the
  parent packages is how Python works, not a dependency the code chose.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

ADAPTERS = frozenset({"idempo.asgi", "idempo.wsgi", "idempo.django", "idempo.fastapi"})
STORE_MAY_IMPORT = ("idempo.stores", "idempo.core", "idempo.errors", "idempo._primitives")


@dataclass(frozen=True, slots=True)
class Import:
    """One idempo import: ``importer`` reaches module ``target`` (and ``name`` inside it)."""

    importer: str
    target: str
    name: str | None  # a name taken from ``target`` by ``from target import name``
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``

    @property
    def path(self) -> str:
        return self.target if self.name is None else f"{self.target}.{self.name}"

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.path}"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@functools.cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Every module under src/idempo: dotted name -> (file, is a package)."""
    found = {}
    for path in sorted((SRC / "idempo").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


class _Reader(ast.NodeVisitor):
    """Collects the idempo imports of one module, and whether each is for type checking only."""

    def __init__(self, module: str, is_package: bool, known: Iterable[str]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = frozenset(known)
        self.type_only = False
        self.found: list[Import] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        outer = self.type_only
        self.type_only = outer or guarded
        for child in node.body:
            self.visit(child)
        self.type_only = outer
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, None, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.known:  # `from pkg import module` imports that module
                self._add(submodule, None, node.lineno)
            else:
                self._add(source, alias.name, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        literal = (
            node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        )
        if isinstance(func, ast.Attribute) and func.attr == "import_module" and literal:
            arg = node.args[0]
            assert isinstance(arg, ast.Constant)
            self._add(arg.value, None, node.lineno)
        self.generic_visit(node)

    def _add(self, target: str, name: str | None, line: int) -> None:
        if within(target, "idempo"):
            self.found.append(Import(self.module, target, name, line, self.type_only))


def read_imports(module: str, is_package: bool, source: str, known: Iterable[str]) -> list[Import]:
    """The idempo imports in ``source``, the text of ``module``."""
    reader = _Reader(module, is_package, known)
    reader.visit(ast.parse(source))
    return reader.found


@functools.cache
def all_imports() -> tuple[Import, ...]:
    known = modules()
    found: list[Import] = []
    for name, (path, is_package) in known.items():
        found += read_imports(name, is_package, path.read_text(), known)
    return tuple(found)


def report(violations: Iterable[object]) -> str:
    return "\n".join(sorted(str(v) for v in violations))


# -- the reader itself ------------------------------------------------------------------------


def test_reader_sees_lazy_relative_typing_and_dynamic_imports() -> None:
    """The AST reader finds function-level, relative, TYPE_CHECKING and import_module imports."""
    source = """
from typing import TYPE_CHECKING
import importlib
from . import sibling
from .. import errors
from .sibling import _hidden, public

if TYPE_CHECKING:
    from idempo.core.records import Record

def later():
    import idempo.consumer
    return importlib.import_module("idempo.stores.memory")
"""
    known = {"idempo.stores.sibling", "idempo.errors", "idempo.stores.memory", "idempo.consumer"}
    found = read_imports("idempo.stores.thing", False, source, known)
    assert {(i.path, i.type_only) for i in found} == {
        ("idempo.stores.sibling", False),
        ("idempo.errors", False),
        ("idempo.stores.sibling._hidden", False),
        ("idempo.stores.sibling.public", False),
        ("idempo.core.records.Record", True),
        ("idempo.consumer", False),
        ("idempo.stores.memory", False),
    }


def test_every_module_is_read() -> None:
    """The walk covers the whole tree: the layers the rules name all exist."""
    names = set(modules())
    assert {"idempo", "idempo.core.records", "idempo.stores.base", "idempo.errors"} <= names
    assert names >= ADAPTERS
    assert len(all_imports()) > 100


def known_breach(why: str) -> pytest.MarkDecorator:
    """A rule the tree breaks today, fixed by the redesign in flight (REVIEW §7). Strict: once
    the tree keeps the rule, the pass fails this marker, and it goes."""
    return pytest.mark.xfail(strict=True, reason=why)


# -- the rules --------------------------------------------------------------------------------


def test_core_imports_only_core_and_errors() -> None:
    """``idempo.core`` is the bottom layer: it imports only itself and ``idempo.errors``."""
    bad = [
        i
        for i in all_imports()
        if within(i.importer, "idempo.core")
        and not (within(i.target, "idempo.core") or i.target == "idempo.errors")
    ]
    assert not bad, report(bad)


def test_core_neither_logs_nor_reads_the_environment() -> None:
    """``idempo.core`` is pure: no ``logging`` import, no ``os.environ``/``os.getenv``."""
    bad = []
    for name, (path, _) in modules().items():
        if not within(name, "idempo.core"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                bad += [
                    f"{name}:{node.lineno} imports {a.name}"
                    for a in node.names
                    if within(a.name, "logging")
                ]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                if within(node.module, "logging"):
                    bad.append(f"{name}:{node.lineno} imports from {node.module}")
                if node.module == "os" and {"environ", "getenv"} & {a.name for a in node.names}:
                    bad.append(f"{name}:{node.lineno} imports os.environ/os.getenv")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in {"environ", "getenv"}
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                bad.append(f"{name}:{node.lineno} reads os.{node.attr}")
    assert not bad, report(bad)


def test_stores_import_no_engine_facade_or_adapter() -> None:
    """A store knows the core, the errors and the paired primitives, nothing above it."""
    bad = [
        i
        for i in all_imports()
        if within(i.importer, "idempo.stores")
        and not any(within(i.target, allowed) for allowed in STORE_MAY_IMPORT)
    ]
    assert not bad, report(bad)


def adapters() -> frozenset[str]:
    brokers = {
        name
        for name in modules()
        if name.startswith("idempo.consumers.")
        and not name.rpartition(".")[2].startswith("_")
        and name.count(".") == 2
    }
    return ADAPTERS | brokers


def test_adapters_import_no_other_adapter() -> None:
    """Each framework or broker adapter stands alone on the shared layers below it."""
    every = adapters()
    bad = [
        i
        for i in all_imports()
        if any(within(i.importer, a) for a in every)
        and any(within(i.target, a) and not within(i.importer, a) for a in every)
    ]
    assert not bad, report(bad)


def owner(path: str) -> str | None:
    """The package a private name belongs to: what precedes the path's first ``_name``
    component (None if the path is public throughout)."""
    parts = path.split(".")
    for n, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:n])
    return None


def test_owner_of_private_names() -> None:
    """The rule of the module docstring, on the examples it gives."""
    assert owner("idempo.stores._rows.row_to_record") == "idempo.stores"
    assert owner("idempo.stores._threaded") == "idempo.stores"
    assert owner("idempo._async.engine.AsyncEngine") == "idempo"
    assert owner("idempo.consumer._finish") == "idempo.consumer"
    assert owner("idempo.client._policy._DEFAULT_TIMEOUT") == "idempo.client"
    assert owner("idempo.__version__") is None
    assert owner("idempo.core.records.Record") is None


def test_no_private_name_leaves_its_package() -> None:
    """A ``_name`` (a private module, or a private name in a module) is imported only from
    inside the package that owns it."""
    bad = []
    for i in all_imports():
        package = owner(i.path)
        if package is not None and not within(i.importer, package):
            bad.append(f"{i} (private to {package})")
    assert not bad, report(bad)


def cycles(edges: dict[str, set[str]]) -> Iterator[list[str]]:
    """The strongly connected components with more than one module, or a self-import
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in edges.get(node, ()):
                        yield sorted(component)


def test_cycle_finder() -> None:
    """The cycle finder finds a three-module ring and a self-import, and nothing in a DAG."""
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(ring)) == [["a", "b", "c"], ["e"]]
    assert list(cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()})) == []


def test_no_import_cycle() -> None:
    """No two idempo modules import each other, directly or through others, lazily or not."""
    edges: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], Import] = {}
    known = modules()
    for i in all_imports():
        if i.type_only or i.target not in known:
            continue
        edges.setdefault(i.importer, set()).add(i.target)
        lines.setdefault((i.importer, i.target), i)
    found = []
    for component in cycles(edges):
        members = set(component)
        inside = [str(imp) for (a, b), imp in lines.items() if a in members and b in members]
        found.append(" <-> ".join(component) + ":\n    " + "\n    ".join(sorted(inside)))
    assert not found, "\n".join(found)
