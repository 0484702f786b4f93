"""kvbench's folders are its layers: each sub-package imports only itself and the packages below it, no module
imports in a loop, and no module grows past a size a reader can hold."""

import ast
from pathlib import Path

import kvbench

PACKAGE = Path(kvbench.__file__).parent

# The layers, lowest first. The folders are the layers: which module belongs where is read from the tree,
# so a new module takes its folder's rank without a line here. A new folder must be placed in this order.
ORDER = ("core", "model", "storage", "hardware", "analysis", "measure", "launch", "render", "compare", "runner", "cli")
# kvbench/__init__.py and __main__.py: the package's public face, above every layer.
INTERFACE = "interface"
LONGEST_MODULE_LINES = 600


def module_name(path: Path) -> str:
    """A file's dotted name within kvbench: core/stats.py is "core.stats", core/__init__.py is "core"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def layer_of(module: str) -> str:
    first = module.split(".")[0]
    return first if first in ORDER else INTERFACE


def rank(module: str) -> int:
    layer = layer_of(module)
    return len(ORDER) if layer == INTERFACE else ORDER.index(layer)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The kvbench module an import names: the module itself, or the package a name is taken from."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path) -> set[str]:
    """Every kvbench module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kvbench":
                found |= {name if name in MODULES else "__init__" for name in (alias.name for alias in node.names)}
            elif node.module.startswith("kvbench."):
                base = node.module.removeprefix("kvbench.")
                for alias in node.names:
                    # `from kvbench.core import stats` imports the module core.stats, not only core/__init__.
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else resolve(base) or base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "kvbench":
                    found.add("__init__")
                elif alias.name.startswith("kvbench."):
                    found.add(resolve(alias.name.removeprefix("kvbench.")) or alias.name)
    return found - {module_name(path)}


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_every_folder_is_a_layer():
    folders = {path.parent.relative_to(PACKAGE).parts[0] for path in PACKAGE.glob("*/__init__.py")}
    assert sorted(folders ^ set(ORDER)) == []
    # Nothing but the package's face lives beside the layers.
    assert sorted(name for name in MODULES if layer_of(name) == INTERFACE) == ["__init__", "__main__"]


def test_every_import_is_a_kvbench_module():
    unknown = sorted(
        f"{module} imports kvbench.{imported}"
        for module, found in GRAPH.items()
        for imported in found
        if imported not in MODULES
    )
    assert unknown == []


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{module} ({layer_of(module)}) imports {imported} ({layer_of(imported)})"
        for module, imported_modules in GRAPH.items()
        for imported in imported_modules
        if imported in MODULES and rank(imported) > rank(module)
    ]
    assert upward == []


def test_no_import_loop():
    loops = []
    for start in GRAPH:
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, path = stack.pop()
            for imported in GRAPH.get(module, ()):
                if imported == start:
                    loops.append(" -> ".join([*path, start]))
                elif imported not in seen:
                    seen.add(imported)
                    stack.append((imported, [*path, imported]))
    assert loops == []


def test_no_module_is_too_long_to_read():
    long = {
        name: lines for name, path in MODULES.items() if (lines := len(path.read_text().splitlines())) > LONGEST_MODULE_LINES
    }
    assert long == {}
