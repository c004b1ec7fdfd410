"""The package's import graph has no circle (every import, lazy ones inside functions included)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "repspec_zoo"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the repspec_zoo modules it imports, anywhere in its body.

    ``import a.b.c`` also runs the packages ``a.b`` (their __init__); that edge counts unless the
    importer lives inside that package (then the package is already being imported)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("repspec_zoo")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if not base.startswith("repspec_zoo"):
                    continue
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    targets.add(child if child in modules else base)
        edges = set()
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the packages on the way (not the root every module is in)
                prefix = ".".join(parts[:i])
                if prefix in modules and (prefix == target or not name.startswith(prefix + ".")) and prefix != name:
                    edges.add(prefix)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

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
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_detector_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("low, high", [("repspec_zoo.models", "repspec_zoo.hub.exporting"),
                                       ("repspec_zoo.models.pretrained", "repspec_zoo.models"),
                                       ("repspec_zoo.spectral", "repspec_zoo.training")])
def test_layers_import_downwards_only(low, high):
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t == high or t.startswith(high + "."))
                 for m, targets in graph.items() if m == low or m.startswith(low + ".")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_library_never_imports_the_command_line():
    """Library, experiments and benchmarks import no CLI module (plots live in repspec_zoo.evaluation.plots,
    argparse types in repspec_zoo.argtypes)."""
    graph = import_graph()
    assert {m: sorted(t) for m, targets in graph.items() if not m.startswith("repspec_zoo.cli")
            for t in [{x for x in targets if x.startswith("repspec_zoo.cli")}] if t} == {}
    scripts = [p for folder in ("experiments", "benchmarks", "recipes") for p in (ROOT.parent / folder).glob("*.py")]
    assert [p.name for p in scripts if "import repspec_zoo.cli" in p.read_text()
            or "from repspec_zoo.cli" in p.read_text()] == []


def test_scripts_import_names_that_exist():
    """Every ``from repspec_zoo... import NAME`` in the experiments, benchmarks and recipes names
    something that module has (a moved function breaks a script no test runs, e.g. a benchmark)."""
    import importlib

    scripts = [p for folder in ("experiments", "benchmarks", "recipes") for p in (ROOT.parent / folder).glob("*.py")]
    missing = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("repspec_zoo"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{alias.name}" for alias in node.names
                            if not hasattr(module, alias.name)
                            and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]
    assert missing == []


def test_the_timm_plugin_import_stays_light():
    """``import repspec_zoo`` (what a timm user runs to get the zoo's models) loads none of the
    evaluation's heavy dependencies; they are imported where used."""
    import subprocess
    import sys

    heavy = ["scipy", "sklearn", "matplotlib", "accelerate", "datasets", "adv_lib"]
    code = f"import sys, repspec_zoo; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
