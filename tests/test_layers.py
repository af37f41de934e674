"""The architecture rule of DESIGN.md, checked on the source: imports only point down the
layers, no package or module import cycles, no private name used across modules.

Every ``import`` statement counts, also those inside functions (they run too)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "biomip"

# design layer of each top-level package (DESIGN.md, "Layers"); higher may import lower
LAYERS = {
    "core": 0,
    "io": 1, "ops": 1,
    "nn": 2, "metrics": 2, "data": 2,
    "learn": 3,
    "segment": 4, "register": 4, "reconstruct": 4, "generate": 4, "represent": 4, "features": 4,
    "pipelines": 5,
    "cli": 6, "app": 6, "batch": 6,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _resolve(importer: str, is_pkg: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imports(name: str, path: Path):
    """(target module, imported names) for every import in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "biomip" or a.name.startswith("biomip."):
                    yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, is_pkg, node.level, node.module)
            if target == "biomip" or target.startswith("biomip."):
                names = [a.name for a in node.names]
                # `from pkg import submodule` imports the submodule
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
                if subs:
                    for s in subs:
                        yield s, []
                    rest = [n for n in names if f"{target}.{n}" not in MODULES]
                    if rest:
                        yield target, rest
                else:
                    yield target, names


def _top(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def _edges():
    out = []
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            out.append((name, target, names))
    return out


EDGES = _edges()


def test_every_package_has_a_layer():
    tops = {_top(m) for m in MODULES if _top(m) and (SRC / _top(m)).is_dir()}
    assert tops - set(LAYERS) == set(), "add the new package to LAYERS (and to DESIGN.md)"


def upward_imports(edges) -> list[str]:
    bad = []
    for src, dst, _ in edges:
        a, b = _top(src), _top(dst)
        if a is None or b is None or a == b or a not in LAYERS or b not in LAYERS:
            continue                    # the biomip facade itself, or within one package
        if LAYERS[b] > LAYERS[a]:
            bad.append(f"{src} (layer {LAYERS[a]}) imports {dst} (layer {LAYERS[b]})")
    return bad


def private_imports(edges) -> list[str]:
    bad = []
    for src, dst, names in edges:
        if dst == src:
            continue
        for n in names:
            if n.startswith("_") and not n.startswith("__"):
                bad.append(f"{src} imports {n} from {dst}")
        # a private module may be used only inside its own package
        parts = dst.split(".")
        for i, p in enumerate(parts):
            if p.startswith("_") and not p.startswith("__"):
                owner = ".".join(parts[:i])
                if not (src == owner or src.startswith(owner + ".")):
                    bad.append(f"{src} imports the private module {dst}")
    return bad


def package_graph(edges) -> dict[str, set[str]]:
    g = defaultdict(set)
    for src, dst, _ in edges:
        a, b = _top(src), _top(dst)
        if a and b and a != b:
            g[a].add(b)
    return g


def module_graph(edges) -> dict[str, set[str]]:
    g = defaultdict(set)
    for src, dst, _ in edges:
        if dst in MODULES and dst != src and MODULES[dst].name != "__init__.py":
            g[src].add(dst)
    return g


def test_imports_point_down_the_layers():
    bad = upward_imports(EDGES)
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_package_cycles():
    assert _cycles(package_graph(EDGES)) == []


def test_no_module_cycles():
    assert _cycles(module_graph(EDGES)) == []


def test_no_private_names_across_modules():
    bad = private_imports(EDGES)
    assert not bad, "\n".join(bad)


def test_the_checks_catch_violations():
    """The rules are not vacuous: made-up upward, cyclic and private imports are caught."""
    up = [("biomip.core.image", "biomip.segment.cluster", []), ("biomip.nn.unet", "biomip.core.errors", [])]
    assert upward_imports(up) == ["biomip.core.image (layer 0) imports biomip.segment.cluster (layer 4)"]
    cyc = [("biomip.data.pairs", "biomip.register.transforms", []), ("biomip.register.demons", "biomip.data", [])]
    assert _cycles(package_graph(cyc)) == [["data", "register"]]
    priv = [("biomip.register.demons", "biomip.ops._fieldkernels", []),
            ("biomip.ops.spatial", "biomip.ops._fieldkernels", []),
            ("biomip.metrics.distance", "biomip.metrics.overlap", ["_prepare_pair", "dice"])]
    assert private_imports(priv) == ["biomip.register.demons imports the private module biomip.ops._fieldkernels",
                                     "biomip.metrics.distance imports _prepare_pair from biomip.metrics.overlap"]
    assert _resolve("biomip.segment.train", False, 2, "nn.unet") == "biomip.nn.unet"
    assert _resolve("biomip.segment", True, 1, "cluster") == "biomip.segment.cluster"
