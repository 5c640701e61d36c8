"""The package's layers, checked on the source (AST only: nothing is imported, no dependency).

prunekit is drawn as a stack of layers; a module may import its own layer and the layers below
it, never one above, so each layer can be read, tested and reused without the ones on top:

    bottom:  registry, params, io, timing, device, distributed, native (stdlib, torch, numpy only)
    core < {data, models} < training < structured < methods < artifacts < export
         < pipelines < experiments < cli

``{data, models}`` are peers: neither imports the other. ``prunekit/__init__.py`` and
``__main__.py`` may import anything (they are the entry points, not layers).

Three more rules keep the graph honest:

- no import cycle between modules (a cycle works only by import order, and hides which module
  is the lower one);
- no import inside a function of a prunekit module or of a light package: a hidden import hides
  a real edge of the graph (and a cycle). Only the heavy *optional* packages in ``LAZY_OK`` may
  be imported where they are used, so that ``import prunekit`` does not pay for them;
- the bottom modules import nothing but the standard library, torch and numpy (and each other),
  besides a LAZY_OK package inside a function.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "prunekit"

BOTTOM = ("registry", "params", "io", "timing", "device", "distributed", "native")
# Lowest first; names in one tuple are peers (same rank, must not import each other).
LAYERS: List[Tuple[str, ...]] = [
    BOTTOM,
    ("core",),
    ("data", "models"),
    ("training",),
    ("structured",),
    ("methods",),
    # The design drew {artifacts, export} as peers; export.bench_model loads model files with
    # artifacts.load_model, so artifacts sits just below export.
    ("artifacts",),
    ("export",),
    ("pipelines",),
    ("experiments",),
    ("cli",),
]
ENTRY_POINTS = {"prunekit", "prunekit.__main__"}  # may import anything
BOTTOM_MAY_IMPORT = {"torch", "numpy"}  # besides the standard library and each other

# Packages that may be imported inside a function: optional, or heavy and rarely needed, so
# paid only when used (times measured on the 2-core dev machine, after torch, under load).
# torch_pruning (a required dependency, ~30 ms after torch) and tqdm are imported at the top.
LAZY_OK = {
    "ray": "optional extra (prunekit[ray]), only for the Ray executor; ~0.4 s to import",
    "transformers": "optional, not a dependency; heavy import",
    "sentence_transformers": "optional, not a dependency; heavy import",
    "safetensors": "optional (installed with transformers); only Hugging Face model folders use it",
    "torchvision": "optional (torchvision models only; the [vision] extra)",
    "timm": "optional, not a dependency; heavy import",
    "PIL": "optional extra (prunekit[images]); only image-folder datasets need it",
    "matplotlib": "plots only; ~0.7 s (pyplot ~1.5 s) to import",
    "torch.utils.cpp_extension": "~1.4 s to import (setuptools); only when prunekit.native builds a kernel",
    "ninja": "only to put its binary on PATH when prunekit.native builds a kernel",
}


def _lazy_ok(target: str) -> bool:
    """``target`` is, or is inside, a package of LAZY_OK (keys may be dotted: torch.utils.cpp_extension)."""
    return any(target == key or target.startswith(key + ".") for key in LAZY_OK)



@dataclass(frozen=True)
class Import:
    file: str      # path relative to src/, for messages
    line: int
    importer: str  # dotted module name
    target: str    # dotted name of the imported module (a prunekit module when internal)
    in_function: bool

    def where(self) -> str:
        return f"src/{self.file}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


ALL_MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _in_function(node: ast.AST, parents: Dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def scan() -> List[Import]:
    """Every import statement under src/prunekit, one ``Import`` per imported module.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(importer, path.name == "__init__.py", node)
                submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in ALL_MODULES]
                targets = submodules or [base]
            else:
                continue
            for target in targets:
                found.append(Import(str(path.relative_to(SRC)), node.lineno, importer, target,
                                    _in_function(node, parents)))
    return found


IMPORTS = scan()


def is_internal(name: str) -> bool:
    return name == "prunekit" or name.startswith("prunekit.")


def rank(module: str) -> Optional[Tuple[int, str]]:
    """(layer index, top-level part) of a prunekit module; None for the entry points."""
    if module in ENTRY_POINTS:
        return None
    top = module.split(".")[1]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index, top
    raise AssertionError(f"{module} is in no layer: add prunekit.{top} to LAYERS in {__file__}")


