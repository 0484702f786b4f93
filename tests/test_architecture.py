"""kvbench's modules import in one direction: no import loop, and each layer imports only layers below it."""

import ast
from pathlib import Path

import kvbench

PACKAGE = Path(kvbench.__file__).parent

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = {
    # Pure arithmetic and facts with no kvbench data type: units, statistics, serving metrics, KV sizes.
    "base": {
        "version", "errors", "units", "untrusted", "jsontext", "stats", "metrics", "kvsize", "eta", "devices", "nvml", "timing",
        "scheduling",
    },
    # What is measured and stored: settings, memory and energy figures, runs, cells, results, and the
    # events that carry them from where a cell is measured.
    "data": {"config", "memory", "energy", "roofline", "records", "events", "environment"},
    # What the stored runs mean: fits against length, the roofline's explanation, which KV cache to use.
    "analysis": {"fit", "explain", "cache_choice"},
    # The results file: its document holds the explanation, so it reads the analysis.
    "storage": {"results"},
    # Results files judged against each other.
    "comparison": {"compare"},
    # Presenting results: tables, exports, figures, progress on the terminal.
    "report": {"report", "export", "plot", "progress"},
    # Measuring in this process: loading models and timing generate().
    "measure": {"models", "measure"},
    # Carrying cells to where they are measured: this process, fresh processes, Ray; and the choice of one.
    "launch": {"launchers", "worker", "ray_launcher", "launch"},
    # A run: checks, its launcher, the results file kept current. The CI gate drives whole runs of two
    # checkouts through their command lines.
    "session": {"runner", "gate"},
    # The command line and the package's public face.
    "interface": {"cli", "__main__", "__init__"},
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def imports_of(path: Path) -> set[str]:
    """Every kvbench module a file imports, at the top or inside a function, `import kvbench` as __init__."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kvbench":
                modules = {alias.name for alias in node.names if alias.name in MODULES}
                found |= modules if len(modules) == len(node.names) else modules | {"__init__"}
            elif node.module.startswith("kvbench."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "kvbench":
                    found.add("__init__")
                elif alias.name.startswith("kvbench."):
                    found.add(alias.name.split(".")[1])
    found.discard(path.stem)
    return found


# A module is a file of the package, or a subpackage taken whole (kvbench/export/ is "export").
MODULES = {path.stem: [path] for path in PACKAGE.glob("*.py")} | {
    path.parent.name: sorted(path.parent.glob("*.py")) for path in PACKAGE.glob("*/__init__.py")
}
GRAPH = {name: set().union(*(imports_of(path) for path in paths)) - {name} for name, paths in MODULES.items()}


def test_every_module_has_a_layer():
    assert sorted(set(GRAPH) - set(RANK)) == []


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{module} ({layer_of(module)}) imports {imported} ({layer_of(imported)})"
        for module, imported_modules in GRAPH.items()
        for imported in imported_modules
        if RANK[imported] > RANK[module]
    ]
    assert upward == []


def test_no_import_loop():
    loops = []
    for start in GRAPH:
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, path = stack.pop()
            for imported in GRAPH[module]:
                if imported == start:
                    loops.append(" -> ".join([*path, start]))
                elif imported not in seen:
                    seen.add(imported)
                    stack.append((imported, [*path, imported]))
    assert loops == []


def layer_of(module: str) -> str:
    return next(name for name, modules in LAYERS.items() if module in modules)
