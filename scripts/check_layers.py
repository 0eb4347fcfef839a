"""The layer contract of deepfeat, checked over every import -- function-level (lazy) ones included.

Three rules over the import graph of ``src/deepfeat`` (imports under ``if TYPE_CHECKING:`` are
type annotations, not dependencies, and are left out):

1. **No cycle** between modules. A lazy import inside a function is a dependency like any other: it
   only moves the moment the cycle bites.
2. **Layers**: a module imports only from its own layer or the layers below it (:data:`LAYERS`,
   bottom first; docs/ARCHITECTURE.md explains them).
3. **A lazy import defers something**: an import of a deepfeat module inside a function must put
   off a heavy third-party package (:data:`HEAVY`) that the importing module does not load
   already; otherwise it belongs at the top of the file. The command line (``deepfeat.cli``,
   ``deepfeat._console``) is exempt: it is the boundary where start-up time is decided.

    python scripts/check_layers.py            # exit 1 and the offending imports on a violation
    python scripts/check_layers.py --graph    # every module's dependencies

Used by ``make lint`` and by ``tests/test_layers.py`` (which also plants a lazy cycle and a layer
violation in a throw-away package to prove the check catches them).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path

#: Bottom first. A module belongs to the first layer with a prefix of its name (``deepfeat.x`` matches
#: ``deepfeat.x`` and ``deepfeat.x.*``); the rest of the package is the top layer (``cli``, the API).
LAYERS: list[tuple[str, ...]] = [
    (
        "deepfeat._version",
        "deepfeat.errors",
        "deepfeat.registry",
        "deepfeat.units",
        "deepfeat.params",
        "deepfeat.interrupts",
        "deepfeat.progress",
        "deepfeat.cachedir",
        "deepfeat.apidefaults",
        "deepfeat.agreement",
        "deepfeat.devices",
        "deepfeat.bundle_header",
        "deepfeat.configfile",
    ),
    ("deepfeat.data", "deepfeat.store"),
    (
        "deepfeat.sources",
        "deepfeat.models",
        "deepfeat.heads",
        "deepfeat.moments",
        "deepfeat.history",
        "deepfeat.checkpoint",
        "deepfeat.loop",
        "deepfeat.trainrows",
    ),
    ("deepfeat.runtimes",),
    ("deepfeat.engines",),
]


#: third-party packages worth deferring (import time or memory), the only reason for a lazy import
HEAVY = frozenset(
    {
        "torch",
        "torchvision",
        "timm",
        "openvino",
        "onnxruntime",
        "onnx",
        "sklearn",
        "scipy",
        "matplotlib",
        "ray",
        "datasets",
        "huggingface_hub",
        "safetensors",
        "h5py",
        "webdataset",
        "numpy",
        "pyarrow",
        "PIL",
        "yaml",
        "tqdm",
        "fsspec",
        "s3fs",
        "gcsfs",
        "adlfs",
    }
)
#: modules whose lazy imports are the start-up boundary
LAZY_EXEMPT = ("deepfeat.cli", "deepfeat._console")


def _modules(root: Path) -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> list[tuple[ast.stmt, list[str], bool]]:
    """(statement, imported names resolved to modules or packages, at module level) of every import
    outside ``if TYPE_CHECKING:``."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    inside = {id(n) for f in functions for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.ImportFrom):
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            target = (
                (node.module or "")
                if node.level == 0
                else ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            )
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
        else:
            names = [a.name for a in node.names]
        out.append((node, names, id(node) not in inside))
    return out


Imports = dict[str, list[tuple[ast.stmt, list[str], bool]]]


def parse_imports(root: Path) -> Imports:
    """{module: its imports (see :func:`_imports`)} for the package at ``root``: every file parsed once."""
    mods = _modules(root)
    return {m: _imports(m, p, mods) for m, p in sorted(mods.items())}


def lazy_without_reason(root: Path, found: Imports | None = None) -> list[str]:
    """``module:line`` of lazy deepfeat imports that defer no :data:`HEAVY` package (rule 3)."""
    found = parse_imports(root) if found is None else found
    mods = set(found)
    top_deps = {m: {n for _, names, top in imps if top for n in names if n in mods} for m, imps in found.items()}
    top_heavy = {
        m: {n.split(".")[0] for _, names, top in imps if top for n in names if n.split(".")[0] in HEAVY}
        for m, imps in found.items()
    }
    memo: dict[str, set[str]] = {}

    def heavy(m: str) -> set[str]:  # what importing m loads (its parents' imports included)
        if m not in memo:
            memo[m] = set()
            parents = [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]
            memo[m] = set(top_heavy[m]).union(*(heavy(d) for d in [*top_deps[m], *parents] if d in mods))
        return memo[m]

    bad = []
    for m, imps in sorted(found.items()):
        if m.startswith(LAZY_EXEMPT):
            continue
        for node, names, top in imps:
            for n in names:
                if not top and n in mods and not heavy(n) - heavy(m):
                    bad.append(
                        f"{m}:{node.lineno} imports {n} inside a function, deferring no heavy package "
                        "(move it to the top of the file)"
                    )
    return bad


def module_graph(root: Path, found: Imports | None = None) -> dict[str, dict[str, int]]:
    """{module: {imported module: first line}} for the package at ``root`` (lazy imports included)."""
    found = parse_imports(root) if found is None else found
    graph: dict[str, dict[str, int]] = {}
    for mod, imports in found.items():
        deps: dict[str, int] = {}
        for node, names, _ in imports:
            for n in names:
                if n in found and n != mod:
                    deps[n] = min(deps.get(n, node.lineno), node.lineno)
        graph[mod] = deps
    return graph


def layer_of(module: str, layers: Sequence[Sequence[str]] = LAYERS) -> int:
    for i, prefixes in enumerate(layers):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return len(layers)


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_violations(graph: dict[str, dict[str, int]], layers: Sequence[Sequence[str]] = LAYERS) -> list[str]:
    """``module:line imports higher`` for every import of a higher layer."""
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep, line in sorted(deps.items()):
            if layer_of(dep, layers) > layer_of(mod, layers):
                bad.append(f"{mod}:{line} imports {dep} (layer {layer_of(dep, layers)} above {layer_of(mod, layers)})")
    return bad


def check(root: Path, layers: Sequence[Sequence[str]] = LAYERS) -> list[str]:
    """Every problem found in the package at ``root`` (an empty list: the contract holds)."""
    found = parse_imports(root)
    graph = module_graph(root, found)
    problems = []
    for comp in find_cycles(graph):
        edges = [f"{m} -> {d} (line {graph[m][d]})" for m in comp for d in graph[m] if d in comp]
        problems.append(f"import cycle of {len(comp)} modules: " + "; ".join(edges))
    return problems + layer_violations(graph, layers) + lazy_without_reason(root, found)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parent.parent / "src" / "deepfeat"))
    ap.add_argument("--graph", action="store_true")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.graph:
        for mod, deps in module_graph(root).items():
            print(f"{mod} [{layer_of(mod)}]: {', '.join(sorted(deps)) or '-'}")
    problems = check(root)
    for p in problems:
        print(p)
    n = len(_modules(root))
    print(
        f"layers: {n} modules, {len(problems)} problem(s)"
        if problems
        else f"layers: {n} modules, no cycle, no layer violation (lazy imports counted)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