def test_every_module_has_a_layer():
    assert ALL_MODULES, f"no prunekit module found under {SRC}"
    layered = {m: rank(m) for m in ALL_MODULES}   # rank() names a module that is in no layer
    assert all(layered[m] is not None for m in ALL_MODULES if m not in ENTRY_POINTS)
    assert {index for index, _ in filter(None, layered.values())} == set(range(len(LAYERS)))


def test_imports_only_go_down():
    errors = []
    for imp in IMPORTS:
        if not is_internal(imp.target) or imp.importer in ENTRY_POINTS:
            continue
        if imp.target == "prunekit":
            continue  # the package root (``__version__``): always loaded before any submodule
        (low, own), (high, other) = rank(imp.importer), rank(imp.target)
        if high > low:
            errors.append(f"{imp.where()}: {imp.importer} imports {imp.target}, a higher layer "
                          f"(rule: imports go down; {own} is below {other})")
        elif high == low and own != other and LAYERS[low] != BOTTOM:
            errors.append(f"{imp.where()}: {imp.importer} imports {imp.target}, a peer layer "
                          f"(rule: {own} and {other} must not import each other)")
    assert not errors, "layer violations:\n" + "\n".join(errors)


def test_bottom_modules_import_only_stdlib_torch_numpy():
    errors = []
    for imp in IMPORTS:
        if imp.importer.split(".")[-1] not in BOTTOM or imp.importer.count(".") != 1:
            continue
        top = imp.target.split(".")[0]
        if is_internal(imp.target):
            if imp.target.count(".") != 1 or imp.target.split(".")[1] not in BOTTOM:
                errors.append(f"{imp.where()}: bottom module {imp.importer} imports {imp.target} "
                              "(rule: bottom modules import only each other)")
        elif imp.in_function and _lazy_ok(imp.target):
            continue  # an optional package imported where it is used (ninja, when a kernel is built)
        elif top not in sys.stdlib_module_names and top not in BOTTOM_MAY_IMPORT and top != "__future__":
            errors.append(f"{imp.where()}: bottom module {imp.importer} imports {imp.target} "
                          "(rule: bottom modules import only the standard library, torch and numpy)")
    assert not errors, "\n".join(errors)


def hidden_imports() -> List[Import]:
    """Function-level imports that the rules forbid (LAZY_OK packages aside)."""
    return [imp for imp in IMPORTS if imp.in_function and not _lazy_ok(imp.target)]


def test_no_function_level_imports():
    errors = []
    for imp in hidden_imports():
        errors.append(f"{imp.where()}: {imp.importer} imports {imp.target} inside a function "
                      "(rule: import at module top; only the heavy optional packages in "
                      "LAZY_OK may be imported where they are used)")
    assert not errors, f"{len(errors)} function-level imports:\n" + "\n".join(errors)


def import_graph() -> Dict[str, Dict[str, Import]]:
    """importer -> {imported prunekit module -> the first import statement making that edge}."""
    graph: Dict[str, Dict[str, Import]] = {m: {} for m in ALL_MODULES}
    for imp in IMPORTS:
        if is_internal(imp.target) and imp.target in ALL_MODULES and imp.target != imp.importer:
            graph[imp.importer].setdefault(imp.target, imp)
    return graph


def find_cycles(graph: Dict[str, Dict[str, Import]]) -> List[List[str]]:
    """One cycle per back edge met by a depth-first search (enough to show every knot)."""
    cycles, state, stack = [], {}, []  # state: 1 = on the stack, 2 = done

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles():
    graph = import_graph()
    errors = []
    for cycle in find_cycles(graph):
        path = " -> ".join(f"{a} ({graph[a][b].where()})" for a, b in zip(cycle, cycle[1:]))
        errors.append(f"{path} -> {cycle[-1]}")
    assert not errors, "import cycles (rule: no cycles):\n" + "\n".join(errors)



def test_the_checker_sees_a_cycle_and_a_function_level_import():
    """The rules above would pass vacuously if the scan saw nothing: check it on known input."""
    graph = {"a": {"b": None}, "b": {"c": None}, "c": {"a": None}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert any(i.in_function for i in IMPORTS if _lazy_ok(i.target))
    assert any(i.importer == "prunekit.cli.main" and is_internal(i.target) for i in IMPORTS)
