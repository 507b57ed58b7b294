"""The shape every module copies: registry, twins, parity, file sizes, import graph, manifest."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import click
import pytest

import pgshield
from pgshield import _twin
from pgshield.cli import main as cli_main
from pgshield.modules import MODULES, Module, load
from pgshield.rate_limit import AsyncRateLimiter, RateLimiter
from pgshield.resources import MODULE_ORDER

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "python" / "pgshield"
MAX_PY_LINES = 500
MAX_SQL_LINES = 2000
WITH_NAMESPACE = [m for m in MODULES if m.namespace]


def public(cls: type) -> dict[str, object]:
    return {
        n: getattr(cls, n) for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))
    }


def comparable(func: object) -> inspect.Signature:
    """A signature with the connection's type left out (it is the one thing twins differ in)."""
    sig = inspect.signature(func)  # type: ignore[arg-type]
    params = [
        p.replace(annotation=inspect.Parameter.empty) if p.name == "conn" else p
        for p in sig.parameters.values()
    ]
    return sig.replace(parameters=params)


def assert_twins(sync_cls: type, async_cls: type, *, skip: tuple[str, ...] = ()) -> None:
    sync, asyn = public(sync_cls), public(async_cls)
    assert set(sync) - set(skip) == set(asyn) - set(skip), (sync_cls, async_cls)
    for name in sorted(set(sync) - set(skip)):
        s, a = sync[name], asyn[name]
        assert inspect.iscoroutinefunction(a), f"{async_cls.__name__}.{name} is not awaitable"
        assert not inspect.iscoroutinefunction(s), f"{sync_cls.__name__}.{name} is async"
        assert comparable(s) == comparable(a), f"{name}: {comparable(s)} != {comparable(a)}"
        assert inspect.getdoc(s), f"{sync_cls.__name__}.{name} has no docstring"
        assert inspect.getdoc(s) == inspect.getdoc(a), f"{name}: docstrings differ"


# -------------------------------------------------------------- registry ----
def test_registry_names_are_unique_and_ordered_like_the_migrations() -> None:
    names = [m.name for m in MODULES]
    assert len(set(names)) == len(names) and names[0] == "core"
    assert tuple(names) == MODULE_ORDER
    namespaces = [m.namespace for m in WITH_NAMESPACE]
    assert len(set(namespaces)) == len(namespaces)


@pytest.mark.parametrize("client", [pgshield.Shield, pgshield.AsyncShield])
def test_clients_have_exactly_the_registered_namespaces(client: type) -> None:
    declared = {n for n, v in vars(client).items() if isinstance(v, pgshield.namespace.namespace)}
    assert declared == {m.namespace for m in WITH_NAMESPACE}
    for module in WITH_NAMESPACE:
        assert module.classes
        want = module.classes[0] if client is pgshield.Shield else module.classes[1]
        assert getattr(client, module.namespace).cls.__name__ == want  # type: ignore[arg-type]


# ----------------------------------------------------------------- twins ----
@pytest.mark.parametrize("source", [s for s, _ in _twin.sources()], ids=lambda p: p.parent.name)
def test_async_twin_is_generated_from_the_current_source(source: Path) -> None:
    target = source.with_name("methods_async.py")
    assert target.read_text() == _twin.twin(source.read_text(), target), (
        f"{target} is out of date: run python -m pgshield._twin"
    )


@pytest.mark.parametrize("module", WITH_NAMESPACE, ids=lambda m: m.name)
def test_sync_and_async_namespaces_are_twins(module: Module) -> None:
    assert module.package and module.classes
    package = __import__(module.package, fromlist=["_"])
    sync_cls, async_cls = (getattr(package, c) for c in module.classes)
    assert_twins(sync_cls, async_cls)
    assert public(sync_cls), "a namespace without methods"


def test_clients_are_twins() -> None:
    # Both clients: the same public methods (call, close, version, ...) with the same docs.
    skip = ("call",)  # documented once on each core class; same signature, checked below
    assert_twins(pgshield.Shield, pgshield.AsyncShield, skip=skip)
    assert comparable(pgshield.Shield.call) == comparable(pgshield.AsyncShield.call)


def test_limiters_are_twins() -> None:
    assert_twins(RateLimiter, AsyncRateLimiter)


def test_plumbing_stays_private() -> None:
    for cls in (pgshield.Shield, pgshield.AsyncShield):
        names = set(public(cls))
        assert not names & {"backoff", "preamble", "owns_transaction"}, names


# ---------------------------------------------------------- size, imports ----
def python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_files_stay_small() -> None:
    big = [
        f"{p.relative_to(REPO)}: {n}"
        for p in python_files()
        if (n := len(p.read_text().splitlines())) >= MAX_PY_LINES
    ]
    big += [
        f"{p.relative_to(REPO)}: {n}"
        for p in sorted((REPO / "sql").rglob("*.sql"))
        if (n := len(p.read_text().splitlines())) >= MAX_SQL_LINES
    ]
    assert not big, "split these files: " + ", ".join(big)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """pgshield module -> the pgshield modules it imports anywhere (lazy imports included)."""
    modules = {module_name(p): p for p in python_files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "pgshield.shield" in graph["pgshield"], "the import graph looks empty"
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # The package root re-exports everything; a cycle through it is still a cycle.
    assert not cycles, cycles


# -------------------------------------------------------------- manifest ----
def cli_commands(group: click.Group) -> dict[str, click.Command]:
    return dict(group.commands)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_every_piece_of_a_module_exists(module: Module) -> None:
    name = module.name
    split = sorted((REPO / "sql" / name).glob("*.sql"))
    assert (REPO / "sql" / f"{name}.sql").is_file() != bool(split), f"sql/{name}.sql or sql/{name}/"
    creates = [p.name for p in (REPO / "migrations").glob(f"*_create_*{name}.sql")]
    assert creates, f"no migrations/<ts>_create_{name}.sql"
    if module.package:
        folder = REPO / "python" / Path(*module.package.split("."))
        for piece in ("__init__", "methods", "methods_async", "ops", "results"):
            assert (folder / f"{piece}.py").is_file(), f"{module.package}.{piece}"
    if module.cli:
        group = load(module.cli)
        assert isinstance(group, click.Group)
        assert cli_commands(cli_main).get(group.name or "") is group, "CLI group not registered"
        assert (REPO / "python" / "pgshield" / "cli" / f"{name}.py").is_file()
    assert module.demo and callable(load(module.demo)), "a demo section"
    if module.namespace:
        page = module.docs or name
        assert (REPO / "docs" / f"{page}.md").is_file(), f"docs/{page}.md"
    if module.readme:
        readme = (REPO / "README.md").read_text()
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        assert start in readme and end in readme, f"README markers for {name}"
        assert readme.index(start) < readme.index(end)
    assert module.pgtap
    tap = list((REPO / "tests" / "pgtap").glob(f"[0-9][0-9]_{module.pgtap}_*.sql"))
    assert tap, f"tests/pgtap/<NN>_{module.pgtap}_*.sql"
    if module.package:
        tests = list((REPO / "tests").glob(f"test_{name}*.py"))
        assert tests, f"tests/test_{name}*.py"


def test_docs_and_readme_use_the_namespaced_names() -> None:
    # 0.2.0 moved every module's methods into its namespace: no stale flat names in the docs.
    stale = re.compile(
        r"\bshield\.(rate_limit|check|peek_check|record_usage|merge_jsonb|jsonb_targets)\("
    )
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        found = stale.findall(path.read_text())
        assert not found, f"{path.name}: {found}"
