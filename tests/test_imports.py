"""The package's import graph has no circle and runs down its floors (every import, lazy ones inside functions included)."""
import ast
from pathlib import Path

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


#: The package's floors, lowest first. A unit (a subpackage, or a module of the package root; ""
#: is the root's __init__) imports only units on its own floor or below, so every arrow runs down.
FLOORS = (
    ("errors", "spectral", "attacks"),  # the one error class; operator norms; attacks on any [0, 1] classifier
    ("io", "data", "runs"),  # atomic writes; datasets; the training run directory
    ("regularizers",),  # the registry of training penalties (adversarial training runs an attack)
    ("models",),  # architectures, NormalizedModel and its BatchNorm folding, reading + verifying weights
    ("loader",),  # any model spec -> a model
    ("evaluation",),  # evaluate, its result, statistics, bounds, probe, analyses, leaderboard
    ("training", "ssl"),  # the loop and its self-supervised variant (each knows the other)
    ("hub",),  # export, provenance, cards, publishing
    ("argtypes", "cli", ""),  # the command line; the timm plugin's entry (repspec_zoo/__init__.py)
)
#: every unit's allowed imports: its floor and the floors below
ALLOWED = {unit: frozenset(u for lower in FLOORS[: i + 1] for u in lower) for i, floor in enumerate(FLOORS)
           for unit in floor}


def unit(module: str) -> str:
    """'repspec_zoo.models.zoo' -> 'models'; the root's __init__ ('repspec_zoo') -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) of every import that leaves the importer's allowed units."""
    return sorted((m, t) for m, targets in graph.items() for t in targets if unit(t) not in ALLOWED[unit(m)])


def test_the_layer_check_finds_an_upward_arrow():
    graph = {"repspec_zoo.models.zoo": {"repspec_zoo.hub.exporting", "repspec_zoo.runs"},
             "repspec_zoo.training.loop": {"repspec_zoo.ssl.trainer"},
             "repspec_zoo.ssl.trainer": {"repspec_zoo.training.loop"}}
    assert upward_arrows(graph) == [("repspec_zoo.models.zoo", "repspec_zoo.hub.exporting")]


def test_every_unit_has_a_floor():
    """A new subpackage or root module must be placed in FLOORS (and the table names nothing gone)."""
    assert {unit(m) for m in import_graph()} == set(ALLOWED)


def test_layers_import_downwards_only():
    assert upward_arrows(import_graph()) == []


def test_training_and_ssl_import_no_attacks():
    """The model wrapper (NormalizedModel) lives in models/: training and SSL need nothing of the attacks."""
    graph = import_graph()
    assert {m: sorted(t) for m, targets in graph.items() if unit(m) in ("training", "ssl")
            for t in [{x for x in targets if unit(x) == "attacks"}] if t} == {}


def test_the_package_root_stays_small():
    """At most 5 modules beside __init__.py in repspec_zoo/: everything else lives on a floor of its own."""
    assert len([p for p in ROOT.glob("*.py") if p.name != "__init__.py"]) <= 5


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
