"""The package's import structure: no import cycle, the layering rule, torch-free modules, algorithm-free modules.

The import graph is read from the source with ``ast``, nothing is imported. An edge ``a -> b`` is any
``import``/``from ... import`` of ``b`` in ``a``, at module level or inside a function (both count: a function-level
import closes a cycle as surely when it runs), relative imports resolved, ``from pkg import name`` pointing at
``pkg.name`` where that is a module and at ``pkg`` otherwise. Imports under ``if TYPE_CHECKING:`` never run and
do not count, nor does the implicit import of a module's parent packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.imports import HEAVY, heavy_imports_after

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedbrick_flower"
# Leaf modules below every layer: they import nothing from the package (asserted below).
FOUNDATION = {"fedbrick_flower.cache"}
# Modules that must load without torch (and so must every module their module-level imports reach).
TORCH_FREE = ("fedbrick_flower.scenario.schema", "fedbrick_flower.models.families", "fedbrick_flower.models.spec")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Ids of the nodes under ``if TYPE_CHECKING:`` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for statement in node.body for child in ast.walk(statement)}
    return skipped


def _module_level(tree: ast.AST) -> list[ast.AST]:
    """The nodes that run when the module is imported: everything outside function bodies."""
    found, queue = [], [tree]
    while queue:
        node = queue.pop()
        found.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            queue += ast.iter_child_nodes(node)
    return found


def _package_module(dotted: str) -> str:
    """The longest prefix of ``dotted`` that is a module of the package (``pkg.name`` of an attribute -> ``pkg``)."""
    while dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted


def _imports(name: str, *, module_level_only: bool = False) -> tuple[set[str], set[str]]:
    """(modules of the package, top-level names of outside packages) that module ``name`` imports."""
    path, is_package = MODULES[name]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    nodes = _module_level(tree) if module_level_only else ast.walk(tree)
    package = name if is_package else name.rpartition(".")[0]
    inside, outside = set(), set()
    for node in nodes:
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "fedbrick_flower":
                inside.add(_package_module(target))
            else:
                outside.add(target.split(".")[0])
    inside.discard(name)
    return inside, outside


GRAPH = {name: _imports(name)[0] for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([*component, node]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _layer(name: str) -> str:
    return name.split(".")[1] if name.count(".") >= 1 else name


def test_the_cycle_finder_finds_a_cycle() -> None:
    # Prepare: a -> b -> c -> a, and d -> a outside the cycle
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    # Execute / Assert
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_resolves_relative_and_function_level_imports() -> None:
    # Assert: server_app imports `from .strategies.build import build_strategy` (module level), the pre-flight
    # imports the strategy builder inside a function, the scenario schema imports `from ..models.spec import ...`
    assert "fedbrick_flower.strategies.build" in GRAPH["fedbrick_flower.server_app"]
    assert "fedbrick_flower.strategies.build" in GRAPH["fedbrick_flower.preflight"]
    assert "fedbrick_flower.models.spec" in GRAPH["fedbrick_flower.scenario.schema"]


def test_the_package_has_no_import_cycle() -> None:
    # Execute
    cycles = _cycles(GRAPH)

    # Assert
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_foundation_modules_import_nothing_from_the_package() -> None:
    for name in FOUNDATION:
        assert GRAPH[name] == set(), name


@pytest.mark.parametrize(("layer", "allowed"), [("models", {"models"}), ("adapters", {"adapters", "models"})])
def test_models_and_adapters_import_nothing_above_them(layer: str, allowed: set[str]) -> None:
    # Execute
    above = {
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _layer(name) == layer
        for target in targets
        if _layer(target) not in allowed and target not in FOUNDATION
    }

    # Assert
    assert above == set()


def test_the_report_imports_no_strategy() -> None:
    # Assert
    assert {target for target in GRAPH["fedbrick_flower.report"] if _layer(target) == "strategies"} == set()


@pytest.mark.parametrize("name", TORCH_FREE)
def test_torch_free_modules_reach_no_heavy_import(name: str) -> None:
    # Prepare: what loading `name` runs: its module-level imports, theirs, and the packages above each of them
    reached, queue = set(), [name]
    while queue:
        module = queue.pop()
        if module in reached:
            continue
        reached.add(module)
        parts = module.split(".")
        queue += [".".join(parts[:depth]) for depth in range(1, len(parts))]
        queue += _imports(module, module_level_only=True)[0]

    # Execute
    heavy = {f"{module}: {outside}" for module in reached for outside in _imports(module, module_level_only=True)[1]
             if outside in HEAVY}  # fmt: skip

    # Assert
    assert heavy == set()


def test_importing_the_model_families_loads_no_torch() -> None:
    assert heavy_imports_after("import fedbrick_flower.models.families") == []


# ------------------------------------------------------------------------------------------------ algorithm names
ALGORITHM_NAMES = re.compile(
    r"(?<![a-z])(fedbip|fedmosaic|fedbrick|flora|flexlora|hetlora|h2tune|fedsa)(?![a-z])", re.I
)
# The package's own name in identifiers, paths and markers: not the algorithm.
PACKAGE_WORDS = re.compile(r"fedbrick[-_]flower|FEDBRICK_[A-Z_]+|\.fedbrick-complete|fedbrick_global_layer_indices")
CITATION = re.compile(r"et al\.|arxiv\.org|doi\.org")
# Shared modules that must name no algorithm (an algorithm's knowledge lives in its own modules and registry entry).
ALGORITHM_FREE = (
    "scenario",
    "preflight.py",
    "models",
    "records.py",
    "report.py",
    "leaderboard/compare.py",
    "metrics.py",
)


def _algorithm_mentions(text: str) -> list[str]:
    """``"LINE: text"`` of each line that names an algorithm, other than lines citing a paper."""
    return [
        f"{number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), start=1)
        if ALGORITHM_NAMES.search(PACKAGE_WORDS.sub("", line)) and not CITATION.search(line)
    ]


def test_the_name_finder_tells_an_algorithm_from_the_package() -> None:
    # Prepare
    text = (
        "from fedbrick_flower.models import stack  # the package\n"
        "MARKER = '.fedbrick-complete'\n"
        "# FedMosaic: Seo et al., ICLR 2026\n"
        "RULE = 'fedmosaic'\n"
        "# as in FedBRICK's BRICKs\n"
    )

    # Execute
    mentions = _algorithm_mentions(text)

    # Assert
    assert mentions == ["4: RULE = 'fedmosaic'", "5: # as in FedBRICK's BRICKs"]


@pytest.mark.parametrize("part", ALGORITHM_FREE)
def test_shared_modules_name_no_algorithm(part: str) -> None:
    # Prepare
    target = PACKAGE / part
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]

    # Execute
    mentions = [f"{path.relative_to(ROOT)}:{m}" for path in files for m in _algorithm_mentions(path.read_text())]

    # Assert
    assert files and mentions == [], "\n".join(mentions)
