"""The package's shape, as docs/ARCHITECTURE.md draws it: one direction of flow between layers, no private names
imported across modules, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "lcssm"

#: the layers, lowest first; a module may import its own layer and those before it
LAYERS = (
    ("errors", "tensors", "files", "device", "distributed", "config"),
    ("data",),
    ("noise_table", "sde", "noise_levels"),
    ("objectives", "diffusion"),
    ("models",),
    ("training",),
    ("sampling",),
    ("metrics",),
    ("plots",),
    ("experiments",),
    ("cli", "reproduce", "bench"),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every lcssm import in ``path``, at any depth (lazy imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lcssm":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "lcssm"]
    return found


def _top(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if _top(p) in RANK)


def test_every_top_level_module_has_a_layer():
    tops = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert tops - {"__init__", "__main__"} <= set(RANK), sorted(tops - set(RANK) - {"__init__", "__main__"})


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for path in _modules():
        for line, module, names in _imports(path):
            targets = [f"lcssm.{n}" for n in names] if module == "lcssm" else [module]
            for target in targets:
                parts = target.split(".")
                if len(parts) > 1 and parts[1] in RANK and RANK[parts[1]] > RANK[_top(path)]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_from_another_module():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name} from {module}"
             for path in _modules() for line, module, names in _imports(path)
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert not wrong, "\n".join(wrong)


def _graph() -> dict[str, set[str]]:
    """Module → the lcssm modules it imports anywhere in its body (a name imported from a package that is one of
    its submodules counts as that submodule)."""
    modules = {".".join(("lcssm", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for _, module, names in _imports(path):
            subs = {f"{module}.{n}" for n in names} & modules.keys()
            edges |= subs or {module}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = stack[stack.index(v):]
                    del stack[stack.index(v):]
                    if len(comp) > 1:
                        cycles.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                work.append((w, iter(sorted(graph[w]))))
            elif w in stack:
                low[v] = min(low[v], index[w])
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_through_lazy_imports():
    assert _cycles(_graph()) == []


def test_every_package_folder_is_a_regular_package():
    """setuptools' find_packages installs only folders with an ``__init__.py``: a namespace folder would be
    missing from a wheel."""
    folders = {p.parent for p in ROOT.rglob("*.py")}
    assert not sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
